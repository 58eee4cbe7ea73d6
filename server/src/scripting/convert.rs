//! Between Rust and Lua: the `msg` table a hook receives, and validation of
//! what it returns.
//!
//! Both work on the Lua stack with Lua's C API. Through `mlua`'s API each
//! header, each string and each returned field was a Lua reference of its
//! own (a slot allocated and freed in mlua's reference thread), which came
//! to a third of a realistic `on_enqueue` call (`benches/lua.rs`). Returned
//! tables are read raw (no metamethods run), so reading them runs no script
//! code, and reading raises no Lua error: it only walks tables with
//! `lua_next` and reads values of the type it checked.

use std::ffi::{c_int, c_void, CStr};
use std::time::Duration;

use mlua::ffi::{self, lua_State};
use mlua::{Function, Lua};

use super::{EnqueueDecision, FailureDecision, ScriptHeaders, ScriptMessage, MAX_RETRY_DELAY};
use crate::domain::limits::{MAX_FAIRNESS_KEY_BYTES, MAX_THROTTLE_KEYS, MAX_THROTTLE_KEY_BYTES, MAX_WEIGHT};

/// Stack slots [`push_message`] needs.
pub(super) const MESSAGE_SLOTS: c_int = 4;

/// Pushes the `msg` table of a call: queue name, headers table, payload size
/// and, for scripts that asked for it, the payload.
///
/// # Safety
/// `state` must have [`MESSAGE_SLOTS`] free stack slots, and no memory limit
/// may be in force: an allocation then never raises a Lua error (mlua's
/// allocator aborts the process if the system is out of memory), so nothing
/// here unwinds past the caller's frames.
pub(super) unsafe fn push_message(state: *mut lua_State, msg: &ScriptMessage<'_>, with_payload: bool) {
    ffi::lua_createtable(state, 0, 4);
    push_bytes(state, msg.queue.as_bytes());
    set_field(state, c"queue");
    match msg.headers {
        ScriptHeaders::Map(map) => push_headers(state, map.len(), map.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
        ScriptHeaders::Pairs(pairs) => push_headers(state, pairs.len(), pairs.iter().copied()),
    }
    set_field(state, c"headers");
    ffi::lua_pushinteger(state, msg.payload.len().try_into().unwrap_or(ffi::lua_Integer::MAX));
    set_field(state, c"payload_size");
    if with_payload {
        push_bytes(state, msg.payload);
        set_field(state, c"payload");
    }
}

/// A table of the headers; of repeated names the last counts.
unsafe fn push_headers<'a>(state: *mut lua_State, len: usize, headers: impl Iterator<Item = (&'a str, &'a str)>) {
    ffi::lua_createtable(state, 0, len.try_into().unwrap_or(c_int::MAX));
    for (name, value) in headers {
        push_bytes(state, name.as_bytes());
        push_bytes(state, value.as_bytes());
        ffi::lua_rawset(state, -3);
    }
}

pub(super) unsafe fn push_bytes(state: *mut lua_State, bytes: &[u8]) {
    ffi::lua_pushlstring(state, bytes.as_ptr().cast(), bytes.len());
}

/// `function`, a C function of Lua's API, as a Lua function whose one
/// upvalue is `address(&owner)` (a light userdata): what the function works
/// on, inside `owner`'s allocation, which the Lua state keeps as app data so
/// that it lives as long as the function can run.
pub(super) fn c_closure<T: 'static>(
    lua: &Lua,
    function: ffi::lua_CFunction,
    owner: T,
    address: fn(&T) -> *mut c_void,
) -> mlua::Result<Function> {
    let upvalue = address(&owner);
    lua.set_app_data(owner);
    // SAFETY: pushes a light userdata and makes a C closure of it: the stack
    // has room (exec_raw checks for 3 slots), and neither raises an error
    // other than for memory, inside exec_raw's protected call.
    unsafe {
        lua.exec_raw((), |state| {
            ffi::lua_pushlightuserdata(state, upvalue);
            ffi::lua_pushcclosure(state, function, 1);
        })
    }
}

