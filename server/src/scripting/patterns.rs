//! `string.find`, `string.match`, `string.gmatch` and `string.gsub` for
//! script VMs: Lua 5.4's pattern matching (a port of `lstrlib.c`, same
//! syntax, results and error messages) that checks the call's time budget
//! as it works.
//!
//! Why not Lua's own: the budget is checked by an instruction hook, which
//! never runs inside a C function, and Lua's matcher backtracks, so one
//! `string.find(long_string, "a-a-a-a-b")` could run for minutes and stall
//! the broker. Here every step counts, and the budget is checked every
//! [`CHECK_EVERY`] steps; `gsub`'s result also counts against the VM's memory
//! limit.

use std::sync::Arc;

use mlua::{Function, Lua, MultiValue, Table, Value, Variadic};

use super::sandbox::Budget;

/// Steps between two checks of the time budget (a step is well under 10 ns).
const CHECK_EVERY: u32 = 1024;
/// Nesting limit of the matcher (Lua's `MAXCCALLS`).
const MAX_MATCH_DEPTH: u32 = 200;
/// Captures per pattern (Lua's `LUA_MAXCAPTURES`).
const MAX_CAPTURES: usize = 32;
const CAP_UNFINISHED: isize = -1;
const CAP_POSITION: isize = -2;
const SPECIALS: &[u8] = b"^$*+?.([%-";

/// The raw `find`, `match`, `gmatch` and `gsub` functions. Each answers
/// `true, results...`, or `false, message, level` for an error the Lua
/// wrappers in the sandbox's setup raise with `error(message, level)`, so
/// scripts see the same plain string errors, with their position, as from
/// Lua's own functions. Stopping for the time budget or memory is a Rust
/// error instead (classified by the VM; `pcall` cannot keep it).
pub(super) fn functions(lua: &Lua, budget: &Arc<Budget>, memory_limit: usize) -> mlua::Result<[Function; 4]> {
    let b = Arc::clone(budget);
    let find = lua.create_function(move |lua, args: Variadic<Value>| finish(lua, find_aux(lua, &b, &args, true)))?;
    let b = Arc::clone(budget);
    let match_ = lua.create_function(move |lua, args: Variadic<Value>| finish(lua, find_aux(lua, &b, &args, false)))?;
    let b = Arc::clone(budget);
    let gmatch = lua.create_function(move |lua, args: Variadic<Value>| {
        finish(lua, gmatch(lua, &b, &args).map(|f| MultiValue::from_iter([Value::Function(f)])))
    })?;
    let b = Arc::clone(budget);
    let gsub = lua.create_function(move |lua, args: Variadic<Value>| {
        finish(lua, gsub(lua, &b, &args, memory_limit).map(|(s, n)| MultiValue::from_iter([s, Value::Integer(n)])))
    })?;
    Ok([find, match_, gmatch, gsub])
}

/// Why a function stopped.
enum Failure {
    /// An error to raise in the script: its message and the `error` level
    /// (2: the caller's position is added, 0: the message has one).
    Raise(String, u8),
    /// The budget, memory, or an internal failure: raised as is.
    Lua(mlua::Error),
}

impl From<mlua::Error> for Failure {
    fn from(error: mlua::Error) -> Self {
        Failure::Lua(error)
    }
}

type Outcome<T> = Result<T, Failure>;

fn finish(lua: &Lua, outcome: Outcome<MultiValue>) -> mlua::Result<MultiValue> {
    match outcome {
        Ok(mut values) => {
            values.push_front(Value::Boolean(true));
            Ok(values)
        }
        Err(Failure::Raise(message, level)) => Ok(MultiValue::from_iter([
            Value::Boolean(false),
            Value::String(lua.create_string(message)?),
            Value::Integer(i64::from(level)),
        ])),
        Err(Failure::Lua(error)) => Err(error),
    }
}

fn raise(message: impl Into<String>) -> Failure {
    Failure::Raise(message.into(), 2)
}

fn arg_error(arg: usize, function: &str, message: impl std::fmt::Display) -> Failure {
    raise(format!("bad argument #{arg} to '{function}' ({message})"))
}

fn type_name(value: Option<&Value>) -> &'static str {
    match value {
        None => "no value",
        Some(value) => value.type_name(),
    }
}

