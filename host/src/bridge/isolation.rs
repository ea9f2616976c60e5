//! Where a plugin rule's call runs. Rules run on the task of the connection that published,
//! on one of the broker's two runtime workers. A call that blocks — a sleep loop, a CPU-heavy
//! script, a host call, up to its deadline — would hold every other client that worker serves,
//! and a WASM guest's blocking WASI call (a `println!`) panics on a worker ("Cannot start a
//! runtime from within a runtime").
//!
//! `tokio::task::block_in_place` avoids both (tokio hands the worker's other connections to
//! another thread first, and blocking code may enter the runtime), but it costs a thread
//! hand-off per call: ~9 µs of CPU per message with the WASM rule in the bridge benchmark,
//! half again the gatehost CPU of a message. So a rule runs inline while it is fast:
//!
//! - a host call that waits (sleep, HTTP, MQTT) runs that wait under `block_in_place` itself
//!   (`caps::deadline::blocking`), and a call that has computed for 20 ms gives its worker up
//!   (`caps::deadline::long_call`, from Rhai's progress and WASM's epoch callbacks): no call
//!   holds up other clients for long, not even a rule's first;
//! - a call that took longer than [`SLOW`] (20 ms: a machine under load preempts a fast call
//!   for a few ms now and then, which must not isolate it) isolates the rule for
//!   [`ISOLATED_FOR`]: its calls then run under `block_in_place` from the start;
//! - a call that panicked inline (blocking WASI code entering the runtime) is run again
//!   isolated, and the rule stays isolated. That expected panic is not printed.
//!
//! The template rule runs no plugin code and is always inline.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

/// A call slower than this isolates its rule.
pub(crate) const SLOW: Duration = Duration::from_millis(20);
/// For this long.
pub(crate) const ISOLATED_FOR: Duration = Duration::from_secs(60);

/// One rule's isolation: until when (ms since the Unix epoch; `u64::MAX`: for good).
#[derive(Debug, Default)]
pub struct Isolation {
    until_ms: AtomicU64,
}

thread_local! {
    /// Set while a plugin call runs inline on a runtime worker.
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Run the `call` of rule `name` with its `isolation` (see the module notes); without one it
/// runs inline.
pub fn run<T>(isolation: Option<&Isolation>, name: &str, call: impl Fn() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let Some(isolation) = isolation else {
        return call();
    };
    let on_worker =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if !on_worker {
        return call();
    }
    if isolation.until_ms.load(Ordering::Relaxed) > now_ms() {
        return tokio::task::block_in_place(call);
    }
    quiet_expected_panics();
    let started = Instant::now();
    INLINE.set(true);
    let inline = std::panic::catch_unwind(AssertUnwindSafe(&call));
    INLINE.set(false);
    match inline {
        Ok(result) => {
            if started.elapsed() > SLOW {
                let until = now_ms() + ISOLATED_FOR.as_millis() as u64;
                if isolation.until_ms.swap(until, Ordering::Relaxed) == 0 {
                    tracing::info!(
                        rule = %name,
                        "a call of rule '{}' took {} ms: its calls run off the broker's I/O threads for {} s",
                        name,
                        started.elapsed().as_millis(),
                        ISOLATED_FOR.as_secs()
                    );
                }
            }
            result
        }
        Err(_) => {
            isolation.until_ms.store(u64::MAX, Ordering::Relaxed);
            tracing::info!(
                rule = %name,
                "rule '{}' blocks in the runtime (a WASM guest's output, say): its calls run off the broker's I/O threads",
                name
            );
            tokio::task::block_in_place(call)
        }
    }
}

/// The panic of blocking code that enters the runtime from an inline call is expected and
/// handled (the call is run again isolated): not printed. Every other panic is.
fn quiet_expected_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if INLINE.get() && message.starts_with("Cannot start a runtime from within a runtime") {
                return;
            }
            previous(info)
        }));
    });
}