/// The bytes of a C function's first argument, which must be a string;
/// otherwise raises `expected`, a format given the argument's type name
/// (`"... expects a string, got %s"`).
///
/// # Safety
/// Called from a C function of Lua's API whose frames up to the protected
/// call own nothing that needs dropping. The bytes stay valid while the
/// argument is on the stack.
pub(super) unsafe fn string_argument<'s>(state: *mut lua_State, expected: &CStr) -> &'s [u8] {
    if ffi::lua_type(state, 1) != ffi::LUA_TSTRING {
        raise_at_script_line(state, || {
            ffi::lua_pushfstring(state, expected.as_ptr(), ffi::luaL_typename(state, 1));
        });
    }
    let mut len = 0;
    let bytes = ffi::lua_tolstring(state, 1, &mut len);
    std::slice::from_raw_parts(bytes.cast(), len)
}

/// Raises the message `push` leaves on the stack, prefixed with the
/// script's line, as Lua's own functions report an error.
///
/// # Safety
/// As for [`string_argument`].
pub(super) unsafe fn raise_at_script_line(state: *mut lua_State, push: impl FnOnce()) -> ! {
    ffi::luaL_where(state, 1);
    push();
    ffi::lua_concat(state, 2);
    ffi::lua_error(state)
}

/// Sets the value on top of the stack as `name` of the table below it (a
/// fresh table without a metatable, so no metamethod runs).
unsafe fn set_field(state: *mut lua_State, name: &CStr) {
    ffi::lua_setfield(state, -2, name.as_ptr());
}

