//! The shared test harness (crate `fila-testkit`): `TestServer` runs the real
//! `fila-server` binary; `next_delivery`, `assert_no_delivery` and
//! `deliveries_until_idle` wait on lease streams, `stalled_reader` opens one
//! that never reads, `wait_until` waits on any condition.

pub use fila_testkit::*;
