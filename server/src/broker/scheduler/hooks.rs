//! Calling a queue's Lua hooks from the scheduler, and what happens when a
//! hook fails: the message always goes on, with safe defaults.

use std::sync::Arc;
use std::time::Instant;

use super::{PreparedMessage, Scheduler};
use crate::broker::failure_policy::FailureAction;
use crate::broker::observer::ScriptOutcome;
use crate::domain::message::{MessageRecord, DEFAULT_FAIRNESS_KEY};
use crate::domain::record_view::{self, RecordView};
use crate::domain::{Lane, QueueId, ScriptError, ThrottleSet};
use crate::scripting::{EnqueueDecision, FailureDecision, ScriptHeaders, ScriptHook, ScriptMessage};
use crate::storage::Store;

impl<S: Store> Scheduler<S> {
    /// Runs the queue's `on_enqueue` hook, if it has one, and applies its
    /// decision to the message. If the hook fails (or its breaker is open)
    /// the documented safe defaults apply: the default fairness key, no
    /// weight, no throttle keys.
    ///
    /// The record is read in place and rewritten only in its placement (see
    /// [`RecordView`]), not decoded and encoded again.
    pub(super) fn apply_on_enqueue(&mut self, queue_id: QueueId, mut message: PreparedMessage) -> PreparedMessage {
        let Scheduler { queues, config, observer, .. } = self;
        let Some(queue) = queues.get_mut(&queue_id) else { return message };
        let Some(scripts) = queue.scripts.as_mut().filter(|s| s.has(ScriptHook::OnEnqueue)) else { return message };
        let Some(view) = RecordView::parse(&message.record) else { return message };
        let msg = ScriptMessage {
            queue: &queue.def.name,
            headers: ScriptHeaders::Pairs(&view.headers),
            payload: view.payload,
        };
        let started = Instant::now();
        let result = scripts.on_enqueue(&msg, config);
        observer.script_call(&queue.def.name, ScriptHook::OnEnqueue, started.elapsed(), ScriptOutcome::of(&result));
        let decision = match result {
            Ok(decision) if decision == EnqueueDecision::default() => return message,
            Ok(decision) => decision,
            Err(error) => {
                log_failure(&queue.def.name, &error);
                EnqueueDecision {
                    fairness_key: Some(DEFAULT_FAIRNESS_KEY.to_owned()),
                    weight: None,
                    throttle_keys: Some(Vec::new()),
                }
            }
        };
        let fairness_key = decision.fairness_key.as_deref().unwrap_or(view.fairness_key);
        let weight = decision.weight.unwrap_or(view.weight);
        let throttle_keys = match &decision.throttle_keys {
            Some(keys) => keys.iter().map(String::as_str).collect(),
            None => view.throttle_keys.clone(),
        };
        let Some(record) = record_view::with_placement(&message.record, fairness_key, weight, &throttle_keys) else {
            return message;
        };
        message.lane = Lane::new(Arc::from(fairness_key), ThrottleSet::new(&throttle_keys));
        message.weight = weight;
        message.record = record;
        message
    }

    /// Asks the queue's `on_failure` hook what to do after a failed attempt;
    /// `None` (no hook, it returned nil, or it failed) means the default
    /// policy decides.
    pub(super) fn ask_on_failure(&mut self, queue_id: QueueId, record: &MessageRecord) -> Option<FailureAction> {
        let Scheduler { queues, config, observer, .. } = self;
        let queue = queues.get_mut(&queue_id)?;
        let scripts = queue.scripts.as_mut().filter(|s| s.has(ScriptHook::OnFailure))?;
        let msg = ScriptMessage {
            queue: &queue.def.name,
            headers: ScriptHeaders::Map(&record.headers),
            payload: &record.payload,
        };
        let started = Instant::now();
        let result = scripts.on_failure(&msg, record.failures, &record.last_error, config);
        observer.script_call(&queue.def.name, ScriptHook::OnFailure, started.elapsed(), ScriptOutcome::of(&result));
        match result {
            Ok(Some(FailureDecision::Retry { delay })) => Some(FailureAction::Retry { delay }),
            Ok(Some(FailureDecision::DeadLetter)) => Some(FailureAction::DeadLetter),
            Ok(None) => None,
            Err(error) => {
                log_failure(&queue.def.name, &error);
                None
            }
        }
    }
}

/// Every failure is counted by the hook's breaker; each is logged too,
/// except calls skipped while the breaker is open (that would log every
/// message).
fn log_failure(queue: &str, error: &ScriptError) {
    if !matches!(error, ScriptError::BreakerOpen { .. }) {
        tracing::warn!(queue, %error, "queue script failed; safe defaults apply to this message");
    }
}
