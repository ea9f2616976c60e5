//! The queue against real files: order, limits, expiry, crashes and damage, dead letters.

use super::segments::{segment_ids, ZERO_AHEAD};
use super::*;

fn msg(topic: &str, payload: &[u8]) -> Message {
    Message::new(topic, payload.to_vec(), 1)
}

#[test]
fn a_message_set_aside_leaves_its_neighbours_queued() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(&dir.path().join("q"), QueueLimits::default()).unwrap();
    let batch: Vec<(String, Message)> = (0..3)
        .map(|i| ("d".to_string(), msg("t", format!("{i}").as_bytes())))
        .collect();
    q.append(&batch, &[]).unwrap();
    let queued = q.peek("d", 0, 10).unwrap();
    let letter = DeadLetter {
        at_ms: 1,
        rule: String::new(),
        cause: "not publishable".into(),
        reason: "no".into(),
        message: queued[1].message.clone(),
        device: Some("d".into()),
        from_cloud: None,
    };
    q.set_aside("d", queued[1].seq, &letter).unwrap();
    let left: Vec<_> = q.peek("d", 0, 10).unwrap();
    assert_eq!(
        left.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [queued[0].seq, queued[2].seq]
    );
    assert_eq!(q.depths()["d"].messages, 2);
    assert_eq!(q.dead_letters().unwrap(), vec![letter]);
}

#[test]
fn messages_stay_in_order_per_device_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    {
        let q = Queue::open(&path, QueueLimits::default()).unwrap();
        let batch: Vec<(String, Message)> = (0..10)
            .map(|i| {
                let device = if i % 2 == 0 { "a" } else { "b" };
                (device.to_string(), msg("t", format!("{i}").as_bytes()))
            })
            .collect();
        q.append(&batch, &[]).unwrap();
        let a = q.peek("a", 0, 100).unwrap();
        let payloads: Vec<_> = a.iter().map(|m| m.message.payload.clone()).collect();
        assert_eq!(
            payloads,
            ["0", "2", "4", "6", "8"].map(|s| s.as_bytes().to_vec())
        );
        assert_eq!(q.remove_through("a", a[1].seq).unwrap(), 2);
    }
    let q = Queue::open(&path, QueueLimits::default()).unwrap();
    assert_eq!(q.depths()["a"].messages, 3);
    assert_eq!(q.depths()["b"].messages, 5);
    assert_eq!(q.peek("a", 0, 1).unwrap()[0].message.payload, b"4");
    // New messages come after the old ones.
    q.append(&[("a".into(), msg("t", b"new"))], &[]).unwrap();
    assert_eq!(
        q.peek("a", 0, 10).unwrap().last().unwrap().message.payload,
        b"new"
    );
}

#[test]
fn a_full_queue_drops_by_its_policy_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let one = size_of("d", &msg("t", &[0; 100]));
    let limits = QueueLimits {
        max_bytes: one * 3,
        ..QueueLimits::default()
    };
    let q = Queue::open(&dir.path().join("q"), limits.clone()).unwrap();
    let batch: Vec<_> = (0..5u8)
        .map(|i| ("d".to_string(), msg("t", &[i; 100])))
        .collect();
    let dropped = q.append(&batch, &[]).unwrap();
    assert_eq!(dropped.0[&("d".to_string(), "queue full")], 2);
    let kept: Vec<u8> = payloads(&q, "d").iter().map(|p| p[0]).collect();
    assert_eq!(kept, [2, 3, 4]);

    let newest = QueueLimits {
        when_full: WhenFull::DropNewest,
        ..limits
    };
    let q = Queue::open(&dir.path().join("q2"), newest).unwrap();
    q.append(&batch, &[]).unwrap();
    let kept: Vec<u8> = payloads(&q, "d").iter().map(|p| p[0]).collect();
    assert_eq!(kept, [0, 1, 2]);
}

#[test]
fn old_messages_expire_and_dead_letters_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let limits = QueueLimits {
        max_age: Duration::ZERO,
        max_dead_letters: 2,
        ..QueueLimits::default()
    };
    let q = Queue::open(&dir.path().join("q"), limits).unwrap();
    q.append(&[("d".into(), msg("t", b"x"))], &[]).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let dropped = q.expire().unwrap();
    assert_eq!(dropped.0[&("d".to_string(), "too old")], 1);
    assert!(q.depths().is_empty());
    let letter = |n: u8| DeadLetter {
        at_ms: 1,
        rule: "r".into(),
        cause: "rule error".into(),
        reason: format!("no {n}"),
        message: msg("t", &[n]),
        device: None,
        from_cloud: None,
    };
    q.append(&[], &[letter(1), letter(2), letter(3)]).unwrap();
    let kept = q.dead_letters().unwrap();
    assert_eq!(kept, vec![letter(2), letter(3)]);
}

