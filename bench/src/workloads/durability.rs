//! Workloads 8 and 9: Fila against itself with one server setting changed:
//! fsync per group commit (`--sync-writes`), and telemetry off.

use anyhow::Result;

use crate::brokers::fila::FilaSystem;
use crate::brokers::System;
use crate::report::{Section, Unit};
use crate::suite::{size_label, Suite};

use super::enqueue::enqueue_case;
use super::lifecycle::lifecycle_case;
use super::{batching_label, record};

pub async fn durability(suite: &mut Suite, section: &mut Section) -> Result<()> {
    section.method = "Enqueue and lifecycle cases of 1 and 2 with the default (every answered enqueue is in the \
         write-ahead log, which survives a crash of the process) and with --sync-writes (fsync per group commit: \
         survives power loss)."
        .into();
    let binary = suite.fila_binary.clone();
    let variants = [
        ("default", FilaSystem::new(binary.clone())),
        ("--sync-writes", FilaSystem::new(binary).with_args(&["--sync-writes"])),
    ];
    compare(suite, section, variants).await
}

pub async fn telemetry(suite: &mut Suite, section: &mut Section) -> Result<()> {
    section.method = "Enqueue and lifecycle cases of 1 and 2 with telemetry on (the default: metrics recorded, \
         Prometheus endpoint served; nobody scrapes it during the run) and off (--metrics-listen off)."
        .into();
    let binary = suite.fila_binary.clone();
    let variants = [
        ("telemetry on", FilaSystem::new(binary.clone())),
        ("telemetry off", FilaSystem::new(binary).without_telemetry()),
    ];
    compare(suite, section, variants).await
}

/// Runs the same cases on each variant, alternating variants case by case
/// so that a change in the machine's load affects both alike.
async fn compare<const N: usize>(
    suite: &mut Suite,
    section: &mut Section,
    mut variants: [(&str, FilaSystem); N],
) -> Result<()> {
    let scale = suite.scale.clone();
    section.columns = variants.iter().map(|(label, _)| label.to_string()).collect();
    let several = scale.producers;
    for (producers, batch) in [(several, scale.batch), (1, 1)] {
        let case = format!("enqueue · {} · {producers} producer(s) · {}", size_label(64), batching_label(batch));
        for (label, system) in variants.iter_mut() {
            let result = enqueue_case(system as &mut dyn System, &scale.plan, producers, batch, 64).await;
            record(section, &mut suite.failures, &case, "throughput", Unit::MsgPerSec, label, result);
        }
    }
    let case = format!("lifecycle · {}", batching_label(scale.batch));
    for (label, system) in variants.iter_mut() {
        let result = lifecycle_case(system, &scale, scale.batch).await;
        record(section, &mut suite.failures, &case, "throughput", Unit::MsgPerSec, label, result);
    }
    Ok(())
}
