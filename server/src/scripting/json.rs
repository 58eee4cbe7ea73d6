//! `fila.json_decode(text)`: JSON text to Lua values.
//!
//! Objects become tables with string keys, arrays become sequences
//! (`t[1]`, `t[2]`, ...), integers that fit 64 bits become Lua integers and
//! other numbers floats, `null` becomes `nil` (so a `null` inside an array
//! leaves a hole in the sequence). Nesting deeper than 128 levels is an
//! error. Invalid JSON raises a Lua error naming the line and column.

use mlua::{Lua, Value};
use serde_json::Value as Json;

/// What a helper answers its Lua wrapper (see `SETUP` in `sandbox.rs`):
/// `true, value`, or `false, message, level` for the wrapper to raise with
/// `error(message, level)` (a plain string at the script's line, as Lua's own
/// functions do; an `Err` would reach the script as a userdata).
pub(super) type Answer = (bool, Value, Option<u8>);

pub(super) fn decode(lua: &Lua, text: Value) -> mlua::Result<Answer> {
    let Value::String(text) = text else {
        return raise(lua, format!("fila.json_decode expects a string, got {}", text.type_name()));
    };
    let parsed: Json = match serde_json::from_slice(&text.as_bytes()) {
        Ok(parsed) => parsed,
        Err(e) => return raise(lua, format!("fila.json_decode: invalid JSON: {e}")),
    };
    Ok((true, decoded(lua, &text, &parsed)?, None))
}

/// An error for the Lua wrapper to raise at the script's line.
pub(super) fn raise(lua: &Lua, message: String) -> mlua::Result<Answer> {
    Ok((false, Value::String(lua.create_string(message)?), Some(2)))
}

fn decoded(lua: &Lua, text: &mlua::String, parsed: &Json) -> mlua::Result<Value> {
    if text.as_bytes().len() > UNCHECKED_MAX_BYTES {
        return to_lua(lua, parsed);
    }
    // Small documents (the usual case) are built with the memory limit
    // lifted, which avoids a protected call per value, and the limit is
    // checked once at the end; the most it can be exceeded by is the
    // decoded size of a 64 KiB document.
    let limit = lua.set_memory_limit(0)?;
    let value = to_lua(lua, parsed);
    lua.set_memory_limit(limit)?;
    let value = value?;
    if limit != 0 && lua.used_memory() > limit {
        drop(value);
        lua.gc_collect()?;
        if lua.used_memory() > limit {
            return Err(mlua::Error::MemoryError("not enough memory".to_owned()));
        }
        return to_lua(lua, parsed);
    }
    Ok(value)
}

/// Documents up to this size are decoded with one memory check at the end
/// instead of one per allocation.
const UNCHECKED_MAX_BYTES: usize = 64 * 1024;

fn to_lua(lua: &Lua, json: &Json) -> mlua::Result<Value> {
    Ok(match json {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(lua.create_string(s)?),
        Json::Array(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                table.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
        Json::Object(fields) => {
            let table = lua.create_table_with_capacity(0, fields.len())?;
            for (key, value) in fields {
                table.raw_set(lua.create_string(key)?, to_lua(lua, value)?)?;
            }
            Value::Table(table)
        }
    })
}