#[test]
fn a_second_process_is_told_the_queue_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    let _first = Queue::open(&path, QueueLimits::default()).unwrap();
    let second = Queue::open(&path, QueueLimits::default()).err().unwrap();
    assert!(second.to_string().contains("in use"), "{second}");
}

fn letter(n: u8) -> DeadLetter {
    DeadLetter {
        at_ms: 1,
        rule: "r".into(),
        cause: "rule error".into(),
        reason: format!("no {n}"),
        message: msg("t", &[n]),
        device: None,
        from_cloud: None,
    }
}

fn payloads(q: &Queue, device: &str) -> Vec<Vec<u8>> {
    let queued = q.peek(device, 0, usize::MAX).unwrap();
    queued.into_iter().map(|m| m.message.payload).collect()
}

#[test]
fn appends_land_in_zeros_written_ahead_which_reopening_reads_as_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    let size = || {
        let last = *segment_ids(&path).unwrap().last().unwrap();
        std::fs::metadata(path.join(segment_name(last)))
            .unwrap()
            .len()
    };
    {
        let q = Queue::open(&path, QueueLimits::default()).unwrap();
        q.append(&[("d".into(), msg("t", b"one"))], &[]).unwrap();
        let ahead = size();
        assert_eq!(ahead, ZERO_AHEAD, "the first append writes zeros ahead");
        q.append(&[("d".into(), msg("t", b"two"))], &[]).unwrap();
        assert_eq!(
            size(),
            ahead,
            "the next append does not change the file size"
        );
        // A message larger than what is left goes past the chunk: more zeros follow it.
        let big = vec![7u8; ZERO_AHEAD as usize];
        q.append(&[("d".into(), msg("t", &big))], &[]).unwrap();
        assert_eq!(size(), 2 * ZERO_AHEAD);
    }
    let q = Queue::open(&path, QueueLimits::default()).unwrap();
    let got = payloads(&q, "d");
    assert_eq!(got.len(), 3);
    assert_eq!(got[..2], [b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(got[2], vec![7u8; ZERO_AHEAD as usize]);
    // The old segment keeps its records and loses the zeros; new appends go to a new one.
    let (count, bytes) = q.segments();
    let on_disk: u64 = segment_ids(&path)
        .unwrap()
        .iter()
        .map(|&id| {
            std::fs::metadata(path.join(segment_name(id)))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!((count, on_disk), (2, bytes));
}

#[test]
fn one_flipped_byte_in_a_segment_loses_one_message_not_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    {
        let q = Queue::open(&path, QueueLimits::default()).unwrap();
        for i in 0..200u32 {
            let payload = format!("acknowledged message {i:03} {}", "x".repeat(1000));
            q.append(&[("d".into(), msg("t", payload.as_bytes()))], &[])
                .unwrap();
        }
    }
    let first = *segment_ids(&path).unwrap().first().unwrap();
    let segment = path.join(segment_name(first));
    let mut bytes = std::fs::read(&segment).unwrap();
    let written = record::scan(&bytes).end as usize;
    bytes[written * 3 / 10] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();

    let q = Queue::open(&path, QueueLimits::default()).unwrap();
    let got = payloads(&q, "d");
    assert_eq!(got.len(), 199, "every intact record is kept");
    let numbers: Vec<u32> = got
        .iter()
        .map(|p| String::from_utf8_lossy(&p[21..24]).parse().unwrap())
        .collect();
    let missing: Vec<u32> = (0..200).filter(|n| !numbers.contains(n)).collect();
    assert_eq!(missing.len(), 1);
    assert!((55..65).contains(&missing[0]), "{missing:?}");
    // The damaged segment is read the same way again.
    drop(q);
    let q = Queue::open(&path, QueueLimits::default()).unwrap();
    assert_eq!(payloads(&q, "d").len(), 199);
}

#[test]
fn a_write_cut_short_by_a_crash_loses_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    {
        let q = Queue::open(&path, QueueLimits::default()).unwrap();
        q.append(&[("d".into(), msg("t", b"kept"))], &[]).unwrap();
    }
    // A second append torn halfway through its record.
    let last = *segment_ids(&path).unwrap().last().unwrap();
    let mut torn = Vec::new();
    record::write(
        &mut torn,
        &Record::Message {
            device: "d".into(),
            seq: 99,
            enqueued_ms: 1,
            message: msg("t", b"torn"),
        },
    );
    let segment = path.join(segment_name(last));
    let mut bytes = std::fs::read(&segment).unwrap();
    // Right after the last whole record, in the zeros written ahead of it (or past the end).
    let end = record::scan(&bytes).end as usize;
    let half = &torn[..torn.len() / 2];
    if bytes.len() < end + half.len() {
        bytes.resize(end + half.len(), 0);
    }
    bytes[end..end + half.len()].copy_from_slice(half);
    std::fs::write(&segment, &bytes).unwrap();

    let q = Queue::open(&path, QueueLimits::default()).unwrap();
    assert_eq!(payloads(&q, "d"), [b"kept".to_vec()]);
    q.append(&[("d".into(), msg("t", b"after"))], &[]).unwrap();
    drop(q);
    let q = Queue::open(&path, QueueLimits::default()).unwrap();
    assert_eq!(payloads(&q, "d"), [b"kept".to_vec(), b"after".to_vec()]);
    assert!(q.peek("d", 0, 10).unwrap()[1].seq > 1);
}

#[test]
fn what_a_crash_finds_is_every_append_and_at_most_the_unsynced_removals_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    let q = Queue::open(&path, QueueLimits::default()).unwrap();
    let batch: Vec<_> = (0..4u8)
        .map(|i| ("d".to_string(), msg("t", &[i])))
        .collect();
    q.append(&batch, &[]).unwrap();
    let first = q.peek("d", 0, 1).unwrap()[0].seq;
    q.remove_through("d", first).unwrap();
    // The state a `kill -9` leaves: the files as they are, without the close.
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(&path).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let crashed = Queue::open(&copy, QueueLimits::default()).unwrap();
    assert_eq!(
        payloads(&crashed, "d"),
        batch
            .iter()
            .map(|(_, m)| m.payload.clone())
            .collect::<Vec<_>>()
    );
    // The removal goes out with the next append.
    q.append(&[("e".into(), msg("t", b"x"))], &[]).unwrap();
    drop(crashed);
    std::fs::remove_dir_all(&copy).unwrap();
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(&path).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let crashed = Queue::open(&copy, QueueLimits::default()).unwrap();
    assert_eq!(payloads(&crashed, "d").len(), 3);
}