/// `luaL_checklstring`: a string, or a number converted to one.
fn check_string(lua: &Lua, args: &[Value], arg: usize, function: &str) -> Outcome<mlua::String> {
    match args.get(arg - 1) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ (Value::Integer(_) | Value::Number(_))) => {
            lua.coerce_string(v.clone())?.ok_or_else(|| arg_error(arg, function, "string expected"))
        }
        other => Err(arg_error(arg, function, format!("string expected, got {}", type_name(other)))),
    }
}

/// `luaL_optinteger`.
fn opt_integer(lua: &Lua, args: &[Value], arg: usize, function: &str, default: i64) -> Outcome<i64> {
    match args.get(arg - 1) {
        None | Some(Value::Nil) => Ok(default),
        Some(v @ (Value::Integer(_) | Value::Number(_) | Value::String(_))) => match lua.coerce_integer(v.clone())? {
            Some(i) => Ok(i),
            None if matches!(v, Value::Number(_)) => {
                Err(arg_error(arg, function, "number has no integer representation"))
            }
            None => Err(arg_error(arg, function, format!("number expected, got {}", v.type_name()))),
        },
        other => Err(arg_error(arg, function, format!("number expected, got {}", type_name(other)))),
    }
}

/// `posrelatI`: a 1-based start position (negative counts from the end).
fn start_position(pos: i64, len: usize) -> usize {
    if pos > 0 {
        pos as usize
    } else if pos == 0 || pos.unsigned_abs() > len as u64 {
        1
    } else {
        (len as i64 + pos + 1) as usize
    }
}

fn truthy(value: Option<&Value>) -> bool {
    !matches!(value, None | Some(Value::Nil) | Some(Value::Boolean(false)))
}

/// Counts work and checks the time budget every [`CHECK_EVERY`] steps.
struct Meter<'b> {
    budget: &'b Budget,
    steps: u32,
}

impl Meter<'_> {
    fn tick(&mut self, steps: u32) -> Outcome<()> {
        self.steps = self.steps.wrapping_add(steps);
        if self.steps >= CHECK_EVERY {
            self.steps = 0;
            if self.budget.exceeded() {
                return Err(Failure::Lua(mlua::Error::runtime("time budget exceeded")));
            }
        }
        Ok(())
    }
}

/// One match attempt's state (Lua's `MatchState`).
struct Matcher<'a, 'b> {
    lua: &'a Lua,
    src: &'a [u8],
    pat: &'a [u8],
    depth: u32,
    level: usize,
    captures: [(usize, isize); MAX_CAPTURES],
    meter: &'a mut Meter<'b>,
}

impl<'a, 'b> Matcher<'a, 'b> {
    fn new(lua: &'a Lua, src: &'a [u8], pat: &'a [u8], meter: &'a mut Meter<'b>) -> Self {
        Matcher { lua, src, pat, depth: MAX_MATCH_DEPTH, level: 0, captures: [(0, 0); MAX_CAPTURES], meter }
    }

    fn reset(&mut self) {
        self.level = 0;
        self.depth = MAX_MATCH_DEPTH;
    }

    /// The pattern byte at `i`, or 0 past the end (C strings end in NUL).
    fn p(&self, i: usize) -> u8 {
        self.pat.get(i).copied().unwrap_or(0)
    }

    fn s(&self, i: usize) -> u8 {
        self.src.get(i).copied().unwrap_or(0)
    }

    fn fail(&self, message: &str) -> Failure {
        raise(message)
    }

    fn class_end(&self, mut p: usize) -> Outcome<usize> {
        let c = self.p(p);
        p += 1;
        match c {
            b'%' => {
                if p >= self.pat.len() {
                    return Err(self.fail("malformed pattern (ends with '%')"));
                }
                Ok(p + 1)
            }
            b'[' => {
                if self.p(p) == b'^' {
                    p += 1;
                }
                loop {
                    if p >= self.pat.len() {
                        return Err(self.fail("malformed pattern (missing ']')"));
                    }
                    let c = self.p(p);
                    p += 1;
                    if c == b'%' && p < self.pat.len() {
                        p += 1;
                    }
                    if self.p(p) == b']' {
                        break;
                    }
                }
                Ok(p + 1)
            }
            _ => Ok(p),
        }
    }

