//! `fila.json_decode(text)`: JSON text to Lua values.
//!
//! Objects become tables with string keys, arrays become sequences
//! (`t[1]`, `t[2]`, ...), integers that fit 64 bits become Lua integers and
//! other numbers floats, `null` becomes `nil` (so a `null` inside an array
//! leaves a hole in the sequence). Nesting deeper than 128 levels is an
//! error. Invalid JSON raises a Lua error naming the line and column.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use mlua::{ffi, Lua, Value};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// What a helper answers its Lua wrapper (see `SETUP` in `sandbox.rs`):
/// `true, value`, or `false, message, level` for the wrapper to raise with
/// `error(message, level)` (a plain string at the script's line, as Lua's own
/// functions do; an `Err` would reach the script as a userdata).
pub(super) type Answer = (bool, Value, Option<u8>);

pub(super) fn decode(lua: &Lua, text: Value) -> mlua::Result<Answer> {
    let Value::String(text) = text else {
        return raise(lua, format!("fila.json_decode expects a string, got {}", text.type_name()));
    };
    let bytes = text.as_bytes();
    match parse(&bytes) {
        Ok(doc) => Ok((true, build(lua, &doc)?, None)),
        Err(message) => raise(lua, message),
    }
}

/// An error for the Lua wrapper to raise at the script's line.
pub(super) fn raise(lua: &Lua, message: String) -> mlua::Result<Answer> {
    Ok((false, Value::String(lua.create_string(message)?), Some(2)))
}

/// A parsed document.
struct Doc<'de> {
    /// Its values in document order, each array and object before what it
    /// holds (with its count), so it is built from the front in one pass.
    tape: Vec<Token<'de>>,
    /// How deeply arrays and objects nest in it (0 for a scalar).
    depth: usize,
}

/// One value of a [`Doc`].
enum Token<'de> {
    Nil,
    Bool(bool),
    Int(i64),
    Num(f64),
    /// A string, borrowed from the text unless it had escapes.
    Str(Cow<'de, str>),
    /// An array of this many values (the tokens of each follow).
    Array(usize),
    /// An object of this many fields (each a `Str` key, then its value).
    Object(usize),
}

/// Parses `text` whole before anything is built in Lua: invalid JSON is
/// found without touching the VM. Nesting is limited to 128 levels
/// (serde_json's recursion limit).
fn parse(text: &[u8]) -> Result<Doc<'_>, String> {
    let mut doc = Doc { tape: Vec::with_capacity(16), depth: 0 };
    let mut parser = serde_json::Deserializer::from_slice(text);
    Parse { doc: &mut doc, depth: 0 }
        .deserialize(&mut parser)
        .and_then(|()| parser.end())
        .map_err(|e| format!("fila.json_decode: invalid JSON: {e}"))?;
    Ok(doc)
}

/// Builds the Lua value of `tape` with Lua's C API, inside one protected
/// call.
///
/// Through `mlua`'s API each table and each string is a call of its own,
/// protected against Lua errors (a memory error, with the script's limit in
/// force), and a Lua reference per value: that came to three quarters of
/// `fila.json_decode`'s cost for a small document. Here the whole value is
/// built in one `exec_raw` (itself a protected call), with the memory limit
/// in force for every allocation.
fn build(lua: &Lua, doc: &Doc<'_>) -> mlua::Result<Value> {
    // Two stack slots per open array or object (the table, then a key) and
    // one for the value being added; at most 257 (nesting is limited).
    let slots = i32::try_from(2 * doc.depth + 1).unwrap_or(i32::MAX);
    let tape = &doc.tape[..];
    let had_stack = Cell::new(true);
    // SAFETY: the closure runs inside a protected call (`exec_raw`), so a
    // Lua error raised by the C API (only a memory error: table and string
    // allocation) unwinds to it, skipping the closure's frames and `push`'s.
    // Those frames own nothing that needs dropping (references, integers and
    // a `Cell`), which is the condition for leaving Rust frames that way
    // (mlua builds its own protected calls on the same condition). The stack
    // has room for every value pushed: `lua_checkstack` (which does not
    // raise) reserves the slots counted above, and nothing is pushed if it
    // cannot. Strings are pushed with their length, so they may hold zeros.
    let value: Value = unsafe {
        lua.exec_raw((), |state| {
            if ffi::lua_checkstack(state, slots) == 0 {
                had_stack.set(false);
                return;
            }
            let mut at = 0;
            push(state, tape, &mut at);
        })?
    };
    if !had_stack.get() {
        return Err(mlua::Error::MemoryError("not enough memory for the Lua stack".to_owned()));
    }
    Ok(value)
}

