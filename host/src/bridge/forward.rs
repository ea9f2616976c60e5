//! Forwarding: one worker thread per device drains the device's queue into its upstream
//! session ([`DeviceSession`]: onboarding, fresh credentials, reconnects), many messages in
//! flight at once, in queue order. Messages leave the queue only after the upstream
//! acknowledged them; a failed session is opened again after a growing pause, and a message
//! the upstream keeps refusing on its own is dead-lettered instead of blocking the device.

use super::chain::Current;
use super::log_once::LogOnce;
use super::metrics::{Metrics, Sample};
use super::queue::{now_ms, DeadLetter, Queue, Queued};
use crate::onboard;
use crate::plugins::registry::Registry;
use crate::retry::Backoff;
use crate::upstream::DeviceSession;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How many messages one batch puts in flight.
pub const BATCH: usize = 500;
/// How often an idle worker looks at its queue anyway.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How long stopping waits for the workers.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// A message that failed alone this many times (on sessions that connected) is dead-lettered.
const MAX_ATTEMPTS: u32 = 3;

/// A device worker's state, as `/metrics` shows it.
#[derive(Default)]
struct Status {
    connected: AtomicBool,
    /// Unix seconds when the current credentials expire (0 = never / unknown).
    expires_at: AtomicU64,
}

struct Worker {
    wake: SyncSender<()>,
    status: Arc<Status>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    queue: Arc<Queue>,
    current: Current,
    metrics: Arc<Metrics>,
    log: Arc<LogOnce>,
    stopping: AtomicBool,
}

/// The device workers.
pub struct Forwarders {
    shared: Arc<Shared>,
    workers: Mutex<HashMap<String, Worker>>,
}

impl Forwarders {
    pub fn new(
        queue: Arc<Queue>,
        current: Current,
        metrics: Arc<Metrics>,
        log: Arc<LogOnce>,
    ) -> Forwarders {
        Forwarders {
            shared: Arc::new(Shared {
                queue,
                current,
                metrics,
                log,
                stopping: AtomicBool::new(false),
            }),
            workers: Mutex::new(HashMap::new()),
        }
    }

    /// Tell `device`'s worker that messages are waiting; start it if it is not running.
    pub fn wake(&self, device: &str) {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(worker) = workers.get(device) {
            let _ = worker.wake.try_send(());
            return;
        }
        let (wake, woken) = sync_channel(1);
        let status = Arc::new(Status::default());
        let shared = self.shared.clone();
        let name = device.to_string();
        let worker_status = status.clone();
        let thread = std::thread::Builder::new()
            .name(format!("upstream-{device}"))
            .spawn(move || run(&shared, &name, &woken, &worker_status))
            .ok();
        if thread.is_none() {
            tracing::error!(device, "cannot start the device's upstream worker thread");
        }
        let _ = wake.try_send(());
        workers.insert(
            device.to_string(),
            Worker {
                wake,
                status,
                thread,
            },
        );
    }

    /// The devices listed in the running config.
    pub fn listed_devices(&self) -> Vec<String> {
        let running = self.shared.current.get();
        running
            .config
            .devices
            .iter()
            .map(|d| d.name.clone())
            .collect()
    }

    /// Upstream connection state and seconds to credential expiry, per device.
    pub fn gauges(&self) -> (Vec<Sample>, Vec<Sample>) {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let now = crate::caps::crypto::now_unix();
        let mut connected = Vec::new();
        let mut expiry = Vec::new();
        for (device, w) in workers.iter() {
            let labels = vec![("device", device.clone())];
            let up = w.status.connected.load(Ordering::Relaxed);
            connected.push((labels.clone(), if up { 1.0 } else { 0.0 }));
            let at = w.status.expires_at.load(Ordering::Relaxed);
            if up && at > 0 {
                expiry.push((labels, at.saturating_sub(now) as f64));
            }
        }
        connected.sort_by(|a, b| a.0.cmp(&b.0));
        expiry.sort_by(|a, b| a.0.cmp(&b.0));
        (connected, expiry)
    }

    /// Whether every worker's session is connected (and there is at least one).
    pub fn all_connected(&self) -> bool {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        workers
            .values()
            .all(|w| w.status.connected.load(Ordering::Relaxed))
    }

    /// Stop every worker: each finishes the batch in flight. A worker still onboarding or
    /// connecting after [`STOP_GRACE`] is left behind (nothing of its queue is lost: messages
    /// leave the queue only when acknowledged).
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        for w in workers.values() {
            let _ = w.wake.try_send(());
        }
        let deadline = std::time::Instant::now() + STOP_GRACE;
        for (device, mut w) in workers.drain() {
            let Some(thread) = w.thread.take() else {
                continue;
            };
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!(
                    device,
                    "the upstream worker is still connecting; not waiting for it"
                );
            }
        }
    }
}

/// Why a session ended.
enum Ended {
    Stopping,
    /// Open the session again after a pause (`connected`: the session had been open, so the
    /// pauses start short again).
    Retry {
        connected: bool,
    },
}

