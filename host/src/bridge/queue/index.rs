//! The queue's index in memory: for every device, its queued messages by sequence number, each
//! with where its record is ([`Slot`]); the bytes queued, as the limit counts them; and the next
//! sequence number. Built at open from the records ([`super::recovery`]).

use std::collections::BTreeMap;

/// Where a queued message's record is, and what the limits count it as.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    pub(super) enqueued_ms: u64,
    pub(super) segment: u32,
    pub(super) offset: u64,
    pub(super) len: u32,
    pub(super) size: u32,
}

/// One device's queued messages by sequence number.
#[derive(Default)]
pub(super) struct DeviceQueue {
    pub(super) slots: BTreeMap<u64, Slot>,
    pub(super) bytes: u64,
}

/// Every device's queued messages.
pub(super) struct Index {
    pub(super) next_seq: u64,
    pub(super) devices: BTreeMap<String, DeviceQueue>,
    /// Bytes queued, as the limit counts them.
    pub(super) bytes: u64,
}

impl Index {
    pub(super) fn new() -> Index {
        Index {
            next_seq: 1,
            devices: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// Index `slot` as `device`'s message `seq`; the slot it replaces, if any (a later copy of
    /// the same message replaces the earlier one).
    pub(super) fn insert(&mut self, device: &str, seq: u64, slot: Slot) -> Option<Slot> {
        let queue = match self.devices.get_mut(device) {
            Some(q) => q,
            None => self.devices.entry(device.to_string()).or_default(),
        };
        let old = queue.slots.insert(seq, slot);
        if let Some(old) = &old {
            queue.bytes -= u64::from(old.size);
            self.bytes -= u64::from(old.size);
        }
        queue.bytes += u64::from(slot.size);
        self.bytes += u64::from(slot.size);
        old
    }

    /// Remove `device`'s messages through `seq`; the removed slots.
    pub(super) fn remove_through(&mut self, device: &str, seq: u64) -> Vec<Slot> {
        let Some(queue) = self.devices.get_mut(device) else {
            return Vec::new();
        };
        let rest = queue.slots.split_off(&seq.saturating_add(1));
        let removed: Vec<Slot> = std::mem::replace(&mut queue.slots, rest)
            .into_values()
            .collect();
        self.forget(device, &removed);
        removed
    }

    /// Remove `device`'s message `seq`; its slot, if it was queued.
    pub(super) fn remove_one(&mut self, device: &str, seq: u64) -> Option<Slot> {
        let removed = self
            .devices
            .get_mut(device)
            .and_then(|q| q.slots.remove(&seq));
        self.forget(device, removed.as_slice());
        removed
    }

    /// Take removed slots off the byte counts; a device left with none is forgotten.
    fn forget(&mut self, device: &str, removed: &[Slot]) {
        let bytes: u64 = removed.iter().map(|slot| u64::from(slot.size)).sum();
        self.bytes -= bytes;
        if let Some(queue) = self.devices.get_mut(device) {
            queue.bytes -= bytes;
            if queue.slots.is_empty() {
                self.devices.remove(device);
            }
        }
    }
}
