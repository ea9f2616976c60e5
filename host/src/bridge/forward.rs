//! Forwarding: one worker thread per device streams the device's queue into its upstream
//! session ([`DeviceSession`]: onboarding, fresh credentials, reconnects) through a sliding
//! window: up to [`WINDOW`] messages in flight, in queue order, a new one handed over as soon
//! as an acknowledgement frees a place (waiting for a whole batch would leave the upstream's
//! last acknowledgements waiting on delayed TCP ACKs). Messages leave the queue only after the
//! upstream acknowledged them; a failed session is opened again after a growing pause and what
//! it left unacknowledged is sent again; a message the upstream keeps refusing on its own is
//! dead-lettered instead of blocking the device.

use super::chain::Current;
use super::log_once::LogOnce;
use super::metrics::{Metrics, Sample};
use super::queue::{now_ms, DeadLetter, Queue};
use crate::model::Message;
use crate::mqtt::client::Waker;
use crate::onboard;
use crate::plugins::registry::PluginEnv;
use crate::plugins::registry::Registry;
use crate::retry::Backoff;
use crate::upstream::{DeviceSession, Offered, UpstreamError};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The most messages a device has in flight upstream.
pub(crate) const WINDOW: usize = 500;
/// Acknowledged messages leave the queue in batches of at most this many ...
const BATCH: usize = 500;
/// ... or at least this often.
const REMOVE_EVERY: Duration = Duration::from_millis(20);
/// How long one wait for acknowledgements lasts at most.
const POLL: Duration = Duration::from_millis(20);
/// How long stopping waits for the messages in flight.
const DRAIN: Duration = Duration::from_secs(1);

/// How often an idle worker looks at its queue anyway.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How long stopping waits for the workers.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(3);
/// A message that failed alone this many times (on sessions that connected) is dead-lettered.
const MAX_ATTEMPTS: u32 = 3;

/// A device worker's state, as `/metrics` shows it.
#[derive(Default)]
struct Status {
    connected: AtomicBool,
    /// Unix seconds when the current credentials expire (0 = never / unknown).
    expires_at: AtomicU64,
    /// Interrupts the worker's wait on its open session.
    session_waker: Mutex<Option<Waker>>,
}

impl Status {
    fn set_waker(&self, waker: Option<Waker>) {
        *self.session_waker.lock().unwrap_or_else(|e| e.into_inner()) = waker;
    }

    fn wake_session(&self) {
        if let Some(w) = &*self.session_waker.lock().unwrap_or_else(|e| e.into_inner()) {
            w.wake();
        }
    }
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
    from_cloud: OnceLock<FromCloud>,
}

/// What takes the cloud-to-device messages a device's session receives.
pub(crate) type FromCloud = Box<dyn Fn(&str, Message) + Send + Sync>;