/// A value on the Lua stack, seen without converting it.
#[derive(Clone, Copy)]
enum Slot<'s> {
    Nil,
    Int(i64),
    Num(f64),
    Str(&'s [u8]),
    /// A table, at this absolute stack index.
    Table(c_int),
    /// Any other type, by the name errors give it.
    Other(&'static str),
}

/// The value at `index`.
///
/// # Safety
/// `index` must be a valid stack index. A string's bytes stay valid while
/// the string is reachable (on the stack or in a table on it) and nothing is
/// allocated in Lua, which is how readers here use them.
unsafe fn slot<'s>(state: *mut lua_State, index: c_int) -> Slot<'s> {
    match ffi::lua_type(state, index) {
        ffi::LUA_TNIL | ffi::LUA_TNONE => Slot::Nil,
        ffi::LUA_TNUMBER if ffi::lua_isinteger(state, index) != 0 => {
            Slot::Int(ffi::lua_tointegerx(state, index, std::ptr::null_mut()))
        }
        ffi::LUA_TNUMBER => Slot::Num(ffi::lua_tonumberx(state, index, std::ptr::null_mut())),
        ffi::LUA_TSTRING => {
            // Only ever called on a string: `lua_tolstring` would convert a
            // number in place (and confuse `lua_next` on a key).
            let mut len = 0;
            let bytes = ffi::lua_tolstring(state, index, &mut len);
            Slot::Str(std::slice::from_raw_parts(bytes.cast(), len))
        }
        ffi::LUA_TTABLE => Slot::Table(ffi::lua_absindex(state, index)),
        ffi::LUA_TBOOLEAN => Slot::Other("a boolean"),
        ffi::LUA_TFUNCTION => Slot::Other("a function"),
        _ => Slot::Other("a value of another type"),
    }
}

fn type_name(value: Slot<'_>) -> &'static str {
    match value {
        Slot::Int(_) | Slot::Num(_) => "a number",
        Slot::Str(_) => "a string",
        Slot::Table(_) => "a table",
        Slot::Nil => "nil",
        Slot::Other(name) => name,
    }
}

/// Calls `f` on each of the first `limit` entries of the table at `table`
/// (an absolute index), read raw in the table's order, until it answers an
/// error. Leaves the stack as it found it.
///
/// # Safety
/// `table` must hold a table, and two stack slots must be free.
unsafe fn for_entries<'s>(
    state: *mut lua_State,
    table: c_int,
    limit: usize,
    mut f: impl FnMut(Slot<'s>, Slot<'s>) -> Result<(), String>,
) -> Result<(), String> {
    let top = ffi::lua_gettop(state);
    ffi::lua_pushnil(state);
    let mut seen = 0;
    let mut result = Ok(());
    while seen < limit && ffi::lua_next(state, table) != 0 {
        seen += 1;
        result = f(slot(state, -2), slot(state, -1));
        if result.is_err() {
            break;
        }
        ffi::lua_settop(state, -2);
    }
    ffi::lua_settop(state, top);
    result
}

/// Stack slots the readers need beyond the returned value: two per table
/// walked (its key and value), with `throttle_keys` walked inside the
/// returned table.
pub(super) const READ_SLOTS: c_int = 4;

/// `on_enqueue`'s result at `index`: `nil` (no changes) or a table with any
/// of `fairness_key`, `weight` and `throttle_keys`. Any other field is an
/// error, so a misspelt field is reported rather than ignored; of several
/// invalid entries the first in the table's order is reported.
///
/// # Safety
/// `index` must be a valid stack index and [`READ_SLOTS`] slots free.
pub(super) unsafe fn enqueue_decision(state: *mut lua_State, index: c_int) -> Result<EnqueueDecision, String> {
    let table = match slot(state, index) {
        Slot::Nil => return Ok(EnqueueDecision::default()),
        Slot::Table(table) => table,
        other => return Err(format!("expected a table or nil, got {}", type_name(other))),
    };
    let mut decision = EnqueueDecision::default();
    // Four entries are enough to find one that is not a field.
    for_entries(state, table, 4, |key, value| {
        match field_name(key)? {
            b"fairness_key" => {
                decision.fairness_key = Some(key_string(Field::Named("fairness_key"), value, MAX_FAIRNESS_KEY_BYTES)?)
            }
            b"weight" => {
                let weight = integer("weight", value)?;
                if !(1..=i64::from(MAX_WEIGHT)).contains(&weight) {
                    return Err(format!("weight {weight} is out of range; use 1 to {MAX_WEIGHT}"));
                }
                decision.weight = Some(weight as u32);
            }
            b"throttle_keys" => decision.throttle_keys = Some(throttle_keys(state, value)?),
            other => {
                return Err(format!(
                    "unknown field '{}'; on_enqueue may return fairness_key, weight and throttle_keys",
                    String::from_utf8_lossy(other)
                ))
            }
        }
        Ok(())
    })?;
    Ok(decision)
}

/// `on_failure`'s result at `index`: `nil` (apply the queue's default
/// policy), `{ action = "retry", delay_ms = N }` or `{ action = "dlq" }`.
///
/// # Safety
/// As for [`enqueue_decision`].
pub(super) unsafe fn failure_decision(state: *mut lua_State, index: c_int) -> Result<Option<FailureDecision>, String> {
    let table = match slot(state, index) {
        Slot::Nil => return Ok(None),
        Slot::Table(table) => table,
        other => return Err(format!("expected a table or nil, got {}", type_name(other))),
    };
    let mut action = None;
    let mut delay_ms = None;
    for_entries(state, table, 3, |key, value| {
        match field_name(key)? {
            b"action" => match value {
                Slot::Str(s) => action = Some(s),
                other => return Err(format!("action must be \"retry\" or \"dlq\", got {}", type_name(other))),
            },
            b"delay_ms" => delay_ms = Some(integer("delay_ms", value)?),
            other => {
                return Err(format!(
                    "unknown field '{}'; on_failure may return action and delay_ms",
                    String::from_utf8_lossy(other)
                ))
            }
        }
        Ok(())
    })?;
    failure_action(action, delay_ms)
}

/// The decision for a table's `action` and `delay_ms`, each of the right
/// type (or absent).
fn failure_action(action: Option<&[u8]>, delay_ms: Option<i64>) -> Result<Option<FailureDecision>, String> {
    let max_ms = MAX_RETRY_DELAY.as_millis() as i64;
    match action {
        Some(b"retry") => match delay_ms {
            Some(ms) if (0..=max_ms).contains(&ms) => {
                Ok(Some(FailureDecision::Retry { delay: Duration::from_millis(ms as u64) }))
            }
            Some(ms) => Err(format!("delay_ms {ms} is out of range; use 0 to {max_ms} (7 days)")),
            None => Err("action \"retry\" needs delay_ms (milliseconds, 0 to retry at once)".to_owned()),
        },
        Some(b"dlq") if delay_ms.is_some() => Err("action \"dlq\" takes no delay_ms".to_owned()),
        Some(b"dlq") => Ok(Some(FailureDecision::DeadLetter)),
        Some(other) => Err(format!("action must be \"retry\" or \"dlq\", got \"{}\"", String::from_utf8_lossy(other))),
        None => {
            Err("the table has no action; return { action = \"retry\", delay_ms = N } or { action = \"dlq\" }"
                .to_owned())
        }
    }
}

/// A field's name, compared as bytes (and turned into text only for an
/// error message).
fn field_name(key: Slot<'_>) -> Result<&[u8], String> {
    match key {
        Slot::Str(name) => Ok(name),
        other => Err(format!("expected a table of named fields, found {} key", type_name(other))),
    }
}

/// An integer, or a float with an integral value (`10 / 2` is the float 5.0
/// in Lua 5.4).
fn integer(field: &str, value: Slot<'_>) -> Result<i64, String> {
    match value {
        Slot::Int(i) => Ok(i),
        Slot::Num(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => Ok(n as i64),
        Slot::Num(n) => Err(format!("{field} must be an integer, got {n}")),
        other => Err(format!("{field} must be an integer, got {}", type_name(other))),
    }
}

/// A returned field, named in error messages (formatted only for one).
#[derive(Clone, Copy)]
enum Field {
    Named(&'static str),
    ThrottleKey(i64),
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Field::Named(name) => f.write_str(name),
            Field::ThrottleKey(index) => write!(f, "throttle_keys[{index}]"),
        }
    }
}

/// A UTF-8 string of 1 to `max` bytes.
fn key_string(field: Field, value: Slot<'_>, max: usize) -> Result<String, String> {
    let Slot::Str(bytes) = value else {
        return Err(format!("{field} must be a string, got {}", type_name(value)));
    };
    let s = std::str::from_utf8(bytes).map_err(|_| format!("{field} must be valid UTF-8"))?;
    if s.is_empty() || s.len() > max {
        return Err(format!("{field} must be 1 to {max} bytes long, got {} bytes", s.len()));
    }
    Ok(s.to_owned())
}

/// A sequence `{ "a", "b" }` of at most `MAX_THROTTLE_KEYS` keys.
///
/// # Safety
/// Two stack slots must be free.
unsafe fn throttle_keys(state: *mut lua_State, value: Slot<'_>) -> Result<Vec<String>, String> {
    let Slot::Table(table) = value else {
        return Err(format!("throttle_keys must be an array of strings, got {}", type_name(value)));
    };
    // Enough entries to tell that there are too many: a huge table costs no
    // more than a small one. The strings stay in the table, which is on the
    // stack, and nothing is allocated in Lua meanwhile.
    let mut indexed: Vec<(i64, Slot<'_>)> = Vec::with_capacity(4);
    for_entries(state, table, MAX_THROTTLE_KEYS + 1, |index, value| {
        indexed.push((
            match index {
                Slot::Int(i) => i,
                _ => 0,
            },
            value,
        ));
        Ok(())
    })?;
    if indexed.len() > MAX_THROTTLE_KEYS {
        return Err(format!("throttle_keys has more than {MAX_THROTTLE_KEYS} keys"));
    }
    if indexed.iter().any(|&(index, _)| index < 1) {
        return Err("throttle_keys must be an array (a sequence t[1], t[2], ...) of strings".to_owned());
    }
    // Lua lists a sequence's array part in order; sort only if it did not.
    if !indexed.is_sorted_by_key(|(i, _)| *i) {
        indexed.sort_unstable_by_key(|(i, _)| *i);
    }
    let mut keys = Vec::with_capacity(indexed.len());
    for (position, (index, value)) in indexed.into_iter().enumerate() {
        if index != position as i64 + 1 {
            return Err("throttle_keys must be an array without holes".to_owned());
        }
        keys.push(key_string(Field::ThrottleKey(index), value, MAX_THROTTLE_KEY_BYTES)?);
    }
    Ok(keys)
}
