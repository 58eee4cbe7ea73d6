//! Between Rust and Lua: the `msg` table a hook receives, and validation of
//! what it returns. Returned tables are read raw (no metamethods run), so
//! reading them runs no script code.

use std::time::Duration;

use mlua::{Lua, Table, Value};

use super::{EnqueueDecision, FailureDecision, ScriptMessage, MAX_RETRY_DELAY};
use crate::domain::limits::{MAX_FAIRNESS_KEY_BYTES, MAX_THROTTLE_KEYS, MAX_THROTTLE_KEY_BYTES, MAX_WEIGHT};

/// The parts of the `msg` table (built in Lua by the trampoline, see
/// `sandbox.rs`): queue name, headers table, payload size and, for scripts
/// that asked for it, the payload.
pub(super) fn message_fields<'m>(
    lua: &Lua,
    msg: &ScriptMessage<'m>,
    with_payload: bool,
) -> mlua::Result<(&'m str, Table, usize, Option<mlua::String>)> {
    let headers = lua.create_table_from(msg.headers.iter().map(|(name, value)| (name.as_str(), value.as_str())))?;
    let payload = if with_payload { Some(lua.create_string(msg.payload)?) } else { None };
    Ok((msg.queue, headers, msg.payload.len(), payload))
}

/// `nil` (no changes) or a table with any of `fairness_key`, `weight` and
/// `throttle_keys`; any other field is an error, so a misspelt field is
/// reported rather than ignored.
pub(super) fn enqueue_decision(value: Value) -> Result<EnqueueDecision, String> {
    let table = match value {
        Value::Nil => return Ok(EnqueueDecision::default()),
        Value::Table(table) => table,
        other => return Err(format!("expected a table or nil, got {}", type_name(&other))),
    };
    let mut decision = EnqueueDecision::default();
    // Four entries are enough to find one that is not a field.
    for (key, value) in entries(&table, 4)? {
        match field_name(&key)?.as_str() {
            "fairness_key" => decision.fairness_key = Some(key_string("fairness_key", value, MAX_FAIRNESS_KEY_BYTES)?),
            "weight" => {
                let weight = integer("weight", &value)?;
                if !(1..=i64::from(MAX_WEIGHT)).contains(&weight) {
                    return Err(format!("weight {weight} is out of range; use 1 to {MAX_WEIGHT}"));
                }
                decision.weight = Some(weight as u32);
            }
            "throttle_keys" => decision.throttle_keys = Some(throttle_keys(value)?),
            other => {
                return Err(format!(
                    "unknown field '{other}'; on_enqueue may return fairness_key, weight and throttle_keys"
                ))
            }
        }
    }
    Ok(decision)
}

/// `nil` (apply the queue's default policy), `{ action = "retry", delay_ms = N }`
/// or `{ action = "dlq" }`.
pub(super) fn failure_decision(value: Value) -> Result<Option<FailureDecision>, String> {
    let table = match value {
        Value::Nil => return Ok(None),
        Value::Table(table) => table,
        other => return Err(format!("expected a table or nil, got {}", type_name(&other))),
    };
    let mut action = None;
    let mut delay_ms = None;
    for (key, value) in entries(&table, 3)? {
        match field_name(&key)?.as_str() {
            "action" => match &value {
                Value::String(s) => action = Some(s.to_string_lossy()),
                other => return Err(format!("action must be \"retry\" or \"dlq\", got {}", type_name(other))),
            },
            "delay_ms" => delay_ms = Some(integer("delay_ms", &value)?),
            other => return Err(format!("unknown field '{other}'; on_failure may return action and delay_ms")),
        }
    }
    let max_ms = MAX_RETRY_DELAY.as_millis() as i64;
    match action.as_deref() {
        Some("retry") => match delay_ms {
            Some(ms) if (0..=max_ms).contains(&ms) => {
                Ok(Some(FailureDecision::Retry { delay: Duration::from_millis(ms as u64) }))
            }
            Some(ms) => Err(format!("delay_ms {ms} is out of range; use 0 to {max_ms} (7 days)")),
            None => Err("action \"retry\" needs delay_ms (milliseconds, 0 to retry at once)".to_owned()),
        },
        Some("dlq") if delay_ms.is_some() => Err("action \"dlq\" takes no delay_ms".to_owned()),
        Some("dlq") => Ok(Some(FailureDecision::DeadLetter)),
        Some(other) => Err(format!("action must be \"retry\" or \"dlq\", got \"{other}\"")),
        None => {
            Err("the table has no action; return { action = \"retry\", delay_ms = N } or { action = \"dlq\" }"
                .to_owned())
        }
    }
}