/// The device workers.
pub(crate) struct Forwarders {
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
                from_cloud: OnceLock::new(),
            }),
            workers: Mutex::new(HashMap::new()),
        }
    }

    /// Where the sessions' cloud-to-device messages go (set once, before they arrive).
    pub(crate) fn set_from_cloud(&self, handler: FromCloud) {
        let _ = self.shared.from_cloud.set(handler);
    }

    /// Tell `device`'s worker that messages are waiting; start it if it is not running.
    pub(crate) fn wake(&self, device: &str) {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(worker) = workers.get(device) {
            let _ = worker.wake.try_send(());
            worker.status.wake_session();
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
    pub(crate) fn listed_devices(&self) -> Vec<String> {
        let running = self.shared.current.get();
        running
            .config
            .devices
            .iter()
            .map(|d| d.name.clone())
            .collect()
    }

    /// Upstream connection state and seconds to credential expiry, per device.
    pub(crate) fn gauges(&self) -> (Vec<Sample>, Vec<Sample>) {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let now = crate::pki::crypto::now_unix();
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
    pub(crate) fn all_connected(&self) -> bool {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        workers
            .values()
            .all(|w| w.status.connected.load(Ordering::Relaxed))
    }

    /// Stop every worker: each gives its messages in flight a second to be acknowledged. A worker still onboarding or
    /// connecting after [`STOP_GRACE`] is left behind (nothing of its queue is lost: messages
    /// leave the queue only when acknowledged).
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        for w in workers.values() {
            let _ = w.wake.try_send(());
            w.status.wake_session();
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
        match session(shared, device, status, &mut cursor, &mut suspect) {
            Ended::Stopping => return,
            Ended::Retry { connected } => {
                status.connected.store(false, Ordering::Relaxed);
                status.set_waker(None);
                if connected {
                    backoff = Backoff::default();
                }
                // Sleep, but wake up for stopping (news of more messages does not cut the
                // pause short; stopping sets its flag before it wakes).
                let until = Instant::now() + backoff.next_delay();
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() || shared.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let _ = woken.recv_timeout(left);
                }
            }
        }
    }
}

/// Open the device's session and forward until it breaks or the bridge stops.
fn session(
    shared: &Shared,
    device: &str,
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
        own_registry = Registry::load(PluginEnv::for_device(config, &device_config, true));
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
    status.set_waker(session.waker());
    tracing::info!(device, host = %session.connection().host, "upstream session open");
    let mut stream = Stream::new(*cursor);
    let ended = loop {
        if shared.stopping.load(Ordering::SeqCst) {
            stream.drain(shared, device, &mut session);
            break Ended::Stopping;
        }
        if let Some(left) = session.time_to_expiry() {
            let at = crate::pki::crypto::now_unix() + left.as_secs();
            status.expires_at.store(at, Ordering::Relaxed);
        }
        if session.renewal_due() && stream.in_flight.is_empty() {
            if let Err(e) = session.renew() {
                fail(
                    "connect",
                    format!("upstream session of '{device}' did not renew: {e}"),
                );
                break Ended::Retry { connected: true };
            }
            status.set_waker(session.waker());
            stream.more = true;
        }
        // Hand over what the window has room for; one at a time while a message is under
        // suspicion; nothing new while the credentials wait for renewal.
        let window = if suspect.is_some() { 1 } else { WINDOW };
        if stream.more && stream.in_flight.len() < window && !session.renewal_due() {
            if let Err(e) = stream.offer(shared, device, &mut session, window) {
                fail_publish(shared, device, &fail, &stream, suspect, e);
                break Ended::Retry { connected: true };
            }
        }
        // Idle (a full connection with nothing in flight is a closed one: poll to find out).
        if stream.in_flight.is_empty() && !stream.full {
            stream.remove_acked(shared, device, &fail);
            *cursor = stream.acked;
            if stream.more {
                continue;
            }
            // Wait for news: new messages (the waker), the connection failing, or the time
            // for a look at the queue anyway.
            if let Err(e) = session.poll_completed(IDLE_CHECK) {
                fail("connection", format!("upstream of '{device}' failed: {e}"));
                break Ended::Retry { connected: true };
            }
            hand_on_received(shared, device, &mut session);
            stream.more = true;
            continue;
        }
        match session.poll_completed(POLL) {
            Ok(n) => stream.completed(shared, device, n, suspect),
            Err(e) => {
                fail_publish(shared, device, &fail, &stream, suspect, e);
                break Ended::Retry { connected: true };
            }
        }
        hand_on_received(shared, device, &mut session);
        // Whatever woke the wait, the queue may have more.
        stream.more = true;
        if stream.unremoved >= BATCH || stream.removed_at.elapsed() >= REMOVE_EVERY {
            stream.remove_acked(shared, device, &fail);
        }
        *cursor = stream.acked;
    };
    // What was acknowledged leaves the queue; what was not is sent again on the next session.
    stream.remove_acked(shared, device, &fail);
    *cursor = stream.acked;
    ended
}

/// One session's stream of queued messages to the upstream.
struct Stream {
    /// Sequence numbers handed to the session and not yet acknowledged, oldest first.
    in_flight: VecDeque<u64>,
    /// The last sequence number handed over.
    offered: u64,
    /// The last sequence number acknowledged (every message up to it is done).
    acked: u64,
    /// The last sequence number removed from the queue.
    removed: u64,
    /// Messages acknowledged and not yet removed.
    unremoved: usize,
    removed_at: Instant,
    /// Whether the queue may hold messages after `offered`.
    more: bool,
    /// Whether the connection took no more at the last offer.
    full: bool,
}

impl Stream {
    fn new(cursor: u64) -> Stream {
        Stream {
            in_flight: VecDeque::new(),
            offered: cursor,
            acked: cursor,
            removed: cursor,
            unremoved: 0,
            removed_at: Instant::now(),
            more: true,
            full: false,
        }
    }

    /// Offer queued messages until the window is full, the connection takes no more or the
    /// queue has none. A message the upstream could never take (too large, properties on
    /// MQTT 3.1.1) is dead-lettered on the spot.
    fn offer(
        &mut self,
        shared: &Shared,
        device: &str,
        session: &mut DeviceSession<'_>,
        window: usize,
    ) -> Result<(), UpstreamError> {
        self.full = false;
        let room = window - self.in_flight.len();
        let batch = match shared.queue.peek(device, self.offered, room) {
            Ok(b) => b,
            Err(e) => {
                shared.log.warn(
                    &format!("upstream {device}: queue"),
                    &format!("cannot read the queue of '{device}': {e}"),
                );
                self.more = false;
                return Ok(());
            }
        };
        self.more = batch.len() == room;
        for queued in batch {
            let seq = queued.seq;
            match session.offer(queued.message)? {
                Offered::Taken => {
                    self.in_flight.push_back(seq);
                    self.offered = seq;
                }
                Offered::Full => {
                    // Read from the queue again at the next offer.
                    self.more = true;
                    self.full = true;
                    break;
                }
                Offered::Refused(why, message) => {
                    let reason = format!("the upstream of '{device}' cannot take it: {why}");
                    set_aside(shared, device, seq, message, "not publishable", &reason);
                    self.offered = seq;
                    if self.in_flight.is_empty() {
                        self.acked = seq;
                    }
                }
            }
        }
        Ok(())
    }

    /// `n` more of the oldest messages in flight were acknowledged.
    fn completed(
        &mut self,
        shared: &Shared,
        device: &str,
        n: usize,
        suspect: &mut Option<(u64, u32)>,
    ) {
        if n == 0 {
            return;
        }
        for _ in 0..n {
            if let Some(seq) = self.in_flight.pop_front() {
                self.acked = seq;
            }
        }
        if self.in_flight.is_empty() {
            // Messages set aside after the last one in flight are done too.
            self.acked = self.acked.max(self.offered);
        }
        self.unremoved += n;
        *suspect = None;
        shared.metrics.sent.add(&[device], n as u64);
    }

    /// Stopping: give what is in flight [`DRAIN`] to be acknowledged (what is not is sent
    /// again after the restart).
    fn drain(&mut self, shared: &Shared, device: &str, session: &mut DeviceSession<'_>) {
        let deadline = Instant::now() + DRAIN;
        let mut no_suspect = None;
        while !self.in_flight.is_empty() && Instant::now() < deadline {
            match session.poll_completed(POLL) {
                Ok(n) => self.completed(shared, device, n, &mut no_suspect),
                Err(_) => return,
            }
        }
    }

    /// Remove what the upstream acknowledged from the queue.
    fn remove_acked(&mut self, shared: &Shared, device: &str, fail: &impl Fn(&str, String)) {
        self.removed_at = Instant::now();
        if self.acked <= self.removed {
            return;
        }
        match shared.queue.remove_through(device, self.acked) {
            Ok(_) => {
                self.removed = self.acked;
                self.unremoved = 0;
            }
            // They were delivered; they may be sent again after a restart.
            Err(e) => fail(
                "queue",
                format!("cannot remove delivered messages of '{device}': {e}"),
            ),
        }
    }
}

/// Pass the cloud-to-device messages the session received to the rules.
fn hand_on_received(shared: &Shared, device: &str, session: &mut DeviceSession<'_>) {
    let received = session.take_received();
    if received.is_empty() {
        return;
    }
    match shared.from_cloud.get() {
        Some(handler) => {
            for message in received {
                handler(device, message);
            }
        }
        None => {
            shared.log.warn(
                "from cloud",
                &format!(
                    "{} cloud-to-device message(s) for '{device}' arrived before the bridge could take them",
                    received.len()
                ),
            );
        }
    }
}

/// The session failed with messages in flight: count it against the oldest one, which is
/// dead-lettered once it has failed [`MAX_ATTEMPTS`] times on its own.
fn fail_publish(
    shared: &Shared,
    device: &str,
    fail: &impl Fn(&str, String),
    stream: &Stream,
    suspect: &mut Option<(u64, u32)>,
    e: UpstreamError,
) {
    fail(
        "publish",
        format!("upstream of '{device}' failed: {e}; sending again"),
    );
    let Some(&head) = stream.in_flight.front() else {
        return;
    };
    match *suspect {
        Some((seq, attempts)) if seq == head => {
            if attempts + 1 >= MAX_ATTEMPTS {
                let why = format!(
                    "the upstream of '{device}' failed {MAX_ATTEMPTS} times on this message alone: {e}"
                );
                if let Ok(Some(queued)) = shared
                    .queue
                    .peek(device, head - 1, 1)
                    .map(|b| b.into_iter().next())
                {
                    if queued.seq == head {
                        set_aside(
                            shared,
                            device,
                            head,
                            queued.message,
                            "upstream refused",
                            &why,
                        );
                    }
                }
                *suspect = None;
            } else {
                *suspect = Some((seq, attempts + 1));
            }
        }
        _ => *suspect = Some((head, 1)),
    }
}

/// Move `device`'s queued message `seq` to the dead letters.
fn set_aside(shared: &Shared, device: &str, seq: u64, message: Message, cause: &str, reason: &str) {
    let letter = DeadLetter {
        at_ms: now_ms(),
        rule: String::new(),
        cause: cause.into(),
        reason: reason.to_string(),
        message,
        device: Some(device.to_string()),
        from_cloud: None,
    };
    shared
        .log
        .warn(&format!("upstream {cause} {device}"), &letter.reason);
    match shared.queue.set_aside(device, seq, &letter) {
        Ok(()) => shared.metrics.dead_lettered.inc(&["", cause]),
        Err(e) => {
            shared.log.warn(
                &format!("upstream {device}: queue"),
                &format!("cannot set a message of '{device}' aside: {e}"),
            );
        }
    }
}
