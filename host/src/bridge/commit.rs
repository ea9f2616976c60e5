//! Group commit: the messages of every local connection that arrive while one commit is being
//! written go into the next commit together, so one durable write acknowledges many publishes.
//! Each batch's sender learns when its messages are stored (then the local publisher gets its
//! PUBACK) or that they are not (then its connection closes unacknowledged and it sends again).
//! The same thread expires messages past the queue's age limit.

use super::log_once::LogOnce;
use super::metrics::Metrics;
use super::queue::{DeadLetter, Dropped, Queue};
use crate::model::Message;
use std::collections::BTreeSet;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The most batches one commit takes.
const MAX_GROUP: usize = 4096;
/// How often messages past the age limit are dropped.
const EXPIRE_EVERY: Duration = Duration::from_secs(10);

/// What one local publish leaves to be stored.
pub struct Batch {
    /// Messages for devices' upstream sessions.
    pub messages: Vec<(String, Message)>,
    pub dead_letters: Vec<DeadLetter>,
    /// Told when the batch is stored (`Ok`) or could not be (`Err`: why).
    pub done: Option<oneshot::Sender<Result<(), String>>>,
}

/// The handle connections submit batches through.
#[derive(Clone)]
pub struct Committer {
    tx: Sender<Batch>,
}

/// Called with every device that got messages in a commit.
pub type OnStored = Box<dyn Fn(&str) + Send>;

impl Committer {
    /// Start the commit thread. It stops when every [`Committer`] is dropped.
    pub fn start(
        queue: Arc<Queue>,
        metrics: Arc<Metrics>,
        log: Arc<LogOnce>,
        on_stored: OnStored,
    ) -> (Committer, JoinHandle<()>) {
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new()
            .name("queue-commit".into())
            .spawn(move || run(&queue, &metrics, &log, &on_stored, &rx))
            .expect("the commit thread starts");
        (Committer { tx }, thread)
    }

    /// Queue `batch` for the next commit; `Err` when the commit thread has stopped.
    pub fn submit(&self, batch: Batch) -> Result<(), String> {
        self.tx
            .send(batch)
            .map_err(|_| "the queue is closed (gatehost is stopping)".to_string())
    }
}

fn run(
    queue: &Queue,
    metrics: &Metrics,
    log: &LogOnce,
    on_stored: &OnStored,
    rx: &Receiver<Batch>,
) {
    let mut last_expiry = Instant::now();
    loop {
        let first = match rx.recv_timeout(EXPIRE_EVERY) {
            Ok(b) => Some(b),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if last_expiry.elapsed() >= EXPIRE_EVERY {
            last_expiry = Instant::now();
            match queue.expire() {
                Ok(dropped) => count_drops(metrics, log, &dropped),
                Err(e) => {
                    log.warn("queue expiry", &format!("cannot expire old messages: {e}"));
                }
            }
        }
        let Some(first) = first else { continue };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(b) => group.push(b),
                Err(_) => break,
            }
        }
        let mut messages = Vec::new();
        let mut dead = Vec::new();
        let mut waiting = Vec::with_capacity(group.len());
        for batch in group {
            messages.extend(batch.messages);
            dead.extend(batch.dead_letters);
            waiting.extend(batch.done);
        }
        match queue.append(&messages, &dead) {
            Ok(dropped) => {
                for w in waiting {
                    let _ = w.send(Ok(()));
                }
                let mut devices = BTreeSet::new();
                for (device, _) in &messages {
                    if devices.insert(device.as_str()) {
                        metrics.queued.add(
                            &[device],
                            messages.iter().filter(|(d, _)| d == device).count() as u64,
                        );
                    }
                }
                count_drops(metrics, log, &dropped);
                for device in devices {
                    on_stored(device);
                }
            }
            Err(e) => {
                let why = format!("the message could not be stored: {e}");
                log.warn("queue append", &why);
                for w in waiting {
                    let _ = w.send(Err(why.clone()));
                }
            }
        }
    }
}

fn count_drops(metrics: &Metrics, log: &LogOnce, dropped: &Dropped) {
    for ((device, cause), n) in &dropped.0 {
        metrics.dropped.add(&[device, cause], *n);
        log.warn(
            &format!("queue drop {device} {cause}"),
            &format!(
                "dropped {n} queued message(s) of '{device}': {cause} (see [store] in the config)"
            ),
        );
    }
}
