//! The shared test harness (crate `fila-testkit`): `TestServer` runs the real
//! `fila-server` binary; `next_delivery` and `assert_no_delivery` wait on
//! lease streams, `wait_until` on any condition.

pub use fila_testkit::*;
