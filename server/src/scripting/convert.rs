//! Between Rust and Lua: the `msg` table a hook receives, and validation of
//! what it returns. Returned tables are read raw (no metamethods run), so
//! reading them runs no script code.

use std::time::Duration;

use mlua::{Lua, Table, Value};

use super::sandbox::Vm;
use super::{EnqueueDecision, FailureDecision, ScriptHeaders, ScriptMessage, MAX_RETRY_DELAY};
use crate::domain::limits::{MAX_FAIRNESS_KEY_BYTES, MAX_THROTTLE_KEYS, MAX_THROTTLE_KEY_BYTES, MAX_WEIGHT};

/// The parts of the `msg` table (built in Lua by the trampoline, see
/// `sandbox.rs`): queue name, headers table, payload size and, for scripts
/// that asked for it, the payload.
pub(super) fn message_fields(
    vm: &Vm,
    lua: &Lua,
    msg: &ScriptMessage<'_>,
) -> mlua::Result<(mlua::String, Table, usize, Option<mlua::String>)> {
    let headers = match msg.headers {
        ScriptHeaders::Map(map) => {
            lua.create_table_from(map.iter().map(|(name, value)| (name.as_str(), value.as_str())))
        }
        ScriptHeaders::Pairs(pairs) => lua.create_table_from(pairs.iter().copied()),
    }?;
    let payload = if vm.wants_payload() { Some(lua.create_string(msg.payload)?) } else { None };
    Ok((vm.queue_name(lua, msg.queue)?, headers, msg.payload.len(), payload))
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
    match valid_enqueue_fields(&table) {
        Some(decision) => Ok(decision),
        None => enqueue_entries(&table),
    }
}

