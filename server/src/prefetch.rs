//! A hint to the processor to start loading memory that will be read soon,
//! for loops over many items whose state is scattered over the heap (a
//! checkpoint visits every changed lane, 100,000 with many active keys):
//! the loads of items ahead overlap the work on the current one instead of
//! each cache miss waiting in turn.

/// Cache line size of the processors this runs on.
const LINE: usize = 64;

/// Starts loading the cache lines holding `items`. Only a hint: it reads
/// nothing the program can see.
#[inline(always)]
pub(crate) fn prefetch<T>(items: &[T]) {
    let start = items.as_ptr().cast::<u8>();
    for offset in (0..std::mem::size_of_val(items)).step_by(LINE) {
        line(start.wrapping_add(offset));
    }
}

#[inline(always)]
fn line(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address, and reads
    // nothing the program can see; SSE is part of x86_64's baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}
