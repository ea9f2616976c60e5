//! Handing memory freed after start-up and reloads back to the operating system.
//!
//! Compiling WASM plugins (Cranelift, on several threads) and loading scripts allocate tens of
//! megabytes that are freed again once the plugins run; glibc keeps such memory in its
//! per-thread arenas, where it stays resident. After the bridge starts and after each reload,
//! [`release_freed`] asks the allocator to return it (measured: idle RSS with 10 rules 38.4 ->
//! 34.4 MiB, BENCHMARKS.md).

/// Return the allocator's free memory to the operating system (glibc on Linux; elsewhere
/// nothing to do). Takes a few milliseconds: call it after rare events, not per message.
pub(crate) fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases free memory of the allocator's own arenas; it takes
    // their locks and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
