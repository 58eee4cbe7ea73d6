//! The results: one section per workload, written as results.json and as
//! the Markdown tables that docs/benchmarks.md embeds.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::brokers::{display_name, SystemInfo};
use crate::machine::Machine;
use crate::measure::{Plan, Stat};
use crate::targets::TargetCheck;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Unit {
    #[serde(rename = "msg/s")]
    MsgPerSec,
    #[serde(rename = "ms")]
    Millis,
    #[serde(rename = "µs")]
    Micros,
    #[serde(rename = "MB")]
    Megabytes,
    #[serde(rename = "s")]
    Seconds,
    #[serde(rename = "%")]
    Percent,
    #[serde(rename = "count")]
    Count,
}

impl Unit {
    pub fn format(self, value: f64) -> String {
        if !value.is_finite() {
            return "n/a".into();
        }
        match self {
            Unit::MsgPerSec | Unit::Count => thousands(value.round() as u64),
            Unit::Millis => format!("{value:.3}"),
            Unit::Micros | Unit::Megabytes | Unit::Percent => format!("{value:.1}"),
            Unit::Seconds => format!("{value:.2}"),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Unit::MsgPerSec => "msg/s",
            Unit::Millis => "ms",
            Unit::Micros => "µs",
            Unit::Megabytes => "MB",
            Unit::Seconds => "s",
            Unit::Percent => "%",
            Unit::Count => "count",
        }
    }
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub case: String,
    pub metric: String,
    pub unit: Unit,
    /// By column id.
    pub values: BTreeMap<String, Stat>,
}

/// One workload's results. With several columns (systems side by side, or
/// variants of Fila), the Markdown table adds the ratio of the first column
/// to each other one.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub id: String,
    pub title: String,
    /// How it was measured, in a sentence or two of Markdown.
    pub method: String,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

impl Section {
    pub fn new(id: &str, title: &str) -> Self {
        Section {
            id: id.into(),
            title: title.into(),
            method: String::new(),
            columns: vec!["fila".into()],
            rows: vec![],
        }
    }

    fn position(&self, case: &str, metric: &str) -> Option<usize> {
        self.rows.iter().position(|r| r.case == case && r.metric == metric)
    }

    pub fn add(&mut self, case: &str, metric: &str, unit: Unit, column: &str, stat: Stat) {
        let index = self.position(case, metric).unwrap_or_else(|| {
            self.rows.push(Row { case: case.into(), metric: metric.into(), unit, values: BTreeMap::new() });
            self.rows.len() - 1
        });
        self.rows[index].values.insert(column.into(), stat);
    }

    pub fn value(&self, case: &str, metric: &str, column: &str) -> Option<f64> {
        self.rows[self.position(case, metric)?].values.get(column).map(|s| s.median)
    }

    fn markdown(&self, out: &mut String) {
        let _ = writeln!(out, "### {}\n", self.title);
        if !self.method.is_empty() {
            let _ = writeln!(out, "{}\n", self.method);
        }
        if self.rows.is_empty() {
            let _ = writeln!(out, "(no results)\n");
            return;
        }
        let names: Vec<&str> = self.columns.iter().map(|c| display_name(c)).collect();
        let mut header = vec!["case", "metric"];
        header.extend(names.iter().copied());
        // The first column against each of the others.
        let (first_name, other_names) = names.split_first().expect("a section has a column");
        let ratios: Vec<String> = other_names.iter().map(|other| format!("{first_name} / {other}")).collect();
        header.extend(ratios.iter().map(String::as_str));
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let align: Vec<&str> = header.iter().enumerate().map(|(i, _)| if i < 2 { "---" } else { "---:" }).collect();
        let _ = writeln!(out, "| {} |", align.join(" | "));
        for row in &self.rows {
            let mut cells = vec![row.case.clone(), format!("{} ({})", row.metric, row.unit.label())];
            let value = |column: &String| row.values.get(column).map(|s| s.median);
            cells.extend(self.columns.iter().map(|c| value(c).map_or("–".into(), |v| row.unit.format(v))));
            let (first, others) = self.columns.split_first().expect("a section has a column");
            let first = value(first);
            for other in others {
                cells.push(match (first, value(other)) {
                    (Some(a), Some(b)) if b > 0.0 && row.unit != Unit::Percent => format!("{:.2}×", a / b),
                    _ => "–".into(),
                });
            }
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out.push('\n');
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub command: String,
    pub started_unix: u64,
    pub duration_s: f64,
    pub machine: Machine,
    pub plan: Plan,
    pub systems: Vec<SystemInfo>,
    pub sections: Vec<Section>,
    pub targets: Vec<TargetCheck>,
    pub failures: Vec<String>,
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "A {} run. Machine: {} cores ({}), {:.0} GiB memory, {}, Linux {}; load average {} when the run started; \
             a fixed slice of arithmetic timed {} times on an idle core took p50 {:.2} µs and p99 {:.2} µs, {:.1} % \
             of slices over 1.5 times the median (the machine's own jitter); \
             brokers and load generator on the same machine, over loopback. Command: `{}`. Each figure is the \
             median of {} windows of {:.2} s after {:.2} s of warm-up (results.json has every run).\n",
            self.mode,
            m.cores,
            m.cpu,
            m.memory_gib,
            m.os,
            m.kernel,
            m.load_average,
            m.jitter.slices,
            m.jitter.p50_us,
            m.jitter.p99_us,
            m.jitter.slow_percent,
            self.command,
            self.plan.runs,
            self.plan.window.as_secs_f64(),
            self.plan.warmup.as_secs_f64(),
        );
        if self.mode == "quick" {
            out.push_str(
                "Quick mode: a smoke test; its figures come from windows too short to compare, and targets \
                          are not checked.\n\n",
            );
        } else if !self.targets.is_empty() {
            out.push_str("### Targets\n\n| target | measured | verdict |\n| --- | ---: | --- |\n");
            for t in &self.targets {
                let _ = writeln!(out, "| {} | {} | {} |", t.target, t.measured, t.verdict());
            }
            out.push('\n');
        }
        for section in &self.sections {
            section.markdown(&mut out);
        }
        out.push_str("### Systems\n\n");
        for system in &self.systems {
            let _ = writeln!(out, "- **{}** {}", system.name, system.version);
            for setting in &system.settings {
                let _ = writeln!(out, "  - {setting}");
            }
        }
        if !self.failures.is_empty() {
            out.push_str("\n### Failures\n\n");
            for failure in &self.failures {
                let _ = writeln!(out, "- {}", failure.replace('\n', " "));
            }
        }
        out
    }
}