#[test]
fn emptied_segments_are_deleted_and_a_lingering_message_is_carried_forward() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    // 1 MiB queue: 128 KiB segments.
    let limits = QueueLimits {
        max_bytes: 1024 * 1024,
        ..QueueLimits::default()
    };
    let q = Queue::open(&path, limits.clone()).unwrap();
    q.append(&[("slow".into(), msg("t", b"waiting"))], &[])
        .unwrap();
    for round in 0..200u32 {
        let batch: Vec<_> = (0..20)
            .map(|_| ("fast".to_string(), msg("t", &[round as u8; 100])))
            .collect();
        q.append(&batch, &[]).unwrap();
        let last = q.peek("fast", 0, usize::MAX).unwrap().last().unwrap().seq;
        assert_eq!(q.remove_through("fast", last).unwrap(), 20);
    }
    // About 800 KiB went through; what stays on disk is a segment or two.
    let (count, bytes) = q.segments();
    assert!(
        count <= 3 && bytes <= 3 * 128 * 1024 + 64 * 1024,
        "{count} segments, {bytes} bytes"
    );
    assert_eq!(payloads(&q, "slow"), [b"waiting".to_vec()]);
    drop(q);
    let q = Queue::open(&path, limits).unwrap();
    assert_eq!(payloads(&q, "slow"), [b"waiting".to_vec()]);
    assert!(!q.depths().contains_key("fast"));
    assert_eq!(q.bytes(), size_of("slow", &msg("t", b"waiting")));
}

