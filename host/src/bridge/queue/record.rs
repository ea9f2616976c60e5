//! The queue's on-disk records: how a queued message, a removal and a segment header are framed
//! (`length | CRC-32 | body`), and how a segment's bytes are read back: a damaged record is
//! skipped by looking for the next intact frame (the CRC makes a false match a 1 in 2^32
//! chance), so one flipped byte costs one record, not the rest of the segment; only what
//! follows the last intact record is a torn tail.

use crate::model::Message;

/// `length (u32) | crc32 of the body (u32)`, big-endian.
pub(crate) const FRAME: usize = 8;

/// One record of a segment.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The first record of every segment: the sequence number the queue would give next, so
    /// numbers keep growing after every message was removed.
    Header { next_seq: u64 },
    /// A message for `device`.
    Message {
        device: String,
        seq: u64,
        enqueued_ms: u64,
        message: Message,
    },
    /// `device`'s messages up to and including `seq` are gone (acknowledged, dropped, expired).
    RemovedThrough { device: String, seq: u64 },
    /// `device`'s message `seq` alone is gone (set aside as a dead letter).
    Removed { device: String, seq: u64 },
}

const HEADER: u8 = 0;
const MESSAGE: u8 = 1;
const REMOVED_THROUGH: u8 = 2;
const REMOVED: u8 = 3;

/// Append a segment header, framed, to `out`; the framed length.
pub(crate) fn write_header(out: &mut Vec<u8>, next_seq: u64) -> usize {
    framed(out, |out| {
        out.push(HEADER);
        out.extend_from_slice(&next_seq.to_be_bytes());
    })
}

/// Append a message record, framed, to `out` (borrowing the message: appends are the hot
/// path); the framed length.
pub(crate) fn write_message(
    out: &mut Vec<u8>,
    device: &str,
    seq: u64,
    enqueued_ms: u64,
    message: &Message,
) -> usize {
    framed(out, |out| {
        out.push(MESSAGE);
        string(out, device);
        out.extend_from_slice(&seq.to_be_bytes());
        encode_message(out, enqueued_ms, message);
    })
}

/// Append a removal of `device`'s message `seq` (`through`: and every one before it), framed,
/// to `out`; the framed length.
pub(crate) fn write_removal(out: &mut Vec<u8>, device: &str, seq: u64, through: bool) -> usize {
    framed(out, |out| {
        out.push(if through { REMOVED_THROUGH } else { REMOVED });
        string(out, device);
        out.extend_from_slice(&seq.to_be_bytes());
    })
}

/// Append any record, framed (what the writers above produce, from a [`Record`]).
#[cfg(test)]
pub fn write(out: &mut Vec<u8>, record: &Record) -> usize {
    match record {
        Record::Header { next_seq } => write_header(out, *next_seq),
        Record::Message {
            device,
            seq,
            enqueued_ms,
            message,
        } => write_message(out, device, *seq, *enqueued_ms, message),
        Record::RemovedThrough { device, seq } => write_removal(out, device, *seq, true),
        Record::Removed { device, seq } => write_removal(out, device, *seq, false),
    }
}