    /// Whether `c` is in the set `[...]` from `p` (the `[`) to `ec` (the `]`).
    fn match_bracket_class(&self, c: u8, mut p: usize, ec: usize) -> bool {
        let mut sig = true;
        if self.p(p + 1) == b'^' {
            sig = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= ec {
                return !sig;
            }
            if self.p(p) == b'%' {
                p += 1;
                if match_class(c, self.p(p)) {
                    return sig;
                }
            } else if self.p(p + 1) == b'-' && p + 2 < ec {
                p += 2;
                if self.p(p - 2) <= c && c <= self.p(p) {
                    return sig;
                }
            } else if self.p(p) == c {
                return sig;
            }
        }
    }

    fn single_match(&self, s: usize, p: usize, ep: usize) -> bool {
        if s >= self.src.len() {
            return false;
        }
        let c = self.src[s];
        match self.p(p) {
            b'.' => true,
            b'%' => match_class(c, self.p(p + 1)),
            b'[' => self.match_bracket_class(c, p, ep - 1),
            pc => pc == c,
        }
    }

    /// Matches the pattern from `p` against the subject from `s`; the end
    /// of the match, if any.
    fn do_match(&mut self, mut s: usize, mut p: usize) -> Outcome<Option<usize>> {
        if self.depth == 0 {
            return Err(self.fail("pattern too complex"));
        }
        self.depth -= 1;
        let result = loop {
            self.meter.tick(1)?;
            if p == self.pat.len() {
                break Some(s);
            }
            match self.pat[p] {
                b'(' => {
                    break if self.p(p + 1) == b')' {
                        self.start_capture(s, p + 2, CAP_POSITION)?
                    } else {
                        self.start_capture(s, p + 1, CAP_UNFINISHED)?
                    };
                }
                b')' => break self.end_capture(s, p + 1)?,
                b'$' if p + 1 == self.pat.len() => break (s == self.src.len()).then_some(s),
                b'%' if self.p(p + 1) == b'b' => match self.match_balance(s, p + 2)? {
                    Some(end) => {
                        s = end;
                        p += 4;
                    }
                    None => break None,
                },
                b'%' if self.p(p + 1) == b'f' => {
                    p += 2;
                    if self.p(p) != b'[' {
                        return Err(self.fail("missing '[' after '%f' in pattern"));
                    }
                    let ep = self.class_end(p)?;
                    let previous = if s == 0 { 0 } else { self.s(s - 1) };
                    if !self.match_bracket_class(previous, p, ep - 1) && self.match_bracket_class(self.s(s), p, ep - 1)
                    {
                        p = ep;
                    } else {
                        break None;
                    }
                }
                b'%' if self.p(p + 1).is_ascii_digit() => match self.match_capture(s, self.p(p + 1))? {
                    Some(end) => {
                        s = end;
                        p += 2;
                    }
                    None => break None,
                },
                _ => {
                    let ep = self.class_end(p)?;
                    let suffix = self.p(ep);
                    if !self.single_match(s, p, ep) {
                        if matches!(suffix, b'*' | b'?' | b'-') {
                            p = ep + 1;
                            continue;
                        }
                        break None;
                    }
                    match suffix {
                        b'?' => {
                            if let Some(end) = self.do_match(s + 1, ep + 1)? {
                                break Some(end);
                            }
                            p = ep + 1;
                        }
                        b'+' => break self.max_expand(s + 1, p, ep)?,
                        b'*' => break self.max_expand(s, p, ep)?,
                        b'-' => break self.min_expand(s, p, ep)?,
                        _ => {
                            s += 1;
                            p = ep;
                        }
                    }
                }
            }
        };
        self.depth += 1;
        Ok(result)
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Outcome<Option<usize>> {
        let mut i = 0;
        while self.single_match(s + i, p, ep) {
            i += 1;
            self.meter.tick(1)?;
        }
        loop {
            if let Some(end) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(end));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> Outcome<Option<usize>> {
        loop {
            if let Some(end) = self.do_match(s, ep + 1)? {
                return Ok(Some(end));
            }
            if !self.single_match(s, p, ep) {
                return Ok(None);
            }
            s += 1;
        }
    }

    fn match_balance(&mut self, s: usize, p: usize) -> Outcome<Option<usize>> {
        if p + 1 >= self.pat.len() {
            return Err(self.fail("malformed pattern (missing arguments to '%b')"));
        }
        if s >= self.src.len() || self.src[s] != self.pat[p] {
            return Ok(None);
        }
        let (open, close) = (self.pat[p], self.pat[p + 1]);
        let mut depth = 1;
        for (i, &c) in self.src.iter().enumerate().skip(s + 1) {
            self.meter.tick(1)?;
            if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(i + 1));
                }
            } else if c == open {
                depth += 1;
            }
        }
        Ok(None)
    }

    fn start_capture(&mut self, s: usize, p: usize, what: isize) -> Outcome<Option<usize>> {
        if self.level >= MAX_CAPTURES {
            return Err(self.fail("too many captures"));
        }
        self.captures[self.level] = (s, what);
        self.level += 1;
        let result = self.do_match(s, p)?;
        if result.is_none() {
            self.level -= 1;
        }
        Ok(result)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Outcome<Option<usize>> {
        let Some(l) = (0..self.level).rev().find(|&l| self.captures[l].1 == CAP_UNFINISHED) else {
            return Err(self.fail("invalid pattern capture"));
        };
        self.captures[l].1 = (s - self.captures[l].0) as isize;
        let result = self.do_match(s, p)?;
        if result.is_none() {
            self.captures[l].1 = CAP_UNFINISHED;
        }
        Ok(result)
    }

    fn match_capture(&mut self, s: usize, digit: u8) -> Outcome<Option<usize>> {
        let l = self.check_capture(digit)?;
        let (init, len) = self.captures[l];
        if len < 0 {
            return Ok(None); // a position capture never matches text
        }
        let len = len as usize;
        self.meter.tick((len / 64) as u32)?;
        if self.src.len() - s >= len && self.src[init..init + len] == self.src[s..s + len] {
            Ok(Some(s + len))
        } else {
            Ok(None)
        }
    }

    fn check_capture(&self, digit: u8) -> Outcome<usize> {
        let l = digit as i32 - b'1' as i32;
        if l < 0 || l as usize >= self.level || self.captures[l as usize].1 == CAP_UNFINISHED {
            return Err(self.fail(&format!("invalid capture index %{}", l + 1)));
        }
        Ok(l as usize)
    }

    /// Capture `i` of a match of `s..e` (the whole match if the pattern has
    /// no captures).
    fn capture(&self, i: usize, s: usize, e: usize) -> Outcome<Value> {
        if i >= self.level {
            if i != 0 {
                return Err(self.fail(&format!("invalid capture index %{}", i + 1)));
            }
            return Ok(Value::String(self.lua.create_string(&self.src[s..e])?));
        }
        let (init, len) = self.captures[i];
        match len {
            CAP_UNFINISHED => Err(self.fail("unfinished capture")),
            CAP_POSITION => Ok(Value::Integer(init as i64 + 1)),
            len => Ok(Value::String(self.lua.create_string(&self.src[init..init + len as usize])?)),
        }
    }

    /// All captures (`whole` = the match's start, for the implicit capture).
    fn captures(&self, whole: Option<usize>, e: usize) -> Outcome<MultiValue> {
        let count = if self.level == 0 && whole.is_some() { 1 } else { self.level };
        (0..count).map(|i| self.capture(i, whole.unwrap_or(0), e)).collect()
    }
}

