//! Fila: a message broker in which fair scheduling and per-key throttling
//! are decided by the broker at dequeue time.
//!
//! Layers, from the inside out: `domain` (vocabulary and errors), `storage`
//! (RocksDB behind a trait), `broker` (the single-threaded scheduler),
//! `grpc` (thin transport adapters) and `server` (wiring); `telemetry`
//! turns what the broker reports into OpenTelemetry metrics and traces.

pub mod broker;
pub mod config;
pub mod domain;
mod fast_map;
pub mod grpc;
mod prefetch;
pub mod scripting;
pub mod server;
pub mod storage;
pub mod telemetry;

/// mimalloc instead of glibc's malloc, for the broker and everything built
/// on this crate (its tests and benches measure what the binary runs): with
/// many active keys the scheduler thread frees and allocates records, lane
/// state and leases all over its heap, and glibc's free lists made that
/// miss the cache (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's arenas are committed as they are used rather than up front:
/// committed up front, the first touches of every thread's pages fault in
/// huge pages and an idle broker's memory nearly doubles (44 MB against
/// 26 MB). The option must be set before the first allocation, which the
/// Rust runtime makes before `main`, hence a constructor.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static CONFIGURE_ALLOCATOR: extern "C" fn() = {
    extern "C" fn configure() {
        // `mi_option_arena_eager_commit` in mimalloc.h, which
        // libmimalloc-sys does not name.
        const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
        // SAFETY: sets a plain option value, read when mimalloc next
        // reserves an arena.
        unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) };
    }
    configure
};
