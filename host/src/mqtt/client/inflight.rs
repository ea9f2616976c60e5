//! The publishes a session has handed to its connection and not yet seen completed, in two
//! halves. [`PacketIds`] lives on the connection's thread: publishes go out in the order
//! they were handed over, so the n-th PUBLISH out is serial n, and it turns the broker's
//! acknowledgements of packet ids into completions of serials (a QoS 0 publish is complete once
//! out). [`InFlight`] lives with the session: which serials are complete, how many at the front
//! are, and how long the broker has made no progress. Only completions cross between the two, and
//! the connection hands over all the completions of one read at once, so a burst of
//! acknowledgements costs its session one event.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The connection thread's half: packet id → serial of the open QoS 1/2 publish that carries it.
#[derive(Default)]
pub(crate) struct PacketIds {
    /// The serial the next PUBLISH out gets.
    next: u64,
    open: HashMap<u16, u64>,
}

impl PacketIds {
    /// The next publish went out with `pkid` (0 for QoS 0): its serial when that completes it.
    pub fn sent(&mut self, pkid: u16) -> Option<u64> {
        let serial = self.next;
        self.next += 1;
        if pkid == 0 {
            return Some(serial);
        }
        self.open.insert(pkid, serial);
        None
    }

    /// The next publish could not be sent at all: its serial (it is complete, failed).
    pub(crate) fn skipped(&mut self) -> u64 {
        let serial = self.next;
        self.next += 1;
        serial
    }

    /// How many QoS 1/2 publishes are out and not acknowledged.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// Whether an open publish carries `pkid`.
    pub(crate) fn is_open(&self, pkid: u16) -> bool {
        self.open.contains_key(&pkid)
    }

    /// The broker acknowledged `pkid`: the serial it completes, `None` when no publish in
    /// flight has that id (an acknowledgement for something else). Packet ids are reused only
    /// once acknowledged, so at most one open publish carries it.
    pub fn acked(&mut self, pkid: u16) -> Option<u64> {
        self.open.remove(&pkid)
    }
}

/// The session's half: offered publishes, oldest first; the front one has serial `front`.
pub(crate) struct InFlight {
    /// Whether each publish is complete.
    done: VecDeque<bool>,
    front: u64,
    /// When the front last moved (or the first entry came in).
    progress_at: Instant,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            done: VecDeque::new(),
            front: 0,
            progress_at: Instant::now(),
        }
    }
}

impl InFlight {
    /// A publish was handed to the connection (it gets the next serial).
    pub fn push(&mut self) {
        if self.done.is_empty() {
            self.progress_at = Instant::now();
        }
        self.done.push_back(false);
    }

    /// The publish with `serial` is complete; `false` when it is not in flight.
    pub(crate) fn completed(&mut self, serial: u64) -> bool {
        let Some(at) = serial.checked_sub(self.front) else {
            return false;
        };
        match self.done.get_mut(at as usize) {
            Some(done) if !*done => {
                *done = true;
                true
            }
            _ => false,
        }
    }

    /// Forget the complete publishes at the front; how many there were.
    pub(crate) fn take_completed(&mut self) -> usize {
        let mut n = 0;
        while self.done.front() == Some(&true) {
            self.done.pop_front();
            n += 1;
        }
        self.front += n as u64;
        if n > 0 {
            self.progress_at = Instant::now();
        }
        n
    }

    pub fn len(&self) -> usize {
        self.done.len()
    }

    /// How long the front has not moved, while something is in flight.
    pub(crate) fn stalled_for(&self) -> Option<Duration> {
        (!self.done.is_empty()).then(|| self.progress_at.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_in_order_even_when_acknowledged_out_of_order() {
        let (mut ids, mut f) = (PacketIds::default(), InFlight::default());
        for _ in 0..3 {
            f.push();
        }
        assert_eq!(ids.sent(1), None);
        assert_eq!(ids.sent(2), None);
        assert_eq!(ids.sent(0), Some(2), "QoS 0 is complete once out");
        assert!(f.completed(2));
        assert_eq!(ids.acked(2), Some(1));
        assert!(f.completed(1));
        assert_eq!(f.take_completed(), 0, "the first is still open");
        assert_eq!(ids.acked(7), None, "an id nobody waits for");
        assert_eq!(ids.acked(1), Some(0));
        assert!(f.completed(0));
        assert_eq!(f.take_completed(), 3);
        assert_eq!(f.len(), 0);
        assert_eq!(f.stalled_for(), None);
        assert!(!f.completed(0), "already gone");
    }

    #[test]
    fn a_reused_packet_id_acknowledges_the_open_publish() {
        let (mut ids, mut f) = (PacketIds::default(), InFlight::default());
        f.push();
        f.push();
        ids.sent(1);
        assert_eq!(ids.acked(1), Some(0));
        ids.sent(1);
        assert_eq!(ids.acked(1), Some(1));
        assert_eq!(ids.acked(1), None, "both are done");
        assert!(f.completed(0) && f.completed(1));
        assert!(!f.completed(1), "completed once");
        assert_eq!(f.take_completed(), 2);
    }
}
