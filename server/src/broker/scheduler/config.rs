//! Runtime configuration commands.

use std::ops::Bound;

use super::{Round, Scheduler};
use crate::broker::ConfigPage;
use crate::domain::{BrokerError, ConfigError};
use crate::storage::{Change, Store};

impl<S: Store> Scheduler<S> {
    pub(super) fn set_config(&mut self, key: String, value: String, round: &mut Round) {
        round.changes.push(Change::PutConfig { key: key.clone(), value: value.clone() });
        round.changes.needs_sync = true;
        self.config.insert(key, value);
    }

    pub(super) fn get_config(&self, key: String) -> Result<String, BrokerError> {
        self.config.get(&key).cloned().ok_or_else(|| ConfigError::NotFound(key).into())
    }

    pub(super) fn list_config(&self, prefix: &str, after: Option<String>, limit: usize) -> ConfigPage {
        let start = match after {
            Some(after) if after.as_str() >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix.to_owned()),
        };
        let mut entries: Vec<(String, String)> = self
            .config
            .range::<String, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit + 1)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let more = entries.len() > limit;
        entries.truncate(limit);
        let next_after = if more { entries.last().map(|(k, _)| k.clone()) } else { None };
        ConfigPage { entries, next_after }
    }

    pub(super) fn delete_config(&mut self, key: String, round: &mut Round) -> Result<(), BrokerError> {
        if self.config.remove(&key).is_none() {
            return Err(ConfigError::NotFound(key).into());
        }
        round.changes.push(Change::DeleteConfig { key });
        round.changes.needs_sync = true;
        Ok(())
    }
}