#[test]
fn dead_letters_stay_bounded_across_rewrites_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    let limits = QueueLimits {
        max_dead_letters: 3,
        ..QueueLimits::default()
    };
    {
        let q = Queue::open(&path, limits.clone()).unwrap();
        for n in 0..10 {
            q.append(&[], &[letter(n)]).unwrap();
        }
        assert_eq!(q.dead_letter_count(), 3);
        assert_eq!(q.dead_letters().unwrap(), [letter(7), letter(8), letter(9)]);
    }
    let lines = std::fs::read_to_string(path.join(dead::FILE))
        .unwrap()
        .lines()
        .count();
    assert!(lines <= 4, "{lines} lines kept in the file");
    let q = Queue::open(&path, limits).unwrap();
    assert_eq!(q.dead_letters().unwrap(), [letter(7), letter(8), letter(9)]);
}

#[test]
fn dead_letters_are_bounded_by_bytes_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    let limits = QueueLimits {
        max_dead_letter_bytes: 100_000,
        ..QueueLimits::default()
    };
    let q = Queue::open(&path, limits).unwrap();
    let big = |n: u8, size: usize| DeadLetter {
        message: msg("t", &vec![n; size]),
        ..letter(n)
    };
    // Bytes of 0..20 are JSON-escaped six to one: each letter is about 18 KB in the file.
    for n in 0..20 {
        q.append(&[], &[big(n, 3_000)]).unwrap();
        let size = std::fs::metadata(path.join(dead::FILE)).unwrap().len();
        assert!(size <= 150_000 + 20_000, "{size} bytes after letter {n}");
    }
    let kept = q.dead_letters().unwrap();
    assert_eq!(
        kept.last().unwrap().message.payload[0],
        19,
        "the newest stay"
    );
    // One letter larger than the whole limit keeps its reason, not its payload.
    q.append(&[], &[big(99, 300_000)]).unwrap();
    let last = q.dead_letters().unwrap().pop().unwrap();
    assert!(last.message.payload.is_empty());
    assert!(
        last.reason.ends_with(
            "(its 300000-byte payload was not kept: larger than [store] max_dead_letters_mib)"
        ),
        "{}",
        last.reason
    );
}

#[test]
fn an_unreadable_dead_letter_line_is_named_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    std::fs::create_dir_all(&path).unwrap();
    let line = |l: &DeadLetter| serde_json::to_string(l).unwrap();
    // Nested deeper than the JSON parser's limit, between two good letters; then a line
    // torn by a crash.
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    std::fs::write(
        path.join(dead::FILE),
        format!(
            "{}\n{deep}\n{}\n{{\"at_ms\":",
            line(&letter(1)),
            line(&letter(2))
        ),
    )
    .unwrap();
    let q = Queue::open(&path, QueueLimits::default()).unwrap();
    assert_eq!(q.dead_letters().unwrap(), [letter(1), letter(2)]);
    let said = q.unreadable_dead_letters();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].starts_with(&format!(
            "line 2 of {} is not a dead letter gatehost can read (",
            path.join(dead::FILE).display()
        )) && said[0].ends_with("; it is kept as it is"),
        "{said:?}"
    );
    // Replaying or dropping every letter leaves the unreadable line where it was.
    q.replace_dead_letters(&[]).unwrap();
    let text = std::fs::read_to_string(path.join(dead::FILE)).unwrap();
    assert_eq!(text, format!("{deep}\n"));
    q.append(&[], &[letter(3)]).unwrap();
    assert_eq!(q.dead_letters().unwrap(), [letter(3)]);
    assert_eq!(q.unreadable_dead_letters().len(), 1);
}

#[test]
fn staged_messages_are_readable_before_their_sync_and_one_sync_covers_many_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    let q = Queue::open(&path, QueueLimits::default()).unwrap();
    let first = q.stage(&[("d".into(), msg("t", b"one"))], &[]).unwrap();
    let second = q.stage(&[("d".into(), msg("t", b"two"))], &[]).unwrap();
    let both = [b"one".to_vec(), b"two".to_vec()];
    assert_eq!(
        payloads(&q, "d"),
        both,
        "the workers need not wait for the disk"
    );
    let results = Staged::sync_all(vec![first, second]);
    assert_eq!(results.len(), 2, "one result per append");
    assert!(results
        .iter()
        .all(|r| r.as_ref().is_ok_and(Dropped::is_empty)));
    drop(q);
    let q = Queue::open(&path, QueueLimits::default()).unwrap();
    assert_eq!(payloads(&q, "d"), both);
}

#[test]
fn a_queue_folder_that_cannot_be_made_is_named_in_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, b"x").unwrap();
    let e = Queue::open(&file.join("queue"), QueueLimits::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("cannot create the queue folder"), "{e}");
    assert!(e.contains("not-a-folder"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}