/// `length | crc32 | body`, the body written by `body`; the framed length.
fn framed(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    body(out);
    let body_len = out.len() - start - FRAME;
    let crc = crc32fast::hash(&out[start + FRAME..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_be_bytes());
    out[start + 4..start + FRAME].copy_from_slice(&crc.to_be_bytes());
    out.len() - start
}

/// What reading a segment's bytes found.
pub(crate) struct Scan {
    /// Each intact record with its offset and framed length.
    pub records: Vec<(u64, u32, Record)>,
    /// Where the last intact record ends; `< bytes.len()` when the rest is zeros written ahead,
    /// or a torn or damaged tail.
    pub end: u64,
    /// Damaged spans between intact records, as (offset, length): skipped.
    pub damaged: Vec<(u64, u64)>,
}

/// Read every intact record of `bytes`: a record that fails its checksum or cannot be decoded
/// is skipped up to the next intact one; reading ends at zeros (the end of what was written)
/// or where no intact record follows.
pub(crate) fn scan(bytes: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut damaged = Vec::new();
    let mut at = 0usize;
    let mut end = 0usize;
    while at < bytes.len() {
        if let Some((record, len)) = read_at(bytes, at) {
            records.push((at as u64, len as u32, record));
            at += len;
            end = at;
            continue;
        }
        if bytes[at..].iter().all(|&b| b == 0) {
            break;
        }
        match (at + 1..bytes.len()).find(|&i| plausible(bytes, i) && read_at(bytes, i).is_some()) {
            Some(next) => {
                damaged.push((at as u64, (next - at) as u64));
                at = next;
            }
            None => break,
        }
    }
    Scan {
        records,
        end: end as u64,
        damaged,
    }
}

/// Whether a frame could start at `bytes[at..]` (a cheap test before the checksum): a length
/// that fits and a known record type.
fn plausible(bytes: &[u8], at: usize) -> bool {
    let Some(frame) = bytes.get(at..at + FRAME + 1) else {
        return false;
    };
    let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    len > 0 && len <= bytes.len() - at - FRAME && frame[FRAME] <= REMOVED
}

/// The CRC and body of the record framed at `bytes[at..]`, if it is whole (a zero length ends
/// a segment).
fn unframe(bytes: &[u8], at: usize) -> Option<(u32, &[u8])> {
    let frame = bytes.get(at..at.checked_add(FRAME)?)?;
    let len = u32::from_be_bytes(frame[..4].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(frame[4..].try_into().ok()?);
    if len == 0 {
        return None;
    }
    Some((crc, bytes.get(at + FRAME..(at + FRAME).checked_add(len)?)?))
}

/// The record framed at `bytes[at..]` and its framed length, if it is whole and intact.
pub(crate) fn read_at(bytes: &[u8], at: usize) -> Option<(Record, usize)> {
    let (crc, body) = unframe(bytes, at)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    Some((decode(body)?, FRAME + body.len()))
}

/// One framed record on its own (as read back from its offset).
pub(crate) fn read_one(bytes: &[u8]) -> Option<Record> {
    read_at(bytes, 0).map(|(record, _)| record)
}

/// The record at the start of `bytes` that this process framed itself and kept in memory (the
/// active segment's tail): decoded without checking its CRC, which guards bytes that went
/// through a file.
pub(crate) fn read_own(bytes: &[u8]) -> Option<Record> {
    decode(unframe(bytes, 0)?.1)
}

fn decode(body: &[u8]) -> Option<Record> {
    let mut r = Reader { bytes: body, at: 1 };
    let record = match *body.first()? {
        HEADER => Record::Header { next_seq: r.u64()? },
        MESSAGE => {
            let device = r.string()?;
            let seq = r.u64()?;
            let (enqueued_ms, message) = decode_message(body.get(r.at..)?)?;
            return Some(Record::Message {
                device,
                seq,
                enqueued_ms,
                message,
            });
        }
        REMOVED_THROUGH => Record::RemovedThrough {
            device: r.string()?,
            seq: r.u64()?,
        },
        REMOVED => Record::Removed {
            device: r.string()?,
            seq: r.u64()?,
        },
        _ => return None,
    };
    (r.at == body.len()).then_some(record)
}

fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// `enqueued_ms (u64) | qos (u8) | retain (u8) | topic (u16 len + bytes) | property count (u16),
/// each key and value (u16 len + bytes) | payload (the rest)`, big-endian.
fn encode_message(out: &mut Vec<u8>, enqueued_ms: u64, m: &Message) {
    out.reserve(16 + m.topic.len() + m.payload.len());
    out.extend_from_slice(&enqueued_ms.to_be_bytes());
    out.push(m.qos);
    out.push(u8::from(m.retain));
    string(out, &m.topic);
    out.extend_from_slice(&(m.properties.len().min(u16::MAX as usize) as u16).to_be_bytes());
    for (k, v) in m.properties.iter().take(u16::MAX as usize) {
        string(out, k);
        string(out, v);
    }
    out.extend_from_slice(&m.payload);
}

fn decode_message(bytes: &[u8]) -> Option<(u64, Message)> {
    let mut r = Reader { bytes, at: 0 };
    let enqueued_ms = r.u64()?;
    let qos = r.take(1)?[0];
    let retain = r.take(1)?[0] != 0;
    let topic = r.string()?;
    let count = r.u16()? as usize;
    let mut properties = Vec::with_capacity(count);
    for _ in 0..count {
        properties.push((r.string()?, r.string()?));
    }
    let payload = bytes.get(r.at..)?.to_vec();
    Some((
        enqueued_ms,
        Message {
            topic,
            payload,
            qos,
            retain,
            properties,
        },
    ))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let part = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(part)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let len = self.u16()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> Message {
        let mut m = Message::new("devices/d/messages/events/", payload.to_vec(), 1);
        m.properties = vec![("k".into(), "v ü".into()), (String::new(), String::new())];
        m.retain = true;
        m
    }

    #[test]
    fn every_kind_of_record_round_trips_with_binary_payloads() {
        let records = [
            Record::Header { next_seq: 7 },
            Record::Message {
                device: "dev-ü".into(),
                seq: 9,
                enqueued_ms: 42,
                message: message(&[0, 255, 10, 13]),
            },
            Record::Message {
                device: String::new(),
                seq: u64::MAX,
                enqueued_ms: 0,
                message: message(b""),
            },
            Record::RemovedThrough {
                device: "a".into(),
                seq: 3,
            },
            Record::Removed {
                device: "a".into(),
                seq: 5,
            },
        ];
        let mut bytes = Vec::new();
        let lens: Vec<usize> = records.iter().map(|r| write(&mut bytes, r)).collect();
        let scan = scan(&bytes);
        assert_eq!(scan.end, bytes.len() as u64);
        let back: Vec<Record> = scan.records.iter().map(|(_, _, r)| r.clone()).collect();
        assert_eq!(back, records);
        let second = scan.records[1].0 as usize;
        assert_eq!(
            read_one(&bytes[second..second + lens[1]]),
            Some(records[1].clone())
        );
    }

    #[test]
    fn reading_stops_at_a_torn_or_damaged_record() {
        let mut bytes = Vec::new();
        let first = write(&mut bytes, &Record::Header { next_seq: 1 });
        write(
            &mut bytes,
            &Record::RemovedThrough {
                device: "d".into(),
                seq: 1,
            },
        );
        // Torn: the second record is cut short.
        let torn = scan(&bytes[..bytes.len() - 1]);
        assert_eq!((torn.records.len(), torn.end), (1, first as u64));
        // Damaged: one bit of the second record's body flipped.
        let mut damaged = bytes.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert_eq!(scan(&damaged).end, first as u64);
        // Zeros after the end (a preallocated or zero-filled tail) end the segment too.
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 64]);
        assert_eq!(scan(&zeros).end, bytes.len() as u64);
        // Garbage is never taken for a record.
        assert!(scan(&[1, 2, 3]).records.is_empty());
        assert!(read_one(&[0, 0, 0, 1, 0, 0, 0, 0, 9]).is_none());
    }

    #[test]
    fn a_damaged_record_in_the_middle_is_skipped_and_the_rest_kept() {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for seq in 0..100u64 {
            starts.push(bytes.len());
            write(
                &mut bytes,
                &Record::Message {
                    device: "d".into(),
                    seq,
                    enqueued_ms: 0,
                    message: message(format!("payload {seq}").as_bytes()),
                },
            );
        }
        for (at, flip) in [
            (starts[30] + 2, 0x01),
            (starts[30] + 20, 0x80),
            (starts[99] + 9, 1),
        ] {
            let mut damaged = bytes.clone();
            damaged[at] ^= flip;
            let scan = scan(&damaged);
            let seqs: Vec<u64> = scan
                .records
                .iter()
                .map(|(_, _, r)| match r {
                    Record::Message { seq, .. } => *seq,
                    _ => unreachable!(),
                })
                .collect();
            let hit = if at > starts[99] { 99 } else { 30 };
            let expected: Vec<u64> = (0..100).filter(|s| *s != hit).collect();
            assert_eq!(seqs, expected, "flip at {at}");
            if hit == 30 {
                assert_eq!(
                    scan.damaged,
                    vec![(starts[30] as u64, (starts[31] - starts[30]) as u64)]
                );
                assert_eq!(scan.end, bytes.len() as u64);
            } else {
                // The last record: nothing intact follows, so it is the tail.
                assert!(scan.damaged.is_empty());
                assert_eq!(scan.end, starts[99] as u64);
            }
        }
    }
}
