//! Group commit in two stages. The commit thread writes the batches of every local connection
//! that arrived meanwhile to the queue in one write and wakes their devices' workers at once;
//! the sync thread makes whatever was written since its last sync durable in one `fdatasync`
//! and only then tells each batch's sender (then the local publisher gets its PUBACK), or tells
//! it the batch could not be stored (then its connection closes unacknowledged and the publisher
//! sends again). Forwarding thus never waits for the disk, and while one sync runs the next
//! writes pile up for the next one. Syncs are paced ([`SyncPacing`]): a sync waits until
//! `interval` after the previous one started unless `enough` publishes already wait for it, so a
//! steady trickle of messages does not turn into one sync (three disk writes) per message. The
//! commit thread also expires messages past the queue's age limit.

use super::log_once::LogOnce;
use super::metrics::Metrics;
use super::queue::{DeadLetter, Dropped, Queue, Staged};
use crate::model::Message;
use std::collections::BTreeMap;
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
pub(crate) struct Batch {
    /// Messages for devices' upstream sessions.
    pub messages: Vec<(String, Message)>,
    pub dead_letters: Vec<DeadLetter>,
    /// Told when the batch is stored (`Ok`) or could not be (`Err`: why).
    pub done: Option<oneshot::Sender<Result<(), String>>>,
}

/// When the sync thread makes written messages durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SyncPacing {
    /// Least time from the start of one sync to the start of the next (zero: sync as soon as
    /// anything is written).
    pub interval: Duration,
    /// A sync starts at once, whatever the interval, when this many publishes wait for it.
    pub enough: usize,
}

impl SyncPacing {
    /// The pacing `[store]` sets (`sync_interval_ms`, `sync_batch`), the defaults for the rest.
    pub(crate) fn from_config(store: &crate::config::StoreConfig) -> SyncPacing {
        let default = SyncPacing::default();
        SyncPacing {
            interval: store
                .sync_interval_ms
                .map_or(default.interval, std::time::Duration::from_millis),
            enough: store.sync_batch.unwrap_or(default.enough),
        }
    }
}

impl Default for SyncPacing {
    /// 2 ms and 32 publishes: at 5 000 msg/s a sync covers ~10 messages instead of 1-2 (the
    /// tail latency of the whole machine falls with the disk writes); under full load the
    /// publishers' unacknowledged messages reach 32 sooner and are not held back.
    fn default() -> Self {
        SyncPacing {
            interval: Duration::from_millis(2),
            enough: 32,
        }
    }
}

/// The handle connections submit batches through.
#[derive(Clone)]
pub(crate) struct Committer {
    tx: Sender<Batch>,
}

/// Called with every device that got messages in a commit, as soon as they can be read
/// (before they are synced).
pub(crate) type OnWritten = Box<dyn Fn(&str) + Send>;

impl Committer {
    /// Start the commit thread. It stops when every [`Committer`] is dropped.
    pub fn start(
        queue: Arc<Queue>,
        pacing: SyncPacing,
        metrics: Arc<Metrics>,
        log: Arc<LogOnce>,
        on_written: OnWritten,
    ) -> (Committer, JoinHandle<()>) {
        let (tx, rx) = channel();
        let (to_sync, written) = channel();
        let sync_metrics = metrics.clone();
        let sync_log = log.clone();
        let sync_thread = std::thread::Builder::new()
            .name("queue-sync".into())
            .spawn(move || sync_written(pacing, &sync_metrics, &sync_log, &written))
            .expect("the sync thread starts");
        let thread = std::thread::Builder::new()
            .name("queue-commit".into())
            .spawn(move || {
                run(&queue, &metrics, &log, &on_written, &rx, &to_sync);
                // What was written is synced and acknowledged before the thread ends.
                drop(to_sync);
                let _ = sync_thread.join();
            })
            .expect("the commit thread starts");
        (Committer { tx }, thread)
    }

    /// Queue `batch` for the next commit; `Err` when the commit thread has stopped.
    pub(crate) fn submit(&self, batch: Batch) -> Result<(), String> {
        self.tx
            .send(batch)
            .map_err(|_| "the queue is closed (gatehost is stopping)".to_string())
    }
}

fn run(
    queue: &Queue,
    metrics: &Metrics,
    log: &LogOnce,
    on_written: &OnWritten,
    rx: &Receiver<Batch>,
    to_sync: &Sender<Written>,
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
        match queue.stage(&messages, &dead) {
            Ok(staged) => {
                let mut per_device: BTreeMap<&str, u64> = BTreeMap::new();
                for (device, _) in &messages {
                    *per_device.entry(device.as_str()).or_default() += 1;
                }
                for (device, n) in per_device {
                    metrics.queued.add(&[device], n);
                    on_written(device);
                }
                if let Err(unsynced) = to_sync.send(Written { staged, waiting }) {
                    refuse(
                        unsynced.0.waiting,
                        "the queue is closed (gatehost is stopping)",
                    );
                }
            }
            Err(e) => {
                let why = format!("the message could not be stored: {e}");
                log.warn("queue append", &why);
                refuse(waiting, &why);
            }
        }
    }
}

/// Appends written and indexed, waiting for their sync, and who waits for them.
struct Written {
    staged: Staged,
    waiting: Vec<Waiter>,
}

type Waiter = oneshot::Sender<Result<(), String>>;

fn refuse(waiting: Vec<Waiter>, why: &str) {
    for w in waiting {
        let _ = w.send(Err(why.to_string()));
    }
}