fn run(shared: &Shared, device: &str, woken: &Receiver<()>, status: &Status) {
    let mut backoff = Backoff::default();
    // The last sequence number the upstream acknowledged.
    let mut cursor = 0u64;
    // The head message and how many sessions failed on it alone.
    let mut suspect: Option<(u64, u32)> = None;
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match session(shared, device, woken, status, &mut cursor, &mut suspect) {
            Ended::Stopping => return,
            Ended::Retry { connected } => {
                status.connected.store(false, Ordering::Relaxed);
                if connected {
                    backoff = Backoff::default();
                }
                let pause = backoff.next_delay();
                // Sleep, but wake up for stopping.
                let _ = woken.recv_timeout(pause);
            }
        }
    }
}

/// Open the device's session and forward until it breaks or the bridge stops.
fn session(
    shared: &Shared,
    device: &str,
    woken: &Receiver<()>,
    status: &Status,
    cursor: &mut u64,
    suspect: &mut Option<(u64, u32)>,
) -> Ended {
    let running = shared.current.get();
    let config = &running.config;
    let fail = |cause: &str, message: String| {
        shared.metrics.upstream_errors.inc(&[device]);
        shared
            .log
            .warn(&format!("upstream {device}: {cause}"), &message);
    };
    let device_config = match onboard::device(config, device) {
        Ok(d) => d,
        Err(e) => {
            fail(
                "unknown",
                format!("device '{device}': {e}; its messages stay queued"),
            );
            return Ended::Retry { connected: false };
        }
    };
    // A device that skips TLS verification gets plugins loaded with that setting.
    let own_registry;
    let registry: &Registry = if device_config.insecure_skip_verify {
        own_registry = Registry::load(config.device_env(&device_config, true));
        &own_registry
    } else {
        &running.registry
    };
    let mut session = match DeviceSession::open(config, registry, &device_config) {
        Ok(s) => s,
        Err(e) => {
            fail(
                "connect",
                format!(
                    "upstream session of '{device}' did not open: {e}; its messages stay queued"
                ),
            );
            return Ended::Retry { connected: false };
        }
    };
    status.connected.store(true, Ordering::Relaxed);
    tracing::info!(device, host = %session.connection().host, "upstream session open");
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return Ended::Stopping;
        }
        if let Some(left) = session.time_to_expiry() {
            let at = crate::caps::crypto::now_unix() + left.as_secs();
            status.expires_at.store(at, Ordering::Relaxed);
        }
        // One at a time while a message is under suspicion.
        let max = if suspect.is_some() { 1 } else { BATCH };
        let batch: Vec<Queued> = match shared.queue.peek(device, *cursor, max) {
            Ok(b) => b,
            Err(e) => {
                fail("queue", format!("cannot read the queue of '{device}': {e}"));
                return Ended::Retry { connected: true };
            }
        };
        if batch.is_empty() {
            match woken.recv_timeout(IDLE_CHECK) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Ended::Stopping,
            }
        }
        let messages: Vec<_> = batch.iter().map(|q| q.message.clone()).collect();
        let last = batch.last().map_or(*cursor, |q| q.seq);
        match session.publish_batch(&messages) {
            Ok(()) => {
                *cursor = last;
                *suspect = None;
                shared.metrics.sent.add(&[device], batch.len() as u64);
                if let Err(e) = shared.queue.remove_through(device, last) {
                    // They were delivered; they may be sent again after a restart.
                    fail(
                        "queue",
                        format!("cannot remove delivered messages of '{device}': {e}"),
                    );
                }
            }
            Err(e) => {
                fail(
                    "publish",
                    format!("upstream of '{device}' failed: {e}; sending again"),
                );
                let head = batch[0].seq;
                match *suspect {
                    Some((seq, attempts)) if seq == head => {
                        if attempts + 1 >= MAX_ATTEMPTS {
                            dead_letter(shared, device, &batch[0], &e.to_string());
                            *cursor = head;
                            *suspect = None;
                        } else {
                            *suspect = Some((seq, attempts + 1));
                        }
                    }
                    _ => *suspect = Some((head, 1)),
                }
                return Ended::Retry { connected: true };
            }
        }
    }
}

/// Set aside a message the upstream refused again and again.
fn dead_letter(shared: &Shared, device: &str, queued: &Queued, why: &str) {
    let letter = DeadLetter {
        at_ms: now_ms(),
        rule: String::new(),
        cause: "upstream refused".into(),
        reason: format!(
            "the upstream of '{device}' failed {MAX_ATTEMPTS} times on this message alone: {why}"
        ),
        message: queued.message.clone(),
    };
    shared
        .log
        .warn(&format!("upstream refused {device}"), &letter.reason);
    if shared.queue.append(&[], &[letter]).is_ok() {
        shared.metrics.dead_lettered.inc(&["", "upstream refused"]);
        let _ = shared.queue.remove_through(device, queued.seq);
    }
}