/// [`enqueue_decision`] of a table, from its entries in the table's order:
/// the first invalid one is reported.
pub(super) fn enqueue_entries(table: &Table) -> Result<EnqueueDecision, String> {
    let mut decision = EnqueueDecision::default();
    // Four entries are enough to find one that is not a field.
    for_entries(table, 4, |key, value| {
        // Names are compared as bytes and turned into text only for an
        // error message (this runs for every message).
        match &*field_name(&key)?.as_bytes() {
            b"fairness_key" => {
                decision.fairness_key = Some(key_string(Field::Named("fairness_key"), value, MAX_FAIRNESS_KEY_BYTES)?)
            }
            b"weight" => {
                let weight = integer("weight", &value)?;
                if !(1..=i64::from(MAX_WEIGHT)).contains(&weight) {
                    return Err(format!("weight {weight} is out of range; use 1 to {MAX_WEIGHT}"));
                }
                decision.weight = Some(weight as u32);
            }
            b"throttle_keys" => decision.throttle_keys = Some(throttle_keys(value)?),
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

/// The decision for a table of only known fields, all valid, read by name:
/// what reading its entries in order (as [`enqueue_entries`] does)
/// gives, for less, as each entry read makes a Lua reference of its key
/// (mlua allocates one and takes its lock twice). `None` for any other
/// table, for the entries to tell what is wrong in the table's order.
fn valid_enqueue_fields(table: &Table) -> Option<EnqueueDecision> {
    let field = |name| table.raw_get::<Value>(name).ok();
    let (fairness_key, weight, throttle_keys) = (field("fairness_key")?, field("weight")?, field("throttle_keys")?);
    let present = [&fairness_key, &weight, &throttle_keys].into_iter().filter(|v| !v.is_nil()).count();
    if entry_count(table, present + 1)? != present {
        return None;
    }
    let fairness_key = match fairness_key {
        Value::Nil => None,
        key => Some(key_string(Field::Named("fairness_key"), key, MAX_FAIRNESS_KEY_BYTES).ok()?),
    };
    let weight = match weight {
        Value::Nil => None,
        weight => {
            let weight = integer("weight", &weight).ok()?;
            Some(u32::try_from(weight).ok().filter(|w| (1..=MAX_WEIGHT).contains(w))?)
        }
    };
    let throttle_keys = match throttle_keys {
        Value::Nil => None,
        keys => Some(self::throttle_keys(keys).ok()?),
    };
    Some(EnqueueDecision { fairness_key, weight, throttle_keys })
}

/// How many entries a table has, counting to `limit` at most. (Read as
/// booleans, which makes no Lua reference of them.)
fn entry_count(table: &Table, limit: usize) -> Option<usize> {
    let mut count = 0;
    let result = table.for_each(|_: bool, _: bool| {
        if count == limit {
            return Err(mlua::Error::runtime("enough entries"));
        }
        count += 1;
        Ok(())
    });
    (result.is_ok() || count == limit).then_some(count)
}

/// `nil` (apply the queue's default policy), `{ action = "retry", delay_ms = N }`
/// or `{ action = "dlq" }`.
pub(super) fn failure_decision(value: Value) -> Result<Option<FailureDecision>, String> {
    let table = match value {
        Value::Nil => return Ok(None),
        Value::Table(table) => table,
        other => return Err(format!("expected a table or nil, got {}", type_name(&other))),
    };
    // As for on_enqueue (see `valid_enqueue_fields`): an action (a string)
    // and a delay (an integer) alone are read by name. Their values are
    // checked after the entries in any case, so these checks tell the same.
    let field = |name| table.raw_get::<Value>(name).ok();
    if let (Some(Value::String(action)), Some(delay_ms)) = (field("action"), field("delay_ms")) {
        let delay_ms = match delay_ms {
            Value::Nil => Some(None),
            delay_ms => integer("delay_ms", &delay_ms).ok().map(Some),
        };
        let present = 1 + usize::from(delay_ms != Some(None));
        if let Some(delay_ms) = delay_ms.filter(|_| entry_count(&table, present + 1) == Some(present)) {
            return failure_action(Some(&action.as_bytes()), delay_ms);
        }
    }
    failure_entries(&table)
}

/// [`failure_decision`] of a table, from its entries in the table's order.
pub(super) fn failure_entries(table: &Table) -> Result<Option<FailureDecision>, String> {
    let mut action = None;
    let mut delay_ms = None;
    for_entries(table, 3, |key, value| {
        match &*field_name(&key)?.as_bytes() {
            b"action" => match value {
                Value::String(s) => action = Some(s),
                other => return Err(format!("action must be \"retry\" or \"dlq\", got {}", type_name(&other))),
            },
            b"delay_ms" => delay_ms = Some(integer("delay_ms", &value)?),
            other => {
                return Err(format!(
                    "unknown field '{}'; on_failure may return action and delay_ms",
                    String::from_utf8_lossy(other)
                ))
            }
        }
        Ok(())
    })?;
    let action = action.as_ref().map(|s| s.as_bytes());
    failure_action(action.as_deref(), delay_ms)
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

fn field_name(key: &Value) -> Result<&mlua::String, String> {
    match key {
        Value::String(s) => Ok(s),
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
fn key_string(field: Field, value: Value, max: usize) -> Result<String, String> {
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

/// Calls `f` on each of the first `limit` of a table's entries, read raw,
/// until it answers an error: as iterating over [`entries`], without
/// collecting them first.
fn for_entries(
    table: &Table,
    limit: usize,
    mut f: impl FnMut(Value, Value) -> Result<(), String>,
) -> Result<(), String> {
    let mut seen = 0;
    let mut failed = None;
    let result = table.for_each(|key: Value, value: Value| {
        if seen == limit {
            return Err(mlua::Error::runtime("enough entries"));
        }
        seen += 1;
        f(key, value).map_err(|message| {
            failed = Some(message);
            mlua::Error::runtime("invalid entry")
        })
    });
    match (failed, result) {
        (Some(message), _) => Err(message),
        (None, Err(_)) if seen == limit => Ok(()),
        (None, Err(e)) => Err(e.to_string()),
        (None, Ok(())) => Ok(()),
    }
}

/// Up to `limit` of a table's entries, read raw: enough to validate it, so a
/// huge returned table costs no more than a small one.
fn entries(table: &Table, limit: usize) -> Result<Vec<(Value, Value)>, String> {
    let mut entries = Vec::with_capacity(limit.min(4));
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
