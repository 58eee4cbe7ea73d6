//! One sandboxed Lua VM holding one loaded script: what a script can reach,
//! how its time and memory are bounded, and how a hook is called.
//!
//! Every script gets a VM of its own (one per queue and hook), so nothing a
//! script does (globals, changes to `string` or `math`, memory it holds) is
//! visible to any other script.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mlua::{ffi, ChunkMode, Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};

use super::{convert, json, patterns, ConfigSource, ScriptLimits, ScriptMessage};
use crate::domain::{ScriptError, ScriptHook};

/// The time budget is checked every this many VM instructions. A tight loop
/// runs roughly 100 to 500 million instructions a second, so a check comes
/// every few microseconds of Lua; a 10-line script runs well under 1,000
/// instructions, so most calls are never interrupted at all.
const BUDGET_CHECK_INSTRUCTIONS: u32 = 1000;

/// A minor collection runs when the heap has grown by this percentage since
/// the last one (Lua's default is 20); see [`sandbox`].
const GC_MINOR_MULTIPLIER: i32 = 10;

/// Standard libraries loaded into a script VM. `io`, `package` (`require`),
/// `debug` and `coroutine` are never loaded; `os` is loaded only to take
/// `os.time` and `os.clock` from it (see [`GLOBALS`]).
fn libs() -> StdLib {
    StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::OS
}

/// The globals a script sees; everything else the libraries define is
/// removed. Notably absent: `load`, `loadstring`, `dofile`, `loadfile`,
/// `require`, `collectgarbage`, `print`, `warn`, `io`, `debug`, `package`,
/// `coroutine`. `string.dump` is removed from `string`, and `os` keeps only
/// `time` and `clock`. `pcall`, `xpcall` and `setmetatable` are wrapped (see
/// `SETUP`), and `fila` holds the helpers.
pub(super) const GLOBALS: &[&str] = &[
    "_G",
    "_VERSION",
    "assert",
    "error",
    "getmetatable",
    "ipairs",
    "next",
    "pairs",
    "pcall",
    "rawequal",
    "rawget",
    "rawlen",
    "rawset",
    "select",
    "setmetatable",
    "tonumber",
    "tostring",
    "type",
    "xpcall",
    "math",
    "string",
    "table",
    "utf8",
    "os",
    "fila",
];

/// Runs once in every VM, before the script, with `fila.get`,
/// `fila.json_decode`, the budget's `expired` check and the pattern
/// functions as arguments.
const SETUP: &str = r##"
local get, expired, json_decode, raw_find, raw_match, raw_gmatch, raw_gsub = ...
local raw_pcall, raw_xpcall, raw_setmetatable = pcall, xpcall, setmetatable
local error, type, rawget = error, type, rawget

-- A call stopped for its time budget ends the whole call: pcall and xpcall
-- re-raise the error instead of letting the script carry on.
local function pass(ok, ...)
  if not ok and expired() then error((...), 0) end
  return ok, ...
end
function pcall(f, ...) return pass(raw_pcall(f, ...)) end
function xpcall(f, handler, ...) return pass(raw_xpcall(f, handler, ...)) end

-- Finalizers run whenever the collector decides and their errors are
-- swallowed, so they could escape the time budget: scripts cannot set them.
function setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not available to scripts", 2)
  end
  return raw_setmetatable(t, mt)
end

-- Pattern matching that checks the time budget (see patterns.rs). The raw
-- functions answer true and results, or false, a message and the level at
-- which to raise it (2: at the script's line, like Lua's own errors).
local function ret(ok, ...)
  if ok then return ... end
  local message, level = ...
  error(message, level)
end
function string.find(...) return ret(raw_find(...)) end
function string.match(...) return ret(raw_match(...)) end
function string.gsub(...) return ret(raw_gsub(...)) end
local function iterate(ok, iterator, level)
  if not ok then error(iterator, level) end
  return function() return ret(iterator()) end
end
function string.gmatch(...) return iterate(raw_gmatch(...)) end

