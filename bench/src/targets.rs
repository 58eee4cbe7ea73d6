//! The targets of issue #7, checked by the workloads that measure them
//! (full runs only: quick-mode windows are too short to mean anything).

use serde::Serialize;

use crate::report::Unit;
use crate::suite::Suite;

#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// `None`: the figure is missing (its case failed).
    pub met: Option<bool>,
}

impl TargetCheck {
    pub fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        }
    }
}

impl Suite {
    /// Records whether `measured` meets `target`.
    pub fn target(&mut self, target: &str, measured: Option<f64>, unit: Unit, met: impl Fn(f64) -> bool) {
        if self.scale.quick {
            return;
        }
        self.targets.push(TargetCheck {
            target: target.to_owned(),
            measured: measured.map_or("–".into(), |v| format!("{} {}", unit.format(v), unit.label())),
            met: measured.map(met),
        });
    }
}