/// `match_class` of `lstrlib.c` in the C locale.
fn match_class(c: u8, class: u8) -> bool {
    let result = match class.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        b'z' => c == 0, // deprecated in Lua, still supported
        _ => return class == c,
    };
    if class.is_ascii_uppercase() {
        !result
    } else {
        result
    }
}

/// First occurrence of `needle` in `hay`, metered.
fn find_plain(hay: &[u8], needle: &[u8], meter: &mut Meter<'_>) -> Outcome<Option<usize>> {
    if needle.is_empty() {
        return Ok(Some(0));
    }
    if needle.len() > hay.len() {
        return Ok(None);
    }
    let last = hay.len() - needle.len();
    let mut start = 0;
    while start <= last {
        let Some(offset) = hay[start..=last].iter().position(|&c| c == needle[0]) else {
            return Ok(None);
        };
        let at = start + offset;
        meter.tick(1 + (offset / 64) as u32 + (needle.len() / 64) as u32)?;
        if hay[at..at + needle.len()] == *needle {
            return Ok(Some(at));
        }
        start = at + 1;
    }
    Ok(None)
}

/// `string.find` (`find`) and `string.match`.
fn find_aux(lua: &Lua, budget: &Budget, args: &[Value], find: bool) -> Outcome<MultiValue> {
    let name = if find { "find" } else { "match" };
    let subject = check_string(lua, args, 1, name)?;
    let pattern = check_string(lua, args, 2, name)?;
    let (src, pat) = (subject.as_bytes(), pattern.as_bytes());
    let init = start_position(opt_integer(lua, args, 3, name, 1)?, src.len()) - 1;
    if init > src.len() {
        return Ok(MultiValue::from_iter([Value::Nil]));
    }
    let mut meter = Meter { budget, steps: 0 };
    if find && (truthy(args.get(3)) || !pat.iter().any(|c| SPECIALS.contains(c))) {
        if let Some(at) = find_plain(&src[init..], &pat, &mut meter)? {
            let start = init + at;
            return Ok(MultiValue::from_iter([
                Value::Integer(start as i64 + 1),
                Value::Integer((start + pat.len()) as i64),
            ]));
        }
        return Ok(MultiValue::from_iter([Value::Nil]));
    }
    let anchor = pat.first() == Some(&b'^');
    let body = if anchor { &pat[1..] } else { &pat[..] };
    let mut m = Matcher::new(lua, &src, body, &mut meter);
    let mut s1 = init;
    loop {
        m.reset();
        if let Some(end) = m.do_match(s1, 0)? {
            if find {
                let mut values = m.captures(None, 0)?;
                values.push_front(Value::Integer(end as i64));
                values.push_front(Value::Integer(s1 as i64 + 1));
                return Ok(values);
            }
            return m.captures(Some(s1), end);
        }
        s1 += 1;
        if s1 > src.len() || anchor {
            break;
        }
    }
    Ok(MultiValue::from_iter([Value::Nil]))
}

