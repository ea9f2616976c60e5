//! Retrying what talks to a cloud: exponential backoff with jitter (100 ms doubling to a 10 s
//! cap, as the Azure IoT SDKs do), an overall deadline, which failures deserve another attempt,
//! and the "at most one CONNECT per second per client id" gate every MQTT connect passes.

use crate::model::ErrorKind;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub(crate) const FIRST_DELAY: Duration = Duration::from_millis(100);
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(10);
/// The least time between two CONNECTs with the same client id to the same endpoint.
pub(crate) const CONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// Successive waits: 100 ms, 200 ms, 400 ms ... capped at 10 s, each plus up to 25 % jitter
/// (still capped), so gateways restarted together do not retry in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(FIRST_DELAY, MAX_DELAY)
    }
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff { next: first, cap }
    }

    /// The next wait.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next.min(self.cap);
        self.next = (base * 2).min(self.cap);
        let jitter = base.mul_f64(random_fraction() * 0.25);
        (base + jitter).min(self.cap)
    }
}

/// A number in [0, 1).
fn random_fraction() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

/// Whether a failure of this kind may go away by itself (a closed or reset connection, a
/// timeout, a throttled or failing service). Refusals, bad input and TLS failures do not.
pub(crate) fn is_transient(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Closed
            | ErrorKind::Io
            | ErrorKind::Timeout
            | ErrorKind::Remote
            | ErrorKind::LimitExceeded
    )
}

/// Wait until a CONNECT with `client_id` to `endpoint` keeps the one-per-second rule, and claim
/// that slot. Providers (AWS IoT explicitly) throttle or drop faster reconnects.
pub(crate) fn connect_gate(endpoint: &str, client_id: &str) {
    static LAST: OnceLock<Mutex<HashMap<(String, String), Instant>>> = OnceLock::new();
    let last = LAST.get_or_init(Default::default);
    let key = (endpoint.to_string(), client_id.to_string());
    let wait = {
        let mut map = last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let slot = match map.get(&key) {
            Some(previous) => (*previous + CONNECT_INTERVAL).max(now),
            None => now,
        };
        map.insert(key, slot);
        if map.len() > 10_000 {
            map.retain(|_, at| now.duration_since(*at) < CONNECT_INTERVAL);
        }
        slot.saturating_duration_since(now)
    };
    if !wait.is_zero() {
        tracing::debug!(
            endpoint,
            client_id,
            "waiting {} ms: at most one CONNECT per second per client id",
            wait.as_millis()
        );
        std::thread::sleep(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100_ms_to_a_10_s_cap_with_bounded_jitter() {
        let mut b = Backoff::default();
        let mut base = FIRST_DELAY;
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(
                d >= base && d <= (base + base / 4).min(MAX_DELAY),
                "{d:?} for {base:?}"
            );
            base = (base * 2).min(MAX_DELAY);
        }
        assert_eq!(base, MAX_DELAY);
    }

    #[test]
    fn transient_kinds_are_the_ones_that_can_heal() {
        assert!(is_transient(ErrorKind::Closed));
        assert!(is_transient(ErrorKind::LimitExceeded));
        assert!(!is_transient(ErrorKind::Refused));
        assert!(!is_transient(ErrorKind::InvalidInput));
        assert!(!is_transient(ErrorKind::Tls));
    }

    #[test]
    fn the_connect_gate_spaces_connects_of_one_client_id() {
        let start = Instant::now();
        connect_gate("gate-test:1", "c");
        connect_gate("gate-test:1", "other");
        assert!(start.elapsed() < CONNECT_INTERVAL);
        connect_gate("gate-test:1", "c");
        assert!(start.elapsed() >= CONNECT_INTERVAL);
    }
}