/// Pushes the value starting at `tape[*at]` and moves `at` past it.
///
/// # Safety
/// `state` must have a free stack slot per value pushed at once (see
/// [`build`]), and the caller must be running in a protected call whose
/// frames up to it own nothing that needs dropping.
unsafe fn push(state: *mut ffi::lua_State, tape: &[Token<'_>], at: &mut usize) {
    let token = &tape[*at];
    *at += 1;
    match token {
        Token::Nil => ffi::lua_pushnil(state),
        Token::Bool(b) => ffi::lua_pushboolean(state, i32::from(*b)),
        Token::Int(i) => ffi::lua_pushinteger(state, *i),
        Token::Num(n) => ffi::lua_pushnumber(state, *n),
        Token::Str(s) => {
            ffi::lua_pushlstring(state, s.as_ptr().cast(), s.len());
        }
        Token::Array(len) => {
            ffi::lua_createtable(state, (*len).try_into().unwrap_or(i32::MAX), 0);
            for i in 1..=*len {
                push(state, tape, at);
                // A `nil` (JSON null) leaves a hole: Lua stores nothing.
                ffi::lua_rawseti(state, -2, i as ffi::lua_Integer);
            }
        }
        Token::Object(len) => {
            ffi::lua_createtable(state, 0, (*len).try_into().unwrap_or(i32::MAX));
            for _ in 0..*len {
                push(state, tape, at);
                push(state, tape, at);
                // In document order, so of repeated keys the last wins; a
                // `nil` value sets nothing.
                ffi::lua_rawset(state, -3);
            }
        }
    }
}

/// Appends one value (and what it contains), at `depth` in the document, to
/// the document's tape.
struct Parse<'t, 'de> {
    doc: &'t mut Doc<'de>,
    depth: usize,
}

impl<'de> Parse<'_, 'de> {
    fn push(self, token: Token<'de>) {
        self.doc.tape.push(token);
    }

    /// Appends an array or an object: `make(0)` in its place, then what
    /// `items` appends one level deeper (it answers how many values or
    /// fields), then `make` of that count in the first place.
    fn container<E>(
        self,
        make: fn(usize) -> Token<'de>,
        items: impl FnOnce(&mut Doc<'de>, usize) -> Result<usize, E>,
    ) -> Result<(), E> {
        let (doc, depth) = (self.doc, self.depth + 1);
        doc.depth = doc.depth.max(depth);
        let start = doc.tape.len();
        doc.tape.push(make(0));
        let len = items(&mut *doc, depth)?;
        doc.tape[start] = make(len);
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Parse<'_, 'de> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Parse<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<(), E> {
        self.push(Token::Bool(b));
        Ok(())
    }

    fn visit_i64<E>(self, i: i64) -> Result<(), E> {
        self.push(Token::Int(i));
        Ok(())
    }

    fn visit_u64<E>(self, u: u64) -> Result<(), E> {
        self.push(match i64::try_from(u) {
            Ok(i) => Token::Int(i),
            Err(_) => Token::Num(u as f64),
        });
        Ok(())
    }

    fn visit_f64<E>(self, n: f64) -> Result<(), E> {
        // As `serde_json::Value`, which has no non-finite numbers.
        self.push(if n.is_finite() { Token::Num(n) } else { Token::Nil });
        Ok(())
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<(), E> {
        self.push(Token::Str(Cow::Borrowed(s)));
        Ok(())
    }

    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        self.push(Token::Str(Cow::Owned(s.to_owned())));
        Ok(())
    }

    fn visit_string<E>(self, s: String) -> Result<(), E> {
        self.push(Token::Str(Cow::Owned(s)));
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.push(Token::Nil);
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        self.push(Token::Nil);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.container(Token::Array, |doc, depth| {
            let mut len = 0;
            while seq.next_element_seed(Parse { doc: &mut *doc, depth })?.is_some() {
                len += 1;
            }
            Ok(len)
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.container(Token::Object, |doc, depth| {
            let mut len = 0;
            while let Some(key) = map.next_key_seed(Key)? {
                doc.tape.push(Token::Str(key));
                map.next_value_seed(Parse { doc: &mut *doc, depth })?;
                len += 1;
            }
            Ok(len)
        })
    }
}

/// An object's key, borrowed from the text unless it had escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s))
    }
}