/// The sync thread: sync what was written meanwhile (one sync for any number of appends),
/// then tell their senders. Runs while the commit thread writes the next appends.
fn sync_written(pacing: SyncPacing, metrics: &Metrics, log: &LogOnce, rx: &Receiver<Written>) {
    let mut last_start: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        if let Some(last) = last_start {
            gather_until_due(&mut group, rx, last + pacing.interval, pacing.enough);
        }
        last_start = Some(Instant::now());
        let (staged, waiting): (Vec<_>, Vec<_>) =
            group.into_iter().map(|w| (w.staged, w.waiting)).unzip();
        for (result, waiting) in Staged::sync_all(staged).into_iter().zip(waiting) {
            match result {
                Ok(dropped) => {
                    for w in waiting {
                        let _ = w.send(Ok(()));
                    }
                    count_drops(metrics, log, &dropped);
                }
                Err(e) => {
                    let why = format!("the message could not be stored: {e}");
                    log.warn("queue sync", &why);
                    refuse(waiting, &why);
                }
            }
        }
    }
}

/// Add what arrives to `group` until `due`, or until `enough` publishes wait, or the commit
/// thread stops.
fn gather_until_due(group: &mut Vec<Written>, rx: &Receiver<Written>, due: Instant, enough: usize) {
    let mut waiting: usize = group.iter().map(|w| w.waiting.len()).sum();
    while waiting < enough {
        let Some(left) = due.checked_duration_since(Instant::now()) else {
            return;
        };
        match rx.recv_timeout(left) {
            Ok(written) => {
                waiting += written.waiting.len();
                group.push(written);
            }
            Err(_) => return,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::queue::QueueLimits;
    use std::sync::Mutex;

    fn batch(payload: Vec<u8>) -> (Batch, oneshot::Receiver<Result<(), String>>) {
        let (done, settled) = oneshot::channel();
        let batch = Batch {
            messages: vec![("d".into(), Message::new("t", payload, 1))],
            dead_letters: Vec::new(),
            done: Some(done),
        };
        (batch, settled)
    }

    /// Segments of 64 KiB, so a 70 KiB message fills one and the next append starts another.
    fn small_limits() -> QueueLimits {
        QueueLimits {
            max_bytes: 512 * 1024,
            ..QueueLimits::default()
        }
    }

    #[test]
    fn a_batch_wakes_its_device_and_is_acknowledged_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let queue = Arc::new(Queue::open(&path, small_limits()).unwrap());
        let woken = Arc::new(Mutex::new(Vec::new()));
        let seen = woken.clone();
        let (committer, thread) = Committer::start(
            queue.clone(),
            SyncPacing::default(),
            Arc::default(),
            Arc::default(),
            Box::new(move |device| seen.lock().unwrap().push(device.to_string())),
        );
        let (b, settled) = batch(b"hello".to_vec());
        committer.submit(b).unwrap();
        assert_eq!(settled.blocking_recv().unwrap(), Ok(()));
        assert_eq!(*woken.lock().unwrap(), ["d"]);
        drop(committer);
        thread.join().unwrap();
        drop(queue);
        let reopened = Queue::open(&path, small_limits()).unwrap();
        let queued = reopened.peek("d", 0, 10).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].message.payload, b"hello");
    }

    #[test]
    fn a_sync_waits_for_its_interval_unless_enough_publishes_wait() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(Queue::open(&dir.path().join("q"), small_limits()).unwrap());
        // An interval no test run reaches: only `enough` can start the second sync.
        let pacing = SyncPacing {
            interval: Duration::from_secs(3600),
            enough: 2,
        };
        let (committer, _thread) = Committer::start(
            queue,
            pacing,
            Arc::default(),
            Arc::default(),
            Box::new(|_| {}),
        );
        // The first sync has no predecessor to wait for.
        let (b, first) = batch(b"1".to_vec());
        committer.submit(b).unwrap();
        assert_eq!(first.blocking_recv().unwrap(), Ok(()));
        let (b, mut second) = batch(b"2".to_vec());
        committer.submit(b).unwrap();
        let (b, probe) = batch(b"probe".to_vec());
        // Held: one publish waits, the interval is far off. (The probe's own commit is only
        // submitted after this look, so the second batch cannot have been synced with it.)
        std::thread::sleep(Duration::from_millis(50));
        assert!(second.try_recv().is_err(), "synced before its interval");
        committer.submit(b).unwrap();
        // Two publishes wait: that is enough.
        assert_eq!(second.blocking_recv().unwrap(), Ok(()));
        assert_eq!(probe.blocking_recv().unwrap(), Ok(()));
    }

    #[test]
    fn a_batch_the_queue_cannot_write_is_refused_in_one_sentence_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let queue = Arc::new(Queue::open(&path, small_limits()).unwrap());
        let (committer, _thread) = Committer::start(
            queue,
            SyncPacing::default(),
            Arc::default(),
            Arc::default(),
            Box::new(|_| {}),
        );
        let (b, settled) = batch(vec![b'x'; 70 * 1024]);
        committer.submit(b).unwrap();
        assert_eq!(settled.blocking_recv().unwrap(), Ok(()));
        // The next append needs a new segment file, and its folder is gone.
        std::fs::remove_dir_all(&path).unwrap();
        let (b, settled) = batch(b"lost?".to_vec());
        committer.submit(b).unwrap();
        let why = settled.blocking_recv().unwrap().unwrap_err();
        assert!(
            why.starts_with("the message could not be stored: the queue file ")
                && why.contains(&path.join("00000002.log").display().to_string()),
            "{why}"
        );
    }
}
