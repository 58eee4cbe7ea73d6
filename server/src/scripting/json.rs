//! `fila.json_decode(text)`: JSON text to Lua values.
//!
//! Objects become tables with string keys, arrays become sequences
//! (`t[1]`, `t[2]`, ...), integers that fit 64 bits become Lua integers and
//! other numbers floats, `null` becomes `nil` (so a `null` inside an array
//! leaves a hole in the sequence). Nesting deeper than 128 levels is an
//! error. Invalid JSON raises a Lua error naming the line and column.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::fmt;

use mlua::{Either, Lua, Value};
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
    if bytes.len() > UNCHECKED_MAX_BYTES {
        return answer(lua, build(lua, &bytes)?);
    }
    // Small documents (the usual case) are built with the memory limit
    // lifted, which avoids a protected call per value, and the limit is
    // checked once at the end; the most it can be exceeded by is the
    // decoded size of a 64 KiB document.
    let limit = lua.set_memory_limit(0)?;
    let value = build(lua, &bytes);
    lua.set_memory_limit(limit)?;
    let value = value?;
    if limit != 0 && lua.used_memory() > limit {
        drop(value);
        lua.gc_collect()?;
        if lua.used_memory() > limit {
            return Err(mlua::Error::MemoryError("not enough memory".to_owned()));
        }
        // Again, with the limit in force for every allocation.
        return answer(lua, build(lua, &bytes)?);
    }
    answer(lua, value)
}

/// An error for the Lua wrapper to raise at the script's line.
pub(super) fn raise(lua: &Lua, message: String) -> mlua::Result<Answer> {
    Ok((false, Value::String(lua.create_string(message)?), Some(2)))
}

/// Documents up to this size are decoded with one memory check at the end
/// instead of one per allocation.
const UNCHECKED_MAX_BYTES: usize = 64 * 1024;

fn answer(lua: &Lua, built: Result<Item<'_>, String>) -> mlua::Result<Answer> {
    match built {
        Ok(Item::Str(s)) => Ok((true, Value::String(lua.create_string(&*s)?), None)),
        Ok(Item::Lua(value)) => Ok((true, value, None)),
        Err(message) => raise(lua, message),
    }
}

/// Parses `text` and builds its Lua value in one pass: `Ok(Err(message))`
/// for invalid JSON, `Err` for a Lua error (memory) while building.
///
/// The tables are built straight from the parser's events rather than from
/// a `serde_json::Value` tree (which cost as much again as the Lua side),
/// and each table is created with its final size in one `mlua` call whose
/// strings and numbers are pushed straight onto the Lua stack: a Lua
/// reference (`mlua::Value::String`) per string cost more than the string.
fn build<'de>(lua: &Lua, text: &'de [u8]) -> mlua::Result<Result<Item<'de>, String>> {
    let failed = Cell::new(None);
    let scratch = RefCell::new(Scratch { items: Vec::with_capacity(16), fields: Vec::with_capacity(16) });
    let mut parser = serde_json::Deserializer::from_slice(text);
    let parsed = Build { lua, failed: &failed, scratch: &scratch }
        .deserialize(&mut parser)
        .and_then(|item| parser.end().map(|()| item));
    if let Some(error) = failed.take() {
        return Err(error);
    }
    Ok(parsed.map_err(|e| format!("fila.json_decode: invalid JSON: {e}")))
}

/// A decoded value: a string not yet in Lua, or a Lua value (a number,
/// boolean, `nil` or a finished table).
enum Item<'de> {
    Str(Cow<'de, str>),
    Lua(Value),
}

impl Item<'_> {
    /// As something `mlua` pushes without creating a reference for it.
    fn pushed(&self) -> Either<&str, &Value> {
        match self {
            Item::Str(s) => Either::Left(s),
            Item::Lua(value) => Either::Right(value),
        }
    }
}

/// The items of the arrays and the fields of the objects being read, all
/// open ones in one stack each (innermost last), so a document needs no
/// allocation per array or object.
struct Scratch<'de> {
    items: Vec<Item<'de>>,
    fields: Vec<(Cow<'de, str>, Item<'de>)>,
}

/// Builds one value (and what it contains). A Lua error while building is
/// kept in `failed` and the parse stopped.
#[derive(Clone, Copy)]
struct Build<'a, 'de> {
    lua: &'a Lua,
    failed: &'a Cell<Option<mlua::Error>>,
    scratch: &'a RefCell<Scratch<'de>>,
}

impl<'de> Build<'_, 'de> {
    fn table<E: de::Error>(self, table: mlua::Result<mlua::Table>) -> Result<Item<'de>, E> {
        match table {
            Ok(table) => Ok(Item::Lua(Value::Table(table))),
            Err(e) => {
                self.failed.set(Some(e));
                Err(E::custom("cannot build the Lua value"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Build<'_, 'de> {
    type Value = Item<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Item<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Build<'_, 'de> {
    type Value = Item<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Item<'de>, E> {
        Ok(Item::Lua(Value::Boolean(b)))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Item<'de>, E> {
        Ok(Item::Lua(Value::Integer(i)))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Item<'de>, E> {
        Ok(Item::Lua(match i64::try_from(u) {
            Ok(i) => Value::Integer(i),
            Err(_) => Value::Number(u as f64),
        }))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Item<'de>, E> {
        // As `serde_json::Value`, which has no non-finite numbers.
        Ok(Item::Lua(if n.is_finite() { Value::Number(n) } else { Value::Nil }))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Item<'de>, E> {
        Ok(Item::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Item<'de>, E> {
        Ok(Item::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Item<'de>, E> {
        Ok(Item::Str(Cow::Owned(s)))
    }

    fn visit_unit<E>(self) -> Result<Item<'de>, E> {
        Ok(Item::Lua(Value::Nil))
    }

    fn visit_none<E>(self) -> Result<Item<'de>, E> {
        Ok(Item::Lua(Value::Nil))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item<'de>, A::Error> {
        let start = self.scratch.borrow().items.len();
        while let Some(item) = seq.next_element_seed(self)? {
            self.scratch.borrow_mut().items.push(item);
        }
        let mut scratch = self.scratch.borrow_mut();
        let table = self.lua.create_sequence_from(scratch.items[start..].iter().map(Item::pushed));
        scratch.items.truncate(start);
        self.table(table)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item<'de>, A::Error> {
        let start = self.scratch.borrow().fields.len();
        while let Some(key) = map.next_key_seed(Key)? {
            let item = map.next_value_seed(self)?;
            self.scratch.borrow_mut().fields.push((key, item));
        }
        let mut scratch = self.scratch.borrow_mut();
        // In document order, so of repeated keys the last wins.
        let fields = scratch.fields[start..].iter().map(|(key, item)| (&**key, item.pushed()));
        let table = self.lua.create_table_from(fields);
        scratch.fields.truncate(start);
        self.table(table)
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
