//! Logging once per cause: the first occurrence of a problem (a rule failing, an unknown
//! device, a malformed packet) is logged in full; repeats are counted and summarised at most
//! once a minute, so a device publishing garbage 1000 times a second does not flood the log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SUMMARY_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(crate) struct LogOnce {
    seen: Mutex<HashMap<String, Seen>>,
}

struct Seen {
    last_logged: Instant,
    repeats: u64,
}

impl LogOnce {
    /// Log `message` as a warning if `cause` was not logged in the last minute; otherwise count
    /// it. Returns whether it was logged.
    pub fn warn(&self, cause: &str, message: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match seen.get_mut(cause) {
            None => {
                seen.insert(
                    cause.to_string(),
                    Seen {
                        last_logged: now,
                        repeats: 0,
                    },
                );
                tracing::warn!(cause, "{message}");
                true
            }
            Some(s) if now.duration_since(s.last_logged) >= SUMMARY_EVERY => {
                let repeats = std::mem::take(&mut s.repeats);
                s.last_logged = now;
                tracing::warn!(
                    cause,
                    repeats,
                    "{message} ({repeats} more times since the last report)"
                );
                true
            }
            Some(s) => {
                s.repeats += 1;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_is_logged_once_then_counted() {
        let log = super::LogOnce::default();
        assert!(log.warn("rule r: boom", "rule r failed"));
        assert!(!log.warn("rule r: boom", "rule r failed"));
        assert!(log.warn("rule s: boom", "rule s failed"));
    }
}
