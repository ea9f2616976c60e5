//! The publishes a session has handed to its connection and not yet seen completed, in the order
//! they were handed over: the packet id each got when it went out, which ones the broker
//! acknowledged, how many at the front are complete, and how long the broker has made no progress.

use rumqttc::QoS;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

struct Entry {
    qos: QoS,
    done: bool,
}

/// Offered publishes, oldest first. Every entry has a serial number (the front's is `front`),
/// so a packet id finds its entry without a scan of the window.
pub struct InFlight {
    entries: VecDeque<Entry>,
    front: u64,
    /// How many entries at the front went out (publishes go out in the order offered).
    sent: usize,
    /// Packet id → serial of the open QoS 1/2 publish that carries it.
    open: HashMap<u16, u64>,
    /// When the front last moved (or the first entry came in).
    progress_at: Instant,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            entries: VecDeque::new(),
            front: 0,
            sent: 0,
            open: HashMap::new(),
            progress_at: Instant::now(),
        }
    }
}

impl InFlight {
    /// A publish was handed to the connection.
    pub fn push(&mut self, qos: QoS) {
        if self.entries.is_empty() {
            self.progress_at = Instant::now();
        }
        self.entries.push_back(Entry { qos, done: false });
    }

    /// The oldest publish not yet out went out with `pkid`.
    pub fn sent(&mut self, pkid: u16) {
        let serial = self.front + self.sent as u64;
        if let Some(entry) = self.entries.get_mut(self.sent) {
            entry.done = entry.qos == QoS::AtMostOnce;
            if !entry.done {
                self.open.insert(pkid, serial);
            }
            self.sent += 1;
        }
    }

    /// The broker acknowledged `pkid`; `false` when no publish in flight has that id (an
    /// acknowledgement for something else). Packet ids are reused only once acknowledged, so
    /// at most one open entry carries it.
    pub fn acked(&mut self, pkid: u16) -> bool {
        let Some(serial) = self.open.remove(&pkid) else {
            return false;
        };
        match self.entries.get_mut((serial - self.front) as usize) {
            Some(entry) => {
                entry.done = true;
                true
            }
            None => false,
        }
    }

    /// Forget the complete publishes at the front; how many there were.
    pub fn take_completed(&mut self) -> usize {
        let mut n = 0;
        while self.entries.front().is_some_and(|e| e.done) {
            self.entries.pop_front();
            n += 1;
        }
        self.front += n as u64;
        self.sent -= n;
        if n > 0 {
            self.progress_at = Instant::now();
        }
        n
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// How long the front has not moved, while something is in flight.
    pub fn stalled_for(&self) -> Option<Duration> {
        (!self.entries.is_empty()).then(|| self.progress_at.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_in_order_even_when_acknowledged_out_of_order() {
        let mut f = InFlight::default();
        f.push(QoS::AtLeastOnce);
        f.push(QoS::AtLeastOnce);
        f.push(QoS::AtMostOnce);
        f.sent(1);
        f.sent(2);
        f.sent(0);
        assert!(f.acked(2));
        assert_eq!(f.take_completed(), 0, "the first is still open");
        assert!(!f.acked(7), "an id nobody waits for");
        assert!(f.acked(1));
        assert_eq!(f.take_completed(), 3);
        assert_eq!(f.len(), 0);
        assert_eq!(f.stalled_for(), None);
    }

    #[test]
    fn a_reused_packet_id_acknowledges_the_open_publish() {
        let mut f = InFlight::default();
        f.push(QoS::AtLeastOnce);
        f.sent(1);
        assert!(f.acked(1));
        f.push(QoS::AtLeastOnce);
        f.sent(1);
        assert!(f.acked(1));
        assert!(!f.acked(1), "both are done");
        assert_eq!(f.take_completed(), 2);
    }
}