/// `string.gmatch(s, pattern [, init])`: an iterator over the matches.
fn gmatch(lua: &Lua, budget: &Arc<Budget>, args: &[Value]) -> Outcome<Function> {
    let subject = check_string(lua, args, 1, "gmatch")?;
    let pattern = check_string(lua, args, 2, "gmatch")?;
    let len = subject.as_bytes().len();
    let mut init = start_position(opt_integer(lua, args, 3, "gmatch", 1)?, len) - 1;
    if init > len {
        init = len + 1;
    }
    let budget = Arc::clone(budget);
    let mut position = init;
    let mut last_match: Option<usize> = None;
    Ok(lua.create_function_mut(move |lua, ()| {
        let (src, pat) = (subject.as_bytes(), pattern.as_bytes());
        let mut meter = Meter { budget: &budget, steps: 0 };
        let mut m = Matcher::new(lua, &src, &pat, &mut meter);
        let mut s = position;
        let next = loop {
            if s > src.len() {
                position = s;
                break Ok(MultiValue::new());
            }
            m.reset();
            match m.do_match(s, 0) {
                Ok(Some(end)) if Some(end) != last_match => {
                    position = end;
                    last_match = Some(end);
                    break m.captures(Some(s), end);
                }
                Ok(_) => s += 1,
                Err(failure) => break Err(failure),
            }
        };
        finish(lua, next)
    })?)
}