-- table.insert, table.remove and table.move loop in C over a length a
-- script controls (a __len metamethod, or table.move's bounds), where the
-- time budget is never checked; these versions loop in Lua, where it is.
local format, tointeger, maxinteger = string.format, math.tointeger, math.maxinteger
local function checktable(t, arg, name)
  if type(t) ~= "table" then
    error(format("bad argument #%d to '%s' (table expected, got %s)", arg, name, type(t)), 3)
  end
end
local function checkint(v, arg, name)
  local i = tointeger(v)
  if i == nil then
    if type(v) == "number" then
      error(format("bad argument #%d to '%s' (number has no integer representation)", arg, name), 3)
    end
    error(format("bad argument #%d to '%s' (number expected, got %s)", arg, name, v == nil and "no value" or type(v)), 3)
  end
  return i
end
function table.insert(t, ...)
  checktable(t, 1, "insert")
  local e = #t + 1
  local n = select("#", ...)
  if n == 1 then
    t[e] = ...
  elseif n == 2 then
    local pos, value = ...
    pos = checkint(pos, 2, "insert")
    if pos < 1 or pos > e then error("bad argument #2 to 'insert' (position out of bounds)", 2) end
    for i = e, pos + 1, -1 do t[i] = t[i - 1] end
    t[pos] = value
  else
    error("wrong number of arguments to 'insert'", 2)
  end
end
function table.remove(t, pos)
  checktable(t, 1, "remove")
  local size = #t
  if pos == nil then pos = size else pos = checkint(pos, 2, "remove") end
  if pos ~= size and (pos < 1 or pos > size + 1) then
    error("bad argument #2 to 'remove' (position out of bounds)", 2)
  end
  local removed = t[pos]
  while pos < size do
    t[pos] = t[pos + 1]
    pos = pos + 1
  end
  t[pos] = nil
  return removed
end
-- table.sort without a comparison function compares in C; on a long array
-- (a quarter million numbers fit in 8 MiB: ~0.1 s) it gets one written in
-- Lua, which the time budget covers. The order is the same.
local sort = table.sort -- (named so that its errors say 'sort')
local function less(a, b) return a < b end
function table.sort(t, comp)
  if comp == nil and type(t) == "table" and #t > 4096 then comp = less end
  return sort(t, comp)
end
function table.move(a1, f, e, t, a2)
  f, e, t = checkint(f, 2, "move"), checkint(e, 3, "move"), checkint(t, 4, "move")
  checktable(a1, 1, "move")
  if a2 == nil then a2 = a1 else checktable(a2, 5, "move") end
  if e >= f then
    if not (f > 0 or e < maxinteger + f) then error("bad argument #3 to 'move' (too many elements to move)", 2) end
    local n = e - f + 1
    if t > maxinteger - n + 1 then error("bad argument #4 to 'move' (destination wrap around)", 2) end
    if t > e or t <= f or a1 ~= a2 then
      for i = 0, n - 1 do a2[t + i] = a1[f + i] end
    else
      for i = n - 1, 0, -1 do a2[t + i] = a1[f + i] end
    end
  end
  return a2
end

-- Reads the configuration of the call in progress (see CurrentConfig).
fila.get = get
fila.json_decode = json_decode
"##;

/// The time budget of the call in progress, shared with the VM's
/// instruction hook and the pattern functions.
pub(super) struct Budget {
    epoch: Instant,
    /// Nanoseconds after `epoch` when the current call must stop;
    /// `u64::MAX` while no call runs.
    deadline: AtomicU64,
    /// Set by the hook when it stopped a call.
    expired: AtomicBool,
}

impl Budget {
    fn arm(&self, limit: std::time::Duration) {
        let deadline = self.epoch.elapsed().saturating_add(limit).as_nanos();
        self.deadline.store(u64::try_from(deadline).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.expired.store(false, Ordering::Relaxed);
    }

    fn disarm(&self) {
        self.deadline.store(u64::MAX, Ordering::Relaxed);
    }

    fn check(&self) -> mlua::Result<VmState> {
        if self.exceeded() {
            return Err(mlua::Error::runtime("time budget exceeded"));
        }
        Ok(VmState::Continue)
    }

    /// Whether the call in progress has used up its time; if so, marks it
    /// stopped (the caller then raises an error).
    pub(super) fn exceeded(&self) -> bool {
        let deadline = self.deadline.load(Ordering::Relaxed);
        if deadline != u64::MAX && self.epoch.elapsed().as_nanos() >= u128::from(deadline) {
            self.expired.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn expired(&self) -> bool {
        self.expired.load(Ordering::Relaxed)
    }
}

/// The configuration of the call in progress, which `fila.get` reads.
///
/// `fila.get` is one Lua function for the life of the VM; the
/// `&dyn ConfigSource` of a call is borrowed for that call only, so what
/// the function holds is the address of that borrow, which [`Vm::call`]
/// sets for exactly the duration of the call (`0` otherwise). This does
/// what `Lua::scope` does, which creates a Lua function for the call and
/// destroys it after: that (a userdata with a finalizer per call, then its
/// finalization in the collector) cost a tenth of an `on_enqueue` call.
#[derive(Default)]
struct CurrentConfig {
    /// The address of a `&dyn ConfigSource` in `Vm::call`'s frame, or 0.
    address: AtomicUsize,
}

impl CurrentConfig {
    /// Makes `config` the configuration read until the guard is dropped.
    fn set<'a>(&'a self, config: &'a &'a dyn ConfigSource) -> ConfigGuard<'a> {
        let address: *const &dyn ConfigSource = config;
        self.address.store(address as usize, Ordering::Relaxed);
        ConfigGuard(&self.address)
    }

    /// Calls `f` with `key`'s value in the configuration of the call in
    /// progress; `None` outside a call (Lua code never runs outside one).
    fn with<R>(&self, key: &str, f: impl FnOnce(Option<&str>) -> R) -> R {
        let address = self.address.load(Ordering::Relaxed);
        if address == 0 {
            return f(None);
        }
        // SAFETY: a non-zero address was stored by `set` from a
        // `&&dyn ConfigSource` that lives at least as long as the guard
        // `set` returned, and the guard stores 0 when dropped (also when
        // unwinding). `Vm::call` holds the guard around the Lua call, and
        // this function runs only from `fila.get`, that is, from Lua code
        // of that call, on the thread running it: only `Vm::call` calls
        // into a VM's Lua, `Vm` is not `Sync` and its `Lua` is never shared.
        let config = unsafe { &*(address as *const &dyn ConfigSource) };
        f(config.get(key))
    }
}

/// `fila.get(key)`, a C function of Lua's API (its one upvalue: the VM's
/// [`CurrentConfig`]). Through mlua, a Rust callback copied the key,
/// answered an owned `String` and took mlua's callback machinery and a Lua
/// wrapper for the error: a twentieth of a realistic `on_enqueue` call.
/// Here the key is read where it lies and the value pushed from where the
/// broker keeps it.
///
/// # Safety
/// Called by Lua only, as the C closure [`sandbox`] makes. It may raise a
/// Lua error (a key that is not a string; no memory for the value under
/// the script's limit), which unwinds over this frame and `with`'s: they
/// hold only references and integers, nothing that needs dropping.
unsafe extern "C-unwind" fn config_get(state: *mut ffi::lua_State) -> c_int {
    let current = &*(ffi::lua_touserdata(state, ffi::lua_upvalueindex(1)) as *const CurrentConfig);
    let key = convert::string_argument(state, c"fila.get expects a string key, got %s");
    // A key that is not UTF-8 names no configuration entry.
    match std::str::from_utf8(key) {
        Ok(key) => current.with(key, |value| match value {
            Some(value) => convert::push_bytes(state, value.as_bytes()),
            None => ffi::lua_pushnil(state),
        }),
        Err(_) => ffi::lua_pushnil(state),
    }
    1
}

/// Clears [`CurrentConfig`] when dropped.
struct ConfigGuard<'a>(&'a AtomicUsize);

impl Drop for ConfigGuard<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// A sandboxed VM with one script loaded and its hook function resolved.
pub(super) struct Vm {
    hook: ScriptHook,
    lua: Lua,
    budget: Arc<Budget>,
    config: Arc<CurrentConfig>,
    /// The script's hook function.
    function: Function,
    wants_payload: bool,
    limits: ScriptLimits,
}

impl Vm {
    /// Creates the sandbox, runs the script's top-level code (within the
    /// budgets) and finds its hook function.
    pub(super) fn load(hook: ScriptHook, source: &str, limits: &ScriptLimits) -> Result<Vm, ScriptError> {
        let setup_failed =
            |e: mlua::Error| ScriptError::Compile { hook, message: format!("cannot set up the VM: {e}") };
        let budget = Arc::new(Budget {
            epoch: Instant::now(),
            deadline: AtomicU64::new(u64::MAX),
            expired: AtomicBool::new(false),
        });
        let config = Arc::new(CurrentConfig::default());
        let lua = sandbox(&budget, &config, limits.memory_bytes).map_err(setup_failed)?;
        lua.set_memory_limit(limits.memory_bytes).map_err(setup_failed)?;

        // Compile errors carry Lua's own text, e.g. `on_enqueue:3: '=' expected near 'x'`.
        let chunk = lua
            .load(source)
            .set_name(format!("={hook}"))
            .set_mode(ChunkMode::Text)
            .into_function()
            .map_err(|e| ScriptError::Compile { hook, message: describe(&e) })?;
        let mut vm = Vm { hook, function: chunk.clone(), lua, budget, config, wants_payload: false, limits: *limits };
        // Top-level code runs under the same budgets as a call; if it fails
        // the script is rejected.
        let ran = {
            let _unlimited = MemoryLimitLifted::new(&vm.lua, limits.memory_bytes);
            vm.execute(|| chunk.call::<()>(())).and_then(|ran| ran)
        };
        ran.map_err(|e| {
            let message = match vm.failure(e) {
                ScriptError::Runtime { message, .. } => message,
                ScriptError::Timeout { limit, .. } => {
                    format!("its top-level code ran longer than the limit of {limit:?}")
                }
                ScriptError::Memory { limit, .. } => {
                    format!("its top-level code needed more than the memory limit of {limit} bytes")
                }
                other => other.to_string(),
            };
            ScriptError::Compile { hook, message }
        })?;

        let globals = vm.lua.globals();
        vm.function = match globals.raw_get::<Value>(hook.as_str()) {
            Ok(Value::Function(f)) => f,
            _ => return Err(ScriptError::MissingHook { hook }),
        };
        vm.wants_payload = matches!(globals.raw_get::<Value>("wants_payload"), Ok(Value::Boolean(true)));
        Ok(vm)
    }

    pub(super) fn wants_payload(&self) -> bool {
        self.wants_payload
    }

    /// Calls the hook with the `msg` table of `msg` (and, for `on_failure`,
    /// the attempts and the error) and reads its result with `read`, which
    /// answers a message for an invalid one. Only the script's own execution
    /// is subject to the budgets: building `msg` and reading the result are
    /// the broker's work, bounded by the message.
    ///
    /// All of it is one visit to the Lua stack: `msg` is built with Lua's C
    /// API, the hook runs in a `lua_pcall`, and its result is read where it
    /// is (see `convert.rs`).
    pub(super) fn call<R>(
        &self,
        config: &dyn ConfigSource,
        msg: &ScriptMessage<'_>,
        failure: Option<(u32, &str)>,
        read: unsafe fn(*mut ffi::lua_State, c_int) -> Result<R, String>,
    ) -> Result<R, ScriptError> {
        // `fila.get` reads `config` during this call only: it is borrowed,
        // never kept.
        let _config = self.config.set(&config);
        let _unlimited = MemoryLimitLifted::new(&self.lua, self.limits.memory_bytes);
        // SAFETY: the stack has room for everything pushed (checked first,
        // without raising), and is left as it was found. Building `msg`
        // raises no Lua error, as no memory limit is in force until
        // `execute` (see `push_message`); the script runs in a protected
        // call, and the readers raise none (see `convert.rs`).
        let outcome = self.lua.exec_raw_lua(|raw| unsafe {
            let state = raw.state();
            let top = ffi::lua_gettop(state);
            if ffi::lua_checkstack(state, 3 + convert::MESSAGE_SLOTS.max(convert::READ_SLOTS)) == 0 {
                return Err(mlua::Error::MemoryError("not enough memory for the Lua stack".to_owned()));
            }
            raw.push(&self.function)?;
            convert::push_message(state, msg, self.wants_payload);
            let mut args = 1;
            if let Some((attempts, error)) = failure {
                ffi::lua_pushinteger(state, attempts.into());
                convert::push_bytes(state, error.as_bytes());
                args = 3;
            }
            let outcome = match self.execute(|| ffi::lua_pcall(state, args, 1, 0)) {
                Ok(ffi::LUA_OK) => Ok(read(state, -1)),
                Ok(status) => {
                    let error = match (status, raw.pop_value()) {
                        (ffi::LUA_ERRMEM, _) => mlua::Error::MemoryError("not enough memory".to_owned()),
                        (_, Value::Error(error)) => *error,
                        (_, Value::String(message)) => mlua::Error::RuntimeError(message.to_string_lossy()),
                        (_, Value::Integer(i)) => mlua::Error::RuntimeError(i.to_string()),
                        (_, Value::Number(n)) => mlua::Error::RuntimeError(n.to_string()),
                        // As Lua's own interpreter reports it.
                        (_, other) => {
                            mlua::Error::RuntimeError(format!("(error object is a {} value)", other.type_name()))
                        }
                    };
                    Err(error)
                }
                Err(error) => Err(error),
            };
            ffi::lua_settop(state, top);
            outcome
        });
        match outcome {
            Ok(result) => result.map_err(|message| ScriptError::BadReturn { hook: self.hook, message }),
            Err(error) => Err(self.failure(error)),
        }
    }

    /// Runs `f`, the script's own execution, with the VM's memory limit in
    /// force and the time budget armed. With a memory limit set, mlua makes
    /// every allocation through its API a protected call (several times
    /// slower), so the broker's own work around it runs without the limit
    /// (see [`MemoryLimitLifted`]).
    fn execute<T>(&self, f: impl FnOnce() -> T) -> mlua::Result<T> {
        self.lua.set_memory_limit(self.limits.memory_bytes)?;
        self.budget.arm(self.limits.timeout);
        let result = f();
        self.budget.disarm();
        self.lua.set_memory_limit(0)?;
        Ok(result)
    }

    /// What stopped a call (or the top-level code).
    fn failure(&self, error: mlua::Error) -> ScriptError {
        let hook = self.hook;
        if self.budget.expired() {
            ScriptError::Timeout { hook, limit: self.limits.timeout }
        } else if is_memory_error(&error) {
            // Free what the failed call left behind, so the next call
            // starts from the script's steady state.
            let _ = self.lua.gc_collect();
            ScriptError::Memory { hook, limit: self.limits.memory_bytes }
        } else {
            ScriptError::Runtime { hook, message: describe(&error) }
        }
    }

    #[cfg(test)]
    pub(super) fn lua(&self) -> &Lua {
        &self.lua
    }
}

/// A VM with only the allowed globals, the wrappers of `SETUP` and the
/// `fila` helpers, `fila.get` reading `config`.
fn sandbox(budget: &Arc<Budget>, config: &Arc<CurrentConfig>, memory_limit: usize) -> mlua::Result<Lua> {
    let lua = Lua::new_with(libs(), LuaOptions::default())?;
    let globals = lua.globals();
    // Generational collection: every call leaves a little short-lived
    // garbage (msg, results), which minor collections free cheaply. With
    // the default incremental mode about 1 call in 50 paid for a step over
    // the whole heap (p99 ~20 µs instead of ~10 µs in `benches/lua.rs`).
    // A minor collection costs about 1 µs plus 0.2 µs per call's garbage
    // it frees (`on_enqueue` in `benches/lua.rs`), and the calls that run
    // one are the slow ones: after 10% growth of the heap instead of the
    // default 20%, one call in 3 pays about 1.5 µs instead of one in 6
    // paying 2.2 µs (p99 ~0.5 µs lower), and the heap stays smaller.
    lua.gc_gen(GC_MINOR_MULTIPLIER, 0);

    let os: Table = globals.raw_get("os")?;
    let safe_os = lua.create_table()?;
    safe_os.raw_set("time", os.raw_get::<Function>("time")?)?;
    safe_os.raw_set("clock", os.raw_get::<Function>("clock")?)?;
    globals.raw_set("os", safe_os)?;
    let string: Table = globals.raw_get("string")?;
    string.raw_set("dump", Value::Nil)?;

    let fila = lua.create_table()?;
    globals.raw_set("fila", fila)?;

    let mut unwanted = Vec::new();
    for pair in globals.pairs::<Value, Value>() {
        let (name, _) = pair?;
        let allowed = match &name {
            Value::String(s) => GLOBALS.iter().any(|g| s.as_bytes().as_ref() == g.as_bytes()),
            _ => false,
        };
        if !allowed {
            unwanted.push(name);
        }
    }
    for name in unwanted {
        globals.raw_set(name, Value::Nil)?;
    }

    let get = convert::c_closure(&lua, config_get, Arc::clone(config), |config| Arc::as_ptr(config).cast_mut().cast())?;
    let check = Arc::clone(budget);
    let expired = lua.create_function(move |_, ()| Ok(check.expired()))?;
    let [find, match_, gmatch, gsub] = patterns::functions(&lua, budget, memory_limit)?;
    let json_decode = json::function(&lua)?;
    load_trusted(&lua, SETUP, "=sandbox")?.call::<()>((get, expired, json_decode, find, match_, gmatch, gsub))?;

    let check = Arc::clone(budget);
    lua.set_hook(HookTriggers::new().every_nth_instruction(BUDGET_CHECK_INSTRUCTIONS), move |_, _| check.check())?;
    Ok(lua)
}

/// Loads one of the broker's own chunks (never a script's): compiled once
/// per process, then loaded as bytecode, which saves most of the cost of
/// creating a VM (parsing `SETUP` took ~75 µs of ~220 µs).
fn load_trusted(lua: &Lua, source: &'static str, name: &'static str) -> mlua::Result<Function> {
    static COMPILED: Mutex<Vec<(&'static str, Vec<u8>)>> = Mutex::new(Vec::new());
    let cached = {
        let compiled = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
        compiled.iter().find(|(s, _)| *s == source).map(|(_, bytecode)| bytecode.clone())
    };
    let bytecode = match cached {
        Some(bytecode) => bytecode,
        None => {
            let bytecode = lua.load(source).set_name(name).set_mode(ChunkMode::Text).into_function()?.dump(false);
            COMPILED.lock().unwrap_or_else(|e| e.into_inner()).push((source, bytecode.clone()));
            bytecode
        }
    };
    lua.load(bytecode).set_name(name).set_mode(ChunkMode::Binary).into_function()
}

/// Removes a VM's memory limit until dropped, then restores it.
struct MemoryLimitLifted<'a> {
    lua: &'a Lua,
    limit: usize,
}

impl<'a> MemoryLimitLifted<'a> {
    fn new(lua: &'a Lua, limit: usize) -> Self {
        let _ = lua.set_memory_limit(0);
        MemoryLimitLifted { lua, limit }
    }
}

impl Drop for MemoryLimitLifted<'_> {
    fn drop(&mut self) {
        let _ = self.lua.set_memory_limit(self.limit);
    }
}

fn is_memory_error(error: &mlua::Error) -> bool {
    match error {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory_error(cause),
        mlua::Error::WithContext { cause, .. } => is_memory_error(cause),
        _ => false,
    }
}

/// The message of a Lua or callback error, without the stack traceback.
fn describe(error: &mlua::Error) -> String {
    let text = match error {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::RuntimeError(message) | mlua::Error::MemoryError(message) => message.clone(),
        mlua::Error::CallbackError { cause, .. } => return describe(cause),
        mlua::Error::WithContext { cause, .. } => return describe(cause),
        other => other.to_string(),
    };
    match text.find("\nstack traceback:") {
        Some(end) => text[..end].to_owned(),
        None => text,
    }
}
