//! What the embedded broker keeps across restarts: its retained messages, loaded at start from
//! `<state_dir>/retained.jsonl` and saved when they changed every [`SAVE_EVERY`] and at stop (as
//! mosquitto's autosave does: a crash loses at most the last interval's changes), and the
//! persistent sessions of absent clients, saved to `<state_dir>/sessions.jsonl` at stop (after
//! the connected clients were closed, so theirs are among them) and loaded at start.

use super::log_once::LogOnce;
use crate::mqtt::server::MqttServer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub(crate) const RETAINED_FILE: &str = "retained.jsonl";
pub(crate) const SESSIONS_FILE: &str = "sessions.jsonl";
/// How often changed retained messages are written.
const SAVE_EVERY: Duration = Duration::from_secs(60);
/// How long stopping waits for the connected clients' connections to end.
const CLOSE_WAIT: Duration = Duration::from_millis(500);

pub(crate) struct BrokerState {
    server: Arc<MqttServer>,
    retained: PathBuf,
    sessions: PathBuf,
}

impl BrokerState {
    /// Restore what `state_dir` holds (a file that cannot be read is logged; the broker starts
    /// without it), and save changed retained messages every minute on the current tokio
    /// runtime.
    pub fn start(server: Arc<MqttServer>, state_dir: &Path, log: Arc<LogOnce>) -> BrokerState {
        let state = BrokerState {
            server,
            retained: state_dir.join(RETAINED_FILE),
            sessions: state_dir.join(SESSIONS_FILE),
        };
        state.restore();
        let (server, path) = (state.server.clone(), state.retained.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAVE_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = server.save_retained(&path) {
                    log.warn(
                        "retained save",
                        &format!(
                            "cannot save the retained messages to {}: {e}",
                            path.display()
                        ),
                    );
                }
            }
        });
        state
    }

    fn restore(&self) {
        let retained = self.server.load_retained(&self.retained);
        report_restored(retained, &self.retained, "retained message(s)");
        let sessions = self.server.load_sessions(&self.sessions);
        report_restored(
            sessions,
            &self.sessions,
            "persistent session(s) of absent clients",
        );
    }

    /// Stopping, on the broker's runtime: close the connected clients' connections so their
    /// persistent sessions are kept.
    pub(crate) async fn close_clients(&self) {
        self.server.close_all(CLOSE_WAIT).await;
    }

    /// Save the retained messages that changed and the sessions kept (at stop).
    pub(crate) fn save(&self) {
        if let Err(e) = self.server.save_retained(&self.retained) {
            tracing::warn!(
                "cannot save the retained messages to {}: {e}; changes since the last save are lost",
                self.retained.display()
            );
        }
        match self.server.save_sessions(&self.sessions) {
            Ok((0, _)) => {}
            Ok((sessions, messages)) => tracing::info!(
                file = %self.sessions.display(),
                "{sessions} persistent session(s) of absent clients saved, {messages} message(s) waiting in them"
            ),
            Err(e) => tracing::warn!(
                "cannot save the persistent sessions to {}: {e}; absent clients start afresh after the restart",
                self.sessions.display()
            ),
        }
    }
}

/// Log what was restored from `path`, what was not and why, or why nothing could be.
fn report_restored(loaded: std::io::Result<(usize, Vec<String>)>, path: &Path, what: &str) {
    match loaded {
        Ok((kept, skipped)) => {
            if kept > 0 {
                tracing::info!(file = %path.display(), "{kept} {what} restored");
            }
            for why in skipped {
                tracing::warn!("not all saved {what} were restored: {why}");
            }
        }
        Err(e) => tracing::warn!(
            "cannot read the saved {what} in {}: {e}; starting without them",
            path.display()
        ),
    }
}
