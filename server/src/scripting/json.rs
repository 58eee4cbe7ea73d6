//! `fila.json_decode(text)`: JSON text to Lua values.
//!
//! Objects become tables with string keys, arrays become sequences
//! (`t[1]`, `t[2]`, ...), integers that fit 64 bits become Lua integers and
//! other numbers floats, `null` becomes `nil` (so a `null` inside an array
//! leaves a hole in the sequence). Nesting deeper than 128 levels is an
//! error. Invalid JSON raises a Lua error naming the line and column.
//!
//! The function is a C function of Lua's API ([`function`]): the text is
//! parsed where it lies, whole, before anything is built in Lua (invalid
//! JSON is found without touching the VM), then the value is built with
//! Lua's C API. Through mlua, a Rust callback behind a Lua wrapper, the
//! callback machinery alone took a tenth of a realistic `on_enqueue` call.

use std::cell::UnsafeCell;
use std::ffi::c_int;
use std::fmt::{self, Write};

use mlua::{ffi, Function, Lua};

use super::convert;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// `fila.json_decode` for `lua`: a C closure whose upvalue is the VM's
/// [`Scratch`], which the Lua state owns (as app data), so it lives as long
/// as the function can run.
pub(super) fn function(lua: &Lua) -> mlua::Result<Function> {
    let scratch = Box::new(UnsafeCell::new(Scratch::default()));
    convert::c_closure(lua, decode, scratch, |scratch| scratch.get().cast())
}

/// What one VM's `fila.json_decode` reuses from call to call: the parsed
/// document and the message of an invalid one. Kept outside the call's
/// frame because building the value in Lua may raise a memory error, which
/// unwinds over the frame without dropping what it owns. Emptied after
/// each call, keeping the memory of a small document (see
/// [`Scratch::release_large`]).
#[derive(Default)]
struct Scratch {
    /// The document's values in document order, each array and object
    /// before what it holds (with its count), so it is built from the front
    /// in one pass.
    tape: Vec<Token>,
    /// The strings that had escapes, unescaped, one after another.
    unescaped: String,
    /// How deeply arrays and objects nest in the document (0 for a scalar).
    depth: usize,
    /// Why the last invalid document is invalid.
    message: String,
}

/// One value of a document.
enum Token {
    Nil,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(Span),
    /// An array of this many values (the tokens of each follow).
    Array(usize),
    /// An object of this many fields (each a `Str` key, then its value).
    Object(usize),
}

/// Where a string's bytes are.
#[derive(Clone, Copy)]
enum Span {
    /// In the text, from this offset, this long.
    Text(usize, usize),
    /// In [`Scratch::unescaped`], from this offset, this long.
    Unescaped(usize, usize),
}

/// `fila.json_decode(text)`.
///
/// # Safety
/// Called by Lua only, as the C closure [`function`] makes. It raises Lua
/// errors (a text that is not a string or not JSON; no memory, under the
/// script's limit, for the value), which unwind over this frame: it holds
/// only references, integers and spans, nothing that needs dropping. The
/// scratch is used by one call at a time: building runs no Lua code.
unsafe extern "C-unwind" fn decode(state: *mut ffi::lua_State) -> c_int {
    let scratch = &mut *(ffi::lua_touserdata(state, ffi::lua_upvalueindex(1)) as *mut Scratch);
    let text = convert::string_argument(state, c"fila.json_decode expects a string, got %s");
    if !scratch.parse(text) {
        convert::raise_at_script_line(state, || convert::push_bytes(state, scratch.message.as_bytes()));
    }
    // Two stack slots per open array or object (the table, then a key) and
    // one for the value being added; at most 257 (nesting is limited).
    if ffi::lua_checkstack(state, 2 * scratch.depth as c_int + 1) == 0 {
        ffi::lua_pushstring(state, c"not enough memory for the Lua stack".as_ptr());
        ffi::lua_error(state);
    }
    let mut at = 0;
    push(state, scratch, text, &mut at);
    scratch.release_large();
    1
}

impl Scratch {
    /// Parses `text` into the tape; `false` (with the message set) if it is
    /// not JSON. Nesting is limited to 128 levels (serde_json's recursion
    /// limit).
    fn parse(&mut self, text: &[u8]) -> bool {
        // After a call that raised while building (no memory), this is the
        // first chance to let go of a large document's buffers.
        self.release_large();
        self.depth = 0;
        let mut parser = serde_json::Deserializer::from_slice(text);
        let parsed = Parse { scratch: self, text: text.as_ptr() as usize, depth: 0 }
            .deserialize(&mut parser)
            .and_then(|()| parser.end());
        match parsed {
            Ok(()) => true,
            Err(e) => {
                self.message.clear();
                let _ = write!(self.message, "fila.json_decode: invalid JSON: {e}");
                false
            }
        }
    }

    /// Empties the buffers, keeping the memory of a small document only:
    /// what a VM holds outside Lua's memory limit stays small.
    fn release_large(&mut self) {
        const KEEP_TOKENS: usize = 1024;
        const KEEP_BYTES: usize = 16 * 1024;
        self.tape.clear();
        self.tape.shrink_to(KEEP_TOKENS);
        self.unescaped.clear();
        self.unescaped.shrink_to(KEEP_BYTES);
    }

    fn bytes<'a>(&'a self, text: &'a [u8], span: Span) -> &'a [u8] {
        match span {
            Span::Text(start, len) => &text[start..start + len],
            Span::Unescaped(start, len) => &self.unescaped.as_bytes()[start..start + len],
        }
    }
}