fn field_name(key: &Value) -> Result<String, String> {
    match key {
        Value::String(s) => Ok(s.to_string_lossy()),
        other => Err(format!("expected a table of named fields, found {} key", type_name(other))),
    }
}

/// An integer, or a float with an integral value (`10 / 2` is the float 5.0
/// in Lua 5.4).
fn integer(field: &str, value: &Value) -> Result<i64, String> {
    match value {
        Value::Integer(i) => Ok(*i),
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => Ok(*n as i64),
        Value::Number(n) => Err(format!("{field} must be an integer, got {n}")),
        other => Err(format!("{field} must be an integer, got {}", type_name(other))),
    }
}

/// A UTF-8 string of 1 to `max` bytes.
fn key_string(field: &str, value: Value, max: usize) -> Result<String, String> {
    let Value::String(s) = value else {
        return Err(format!("{field} must be a string, got {}", type_name(&value)));
    };
    let s = s.to_str().map_err(|_| format!("{field} must be valid UTF-8"))?.to_owned();
    if s.is_empty() || s.len() > max {
        return Err(format!("{field} must be 1 to {max} bytes long, got {} bytes", s.len()));
    }
    Ok(s)
}

/// A sequence `{ "a", "b" }` of at most `MAX_THROTTLE_KEYS` keys.
fn throttle_keys(value: Value) -> Result<Vec<String>, String> {
    let Value::Table(table) = value else {
        return Err(format!("throttle_keys must be an array of strings, got {}", type_name(&value)));
    };
    let mut entries = entries(&table, MAX_THROTTLE_KEYS + 1)?;
    if entries.len() > MAX_THROTTLE_KEYS {
        return Err(format!("throttle_keys has more than {MAX_THROTTLE_KEYS} keys"));
    }
    let mut indexed = Vec::with_capacity(entries.len());
    for (index, value) in entries.drain(..) {
        match index {
            Value::Integer(i) if i >= 1 => indexed.push((i, value)),
            _ => return Err("throttle_keys must be an array (a sequence t[1], t[2], ...) of strings".to_owned()),
        }
    }
    indexed.sort_unstable_by_key(|(i, _)| *i);
    let mut keys = Vec::with_capacity(indexed.len());
    for (position, (index, value)) in indexed.into_iter().enumerate() {
        if index != position as i64 + 1 {
            return Err("throttle_keys must be an array without holes".to_owned());
        }
        keys.push(key_string(&format!("throttle_keys[{index}]"), value, MAX_THROTTLE_KEY_BYTES)?);
    }
    Ok(keys)
}

/// A table's entries, read raw.
/// Up to `limit` of a table's entries, read raw: enough to validate it, so a
/// huge returned table costs no more than a small one.
fn entries(table: &Table, limit: usize) -> Result<Vec<(Value, Value)>, String> {
    let mut entries = Vec::new();
    let result = table.for_each(|key: Value, value: Value| {
        if entries.len() == limit {
            return Err(mlua::Error::runtime("enough entries"));
        }
        entries.push((key, value));
        Ok(())
    });
    match result {
        Err(_) if entries.len() == limit => Ok(entries),
        Err(e) => Err(e.to_string()),
        Ok(()) => Ok(entries),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Integer(_) | Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Boolean(_) => "a boolean",
        Value::Table(_) => "a table",
        Value::Function(_) => "a function",
        Value::Nil => "nil",
        _ => "a value of another type",
    }
}
