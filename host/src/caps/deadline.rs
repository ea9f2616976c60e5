//! The deadline of the plugin call running on this thread, for the host calls it makes. The
//! engines stop a plugin's own code at its deadline (Rhai's progress callback, WASM's epoch),
//! but a host call — a sleep, an HTTP request, an MQTT wait — ran on its own timeout: a rule
//! with a 1 s limit slept for 4.7 s. Each engine starts a [`CallDeadline`] for every call, and
//! every wait in a capability is cut to what is left of it ([`bound`]); a wait cut short ends
//! with the same timeout error the engine gives.

use crate::model::{ErrorKind, PluginError};
use std::cell::Cell;
use std::time::{Duration, Instant};

thread_local! {
    /// When the running call must end, and its limit (for the message).
    static CALL: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
    /// When the running call will next try to give up its runtime worker.
    static STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The deadline of one plugin call on this thread, from now to `limit`; the previous one (a
/// nested call) comes back when it is dropped.
pub(crate) struct CallDeadline {
    previous: Option<(Instant, Duration)>,
    started: Option<Instant>,
}

impl CallDeadline {
    pub fn start(limit: Duration) -> CallDeadline {
        let now = Instant::now();
        let previous = CALL.replace(Some((now + limit, limit)));
        let started = STARTED.replace(Some(now + HAND_OFF_AFTER));
        CallDeadline { previous, started }
    }
}

impl Drop for CallDeadline {
    fn drop(&mut self) {
        CALL.set(self.previous);
        STARTED.set(self.started);
    }
}

/// A call that computes this long on a runtime worker gives the worker up.
pub(crate) const HAND_OFF_AFTER: Duration = Duration::from_millis(20);

/// Called by the engines while a plugin's own code runs (Rhai's progress callback, WASM's epoch
/// callback): once the call has run [`HAND_OFF_AFTER`], and every [`HAND_OFF_AFTER`] after, it
/// gives up the runtime worker it runs on (if it does), so that a CPU-heavy call holds up
/// nobody else: a short `block_in_place` sends the worker's core to another thread, which takes
/// it while this one pauses (1 ms), and the call goes on without it. When that thread was too
/// slow to start (the first time, on a loaded machine), the core comes back and the next try
/// follows. On a thread without a core a try is just the pause: 5 % of a long call.
pub(crate) fn long_call() {
    let Some(next) = STARTED.get() else {
        return;
    };
    let now = Instant::now();
    if now < next {
        return;
    }
    STARTED.set(Some(now + HAND_OFF_AFTER));
    blocking(|| std::thread::sleep(Duration::from_millis(1)));
}

/// What is left of the running call's deadline (`None`: no call is running).
pub fn remaining() -> Option<Duration> {
    CALL.get()
        .map(|(end, _)| end.saturating_duration_since(Instant::now()))
}

/// Run `wait`, a host call that blocks (a sleep, a request, a receive), so that it does not hold
/// a runtime worker: on one (a rule called by the embedded broker), tokio first hands the
/// worker's other connections to another thread. Elsewhere it just runs.
pub fn blocking<T>(wait: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// `wait`, or what is left of the running call's deadline if that is less.
pub fn bound(wait: Duration) -> Duration {
    match CALL.get() {
        Some((end, _)) => wait.min(end.saturating_duration_since(Instant::now())),
        None => wait,
    }
}

/// The error of a call whose deadline passed during a host call, if it did.
pub fn passed(during: &str) -> Option<PluginError> {
    let (end, limit) = CALL.get()?;
    (Instant::now() >= end).then(|| {
        PluginError::new(
            ErrorKind::Timeout,
            format!(
                "did not finish within {} ms and was stopped (during {during})",
                limit.as_millis()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_cut_to_the_call_and_nested_calls_restore_it() {
        assert_eq!(bound(Duration::from_secs(5)), Duration::from_secs(5));
        let outer = CallDeadline::start(Duration::from_millis(50));
        assert!(bound(Duration::from_secs(5)) <= Duration::from_millis(50));
        {
            let _inner = CallDeadline::start(Duration::from_secs(0));
            assert_eq!(bound(Duration::from_secs(5)), Duration::ZERO);
            assert!(passed("a test").is_some());
        }
        assert!(bound(Duration::from_secs(5)) > Duration::ZERO);
        std::thread::sleep(Duration::from_millis(60));
        let e = passed("time::sleep_ms").unwrap();
        assert_eq!(
            e.message,
            "did not finish within 50 ms and was stopped (during time::sleep_ms)"
        );
        drop(outer);
        assert!(passed("x").is_none());
    }
}