/// Pushes the value starting at `tape[*at]` and moves `at` past it.
///
/// # Safety
/// `state` must have a free stack slot per value pushed at once (see
/// [`decode`]), and the caller's frames up to the protected call must own
/// nothing that needs dropping (a memory error unwinds over them).
unsafe fn push(state: *mut ffi::lua_State, scratch: &Scratch, text: &[u8], at: &mut usize) {
    let token = &scratch.tape[*at];
    *at += 1;
    match *token {
        Token::Nil => ffi::lua_pushnil(state),
        Token::Bool(b) => ffi::lua_pushboolean(state, i32::from(b)),
        Token::Int(i) => ffi::lua_pushinteger(state, i),
        Token::Num(n) => ffi::lua_pushnumber(state, n),
        Token::Str(span) => {
            let bytes = scratch.bytes(text, span);
            ffi::lua_pushlstring(state, bytes.as_ptr().cast(), bytes.len());
        }
        Token::Array(len) => {
            ffi::lua_createtable(state, len.try_into().unwrap_or(i32::MAX), 0);
            for i in 1..=len {
                push(state, scratch, text, at);
                // A `nil` (JSON null) leaves a hole: Lua stores nothing.
                ffi::lua_rawseti(state, -2, i as ffi::lua_Integer);
            }
        }
        Token::Object(len) => {
            ffi::lua_createtable(state, 0, len.try_into().unwrap_or(i32::MAX));
            for _ in 0..len {
                push(state, scratch, text, at);
                push(state, scratch, text, at);
                // In document order, so of repeated keys the last wins; a
                // `nil` value sets nothing.
                ffi::lua_rawset(state, -3);
            }
        }
    }
}

/// Appends one value (and what it contains), at `depth` in the document, to
/// the tape.
struct Parse<'s> {
    scratch: &'s mut Scratch,
    /// The address of the text, to find a borrowed string's offset in it.
    text: usize,
    depth: usize,
}

impl Parse<'_> {
    fn push(self, token: Token) {
        self.scratch.tape.push(token);
    }

    /// Appends an array or an object: `make(0)` in its place, then what
    /// `items` appends one level deeper (it answers how many values or
    /// fields), then `make` of that count in the first place.
    fn container<E>(
        self,
        make: fn(usize) -> Token,
        items: impl FnOnce(&mut Scratch, usize) -> Result<usize, E>,
    ) -> Result<(), E> {
        let (scratch, depth) = (self.scratch, self.depth + 1);
        scratch.depth = scratch.depth.max(depth);
        let start = scratch.tape.len();
        scratch.tape.push(make(0));
        let len = items(&mut *scratch, depth)?;
        scratch.tape[start] = make(len);
        Ok(())
    }
}

/// A string's span: in the text if serde_json could borrow it from there,
/// else appended to the unescaped strings.
fn span(unescaped: &mut String, text: usize, s: &str, borrowed: bool) -> Span {
    if borrowed {
        Span::Text(s.as_ptr() as usize - text, s.len())
    } else {
        let start = unescaped.len();
        unescaped.push_str(s);
        Span::Unescaped(start, s.len())
    }
}

impl<'de> DeserializeSeed<'de> for Parse<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Parse<'_> {
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
        let span = span(&mut self.scratch.unescaped, self.text, s, true);
        self.push(Token::Str(span));
        Ok(())
    }

    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        let span = span(&mut self.scratch.unescaped, self.text, s, false);
        self.push(Token::Str(span));
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
        let text = self.text;
        self.container(Token::Array, |scratch, depth| {
            let mut len = 0;
            while seq.next_element_seed(Parse { scratch: &mut *scratch, text, depth })?.is_some() {
                len += 1;
            }
            Ok(len)
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let text = self.text;
        self.container(Token::Object, |scratch, depth| {
            let mut len = 0;
            while let Some(key) = map.next_key_seed(Key { unescaped: &mut scratch.unescaped, text })? {
                scratch.tape.push(Token::Str(key));
                map.next_value_seed(Parse { scratch: &mut *scratch, text, depth })?;
                len += 1;
            }
            Ok(len)
        })
    }
}

/// An object's key: its span.
struct Key<'s> {
    unescaped: &'s mut String,
    text: usize,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Span;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Span, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Span;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Span, E> {
        Ok(span(self.unescaped, self.text, s, true))
    }

    fn visit_str<E>(self, s: &str) -> Result<Span, E> {
        Ok(span(self.unescaped, self.text, s, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_document_leaves_only_small_buffers() {
        let lua = Lua::new();
        let decode = function(&lua).unwrap();
        // 20,000 tokens, half of them strings with an escape.
        let big = format!("[{}0]", r#""x\n",1,"#.repeat(10_000));
        let value: mlua::Table = decode.call(big).unwrap();
        assert_eq!(value.raw_len(), 20_001);
        let scratch = lua.app_data_ref::<Box<UnsafeCell<Scratch>>>().unwrap();
        // SAFETY: no call is running, so nothing else uses the scratch.
        let scratch = unsafe { &*scratch.get() };
        assert!(scratch.tape.capacity() <= 1024, "{}", scratch.tape.capacity());
        assert!(scratch.unescaped.capacity() <= 16 * 1024, "{}", scratch.unescaped.capacity());
    }
}