/// `string.gsub(s, pattern, repl [, n])`.
fn gsub(lua: &Lua, budget: &Budget, args: &[Value], memory_limit: usize) -> Outcome<(Value, i64)> {
    let subject = check_string(lua, args, 1, "gsub")?;
    let pattern = check_string(lua, args, 2, "gsub")?;
    let repl = match args.get(2) {
        Some(Value::String(s)) => Replacement::Text(s.as_bytes().to_vec()),
        Some(v @ (Value::Integer(_) | Value::Number(_))) => {
            Replacement::Text(lua.coerce_string(v.clone())?.expect("numbers convert to strings").as_bytes().to_vec())
        }
        Some(Value::Table(t)) => Replacement::Table(t.clone()),
        Some(Value::Function(f)) => Replacement::Function(f.clone()),
        other => return Err(arg_error(3, "gsub", format!("string/function/table expected, got {}", type_name(other)))),
    };
    let (src, pat) = (subject.as_bytes(), pattern.as_bytes());
    let max_n = opt_integer(lua, args, 4, "gsub", src.len() as i64 + 1)?;
    let anchor = pat.first() == Some(&b'^');
    let body = if anchor { &pat[1..] } else { &pat[..] };
    let mut meter = Meter { budget, steps: 0 };
    let mut m = Matcher::new(lua, &src, body, &mut meter);
    let mut out: Vec<u8> = Vec::new();
    let mut s = 0;
    let mut last_match = None;
    let mut n = 0;
    let mut changed = false;
    while n < max_n {
        m.reset();
        let matched = m.do_match(s, 0)?;
        match matched {
            Some(e) if Some(e) != last_match => {
                n += 1;
                changed |= repl.add(&m, &mut out, s, e)?;
                s = e;
                last_match = Some(e);
            }
            _ if s < src.len() => {
                out.push(src[s]);
                s += 1;
            }
            _ => break,
        }
        if out.len() > memory_limit && memory_limit != 0 {
            return Err(Failure::Lua(mlua::Error::MemoryError("not enough memory".to_owned())));
        }
        if anchor {
            break;
        }
    }
    if !changed {
        return Ok((Value::String(subject), n));
    }
    out.extend_from_slice(&src[s..]);
    Ok((Value::String(lua.create_string(&out)?), n))
}

enum Replacement {
    Text(Vec<u8>),
    Table(Table),
    Function(Function),
}

impl Replacement {
    /// Appends the replacement of the match `s..e`; whether it changed the
    /// text (`add_value` of `lstrlib.c`).
    fn add(&self, m: &Matcher<'_, '_>, out: &mut Vec<u8>, s: usize, e: usize) -> Outcome<bool> {
        let value = match self {
            Replacement::Text(text) => {
                let mut i = 0;
                while i < text.len() {
                    let Some(escape) = text[i..].iter().position(|&c| c == b'%') else {
                        out.extend_from_slice(&text[i..]);
                        break;
                    };
                    out.extend_from_slice(&text[i..i + escape]);
                    i += escape + 1;
                    match text.get(i).copied() {
                        Some(b'%') => out.push(b'%'),
                        Some(b'0') => out.extend_from_slice(&m.src[s..e]),
                        Some(d) if d.is_ascii_digit() => match m.capture((d - b'1') as usize, s, e)? {
                            Value::String(cap) => out.extend_from_slice(&cap.as_bytes()),
                            Value::Integer(position) => out.extend_from_slice(position.to_string().as_bytes()),
                            _ => unreachable!("captures are strings or positions"),
                        },
                        _ => return Err(m.fail("invalid use of '%' in replacement string")),
                    }
                    i += 1;
                }
                return Ok(true);
            }
            Replacement::Table(table) => table.get::<Value>(m.capture(0, s, e)?).map_err(from_lua_code)?,
            Replacement::Function(function) => {
                function.call::<Value>(m.captures(Some(s), e)?).map_err(from_lua_code)?
            }
        };
        match value {
            Value::Nil | Value::Boolean(false) => {
                out.extend_from_slice(&m.src[s..e]);
                Ok(false)
            }
            Value::String(text) => {
                out.extend_from_slice(&text.as_bytes());
                Ok(true)
            }
            v @ (Value::Integer(_) | Value::Number(_)) => {
                let text = m.lua.coerce_string(v)?.expect("numbers convert to strings");
                out.extend_from_slice(&text.as_bytes());
                Ok(true)
            }
            other => Err(m.fail(&format!("invalid replacement value (a {})", other.type_name()))),
        }
    }
}

/// An error raised by script code a replacement ran (a function, or a
/// table's `__index`): raised again as it was, unless it is the budget or
/// memory stopping the call.
fn from_lua_code(error: mlua::Error) -> Failure {
    match error {
        mlua::Error::RuntimeError(message) => match message.find("\nstack traceback:") {
            Some(end) => Failure::Raise(message[..end].to_owned(), 0),
            None => Failure::Raise(message, 0),
        },
        other => Failure::Lua(other),
    }
}
