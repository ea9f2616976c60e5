//! The embedded broker's retained messages across restarts: loaded at start from
//! `<state_dir>/retained.jsonl`, saved when they changed every [`SAVE_EVERY`] and at stop (as
//! mosquitto's autosave does: a crash loses at most the last interval's changes).

use super::log_once::LogOnce;
use crate::mqtt_server::MqttServer;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const FILE: &str = "retained.jsonl";
/// How often changed retained messages are written.
const SAVE_EVERY: Duration = Duration::from_secs(60);

pub struct RetainedFile {
    server: Arc<MqttServer>,
    path: PathBuf,
}

impl RetainedFile {
    /// Retain what `path` holds (a file that cannot be read is logged; the broker starts
    /// without it), and save changes every minute on the current tokio runtime.
    pub fn start(server: Arc<MqttServer>, path: PathBuf, log: Arc<LogOnce>) -> RetainedFile {
        match server.load_retained(&path) {
            Ok((kept, skipped)) => {
                if kept > 0 {
                    tracing::info!(file = %path.display(), "{kept} retained message(s) restored");
                }
                for why in skipped {
                    tracing::warn!("a saved retained message was not restored: {why}");
                }
            }
            Err(e) => tracing::warn!(
                "cannot read the retained messages in {}: {e}; starting without them",
                path.display()
            ),
        }
        let file = RetainedFile { server, path };
        let (server, path) = (file.server.clone(), file.path.clone());
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
        file
    }

    /// Save what changed since the last save (at stop).
    pub fn save(&self) {
        if let Err(e) = self.server.save_retained(&self.path) {
            tracing::warn!(
                "cannot save the retained messages to {}: {e}; changes since the last save are lost",
                self.path.display()
            );
        }
    }
}
