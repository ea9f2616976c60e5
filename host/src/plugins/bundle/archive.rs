//! The bundle container: a plain POSIX (ustar) tar archive in one canonical layout, so `tar tf`
//! lists a bundle and gatehost can insist that every byte is the one its writer would produce.
//! Only regular files with short, relative, clean paths; no links, devices or directories.

/// Limits on what a bundle may hold.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    pub max_entry_bytes: u64,
    pub max_total_bytes: u64,
    pub max_entries: usize,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_entry_bytes: 64 << 20,
            max_total_bytes: 256 << 20,
            max_entries: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchiveError {
    #[error("not a gatehost bundle: {0}")]
    NotABundle(String),
    #[error("the bundle is truncated: {0}")]
    Truncated(String),
    #[error("entry '{path}': {why}")]
    BadEntry { path: String, why: String },
    #[error("entry '{0}' appears twice")]
    Duplicate(String),
    #[error("entry '{path}' is {size} bytes; the limit is {limit} bytes")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("the bundle holds more than {0} entries")]
    TooManyEntries(usize),
    #[error("the bundle's contents are more than {0} bytes")]
    TooLargeInTotal(u64),
    #[error("the bundle was modified: byte {offset} differs from what its contents produce (headers, padding or trailing data changed)")]
    NotCanonical { offset: usize },
}

const BLOCK: usize = 512;
/// The longest path a canonical header holds (ustar `name` field, no prefix).
pub(crate) const MAX_PATH: usize = 100;

/// Check a path for a bundle: relative, `/`-separated, no empty, `.` or `..` components, no
/// backslashes or control characters, at most [`MAX_PATH`] bytes.
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.len() > MAX_PATH {
        return Err(format!("the path is longer than {MAX_PATH} bytes"));
    }
    if path.starts_with('/') {
        return Err("absolute paths are not allowed".into());
    }
    if path.contains('\\') || path.chars().any(|c| c.is_control()) {
        return Err("backslashes and control characters are not allowed".into());
    }
    for part in path.split('/') {
        match part {
            "" => return Err("empty path components are not allowed".into()),
            "." | ".." => return Err("'.' and '..' components would escape the bundle".into()),
            _ => {}
        }
    }
    Ok(())
}

fn header(path: &str, size: usize) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..path.len()].copy_from_slice(path.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Write entries in the given order. Paths must pass [`check_path`] (the caller's job).
pub fn write(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        debug_assert!(check_path(&e.path).is_ok(), "{}", e.path);
        out.extend_from_slice(&header(&e.path, e.data.len()));
        out.extend_from_slice(&e.data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    out
}

fn octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// Read every entry, refusing anything a canonical bundle cannot hold, then check that the
/// bytes are exactly what [`write`] produces for those entries.
pub fn read(bytes: &[u8], limits: &ArchiveLimits) -> Result<Vec<Entry>, ArchiveError> {
    if bytes.len() < BLOCK || &bytes[257..262] != b"ustar" {
        let what = if bytes.starts_with(&[0x1f, 0x8b]) {
            "it is gzip-compressed; a .ghp bundle is a plain tar archive".to_string()
        } else if bytes.starts_with(b"PK") {
            "it is a zip archive; a .ghp bundle is a tar archive".to_string()
        } else if bytes.trim_ascii_start().starts_with(b"<") {
            "it looks like an HTML or XML page".to_string()
        } else if bytes.len() < BLOCK {
            format!("it is only {} bytes long", bytes.len())
        } else {
            "it does not start with a tar header".to_string()
        };
        return Err(ArchiveError::NotABundle(what));
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut total = 0u64;
    let mut at = 0usize;
    loop {
        let Some(h) = bytes.get(at..at + BLOCK) else {
            return Err(ArchiveError::Truncated(format!(
                "it ends at byte {} without the end-of-archive blocks",
                bytes.len()
            )));
        };
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let mut path = String::from_utf8_lossy(&h[..name_end]).into_owned();
        if h[345] != 0 {
            let prefix_end = 345 + h[345..500].iter().position(|&b| b == 0).unwrap_or(155);
            path = format!("{}/{path}", String::from_utf8_lossy(&h[345..prefix_end]));
        }
        let bad = |why: String| ArchiveError::BadEntry {
            path: path.clone(),
            why,
        };
        let stored_sum =
            octal(&h[148..156]).ok_or_else(|| bad("the header checksum is not a number".into()))?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    b' ' as u64
                } else {
                    b as u64
                }
            })
            .sum();
        if sum != stored_sum {
            return Err(bad(
                "the header checksum does not match (the header was changed)".into(),
            ));
        }
        match h[156] {
            b'0' | 0 => {}
            b'1' => {
                return Err(bad(
                    "hard links are not allowed; bundles hold regular files only".into(),
                ))
            }
            b'2' => {
                return Err(bad(
                    "symbolic links are not allowed; bundles hold regular files only".into(),
                ))
            }
            b'5' => {
                return Err(bad(
                    "directories are not stored; bundles hold regular files only".into(),
                ))
            }
            other => {
                return Err(bad(format!(
                    "entry type '{}' is not allowed; bundles hold regular files only",
                    other as char
                )))
            }
        }
        check_path(&path).map_err(bad)?;
        let size =
            octal(&h[124..136]).ok_or_else(|| bad("the size field is not a number".into()))?;
        if size > limits.max_entry_bytes {
            return Err(ArchiveError::TooLarge {
                path,
                size,
                limit: limits.max_entry_bytes,
            });
        }
        total += size;
        if total > limits.max_total_bytes {
            return Err(ArchiveError::TooLargeInTotal(limits.max_total_bytes));
        }
        if entries.len() == limits.max_entries {
            return Err(ArchiveError::TooManyEntries(limits.max_entries));
        }
        if entries.iter().any(|e| e.path == path) {
            return Err(ArchiveError::Duplicate(path));
        }
        let start = at + BLOCK;
        let end = start + size as usize;
        let Some(data) = bytes.get(start..end) else {
            return Err(ArchiveError::Truncated(format!(
                "entry '{path}' needs {size} bytes, {} are left",
                bytes.len().saturating_sub(start)
            )));
        };
        entries.push(Entry {
            path,
            data: data.to_vec(),
        });
        at = end.div_ceil(BLOCK) * BLOCK;
    }
    let canonical = write(&entries);
    if let Some(offset) = canonical.iter().zip(bytes).position(|(a, b)| a != b) {
        return Err(ArchiveError::NotCanonical { offset });
    }
    match canonical.len().cmp(&bytes.len()) {
        std::cmp::Ordering::Equal => Ok(entries),
        std::cmp::Ordering::Greater => Err(ArchiveError::Truncated(format!(
            "the end-of-archive blocks are cut short ({} of {} bytes)",
            bytes.len(),
            canonical.len()
        ))),
        std::cmp::Ordering::Less => Err(ArchiveError::NotCanonical {
            offset: canonical.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry {
                path: "bundle.toml".into(),
                data: b"name = \"x\"\n".to_vec(),
            },
            Entry {
                path: "payload/x.rhai".into(),
                data: vec![7u8; 1000],
            },
        ]
    }

    #[test]
    fn round_trip() {
        let bytes = write(&sample());
        assert_eq!(bytes.len() % BLOCK, 0);
        assert_eq!(read(&bytes, &ArchiveLimits::default()).unwrap(), sample());
    }

    #[test]
    fn every_changed_byte_is_noticed() {
        let bytes = write(&sample());
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x01;
            if let Ok(entries) = read(&changed, &ArchiveLimits::default()) {
                // Only the data can change and still parse; the signature catches that.
                assert_ne!(entries, sample(), "byte {i}");
            }
        }
    }

    #[test]
    fn bad_paths_are_named() {
        for (path, why) in [
            ("../evil", "escape"),
            ("a/../../b", "escape"),
            ("/etc/passwd", "absolute"),
            ("a//b", "empty"),
            ("a\\b", "backslash"),
        ] {
            let e = check_path(path).unwrap_err();
            assert!(e.contains(why), "{path}: {e}");
        }
    }

    #[test]
    fn limits_apply() {
        let bytes = write(&sample());
        let limits = ArchiveLimits {
            max_entry_bytes: 999,
            ..ArchiveLimits::default()
        };
        assert_eq!(
            read(&bytes, &limits),
            Err(ArchiveError::TooLarge {
                path: "payload/x.rhai".into(),
                size: 1000,
                limit: 999
            })
        );
        assert!(matches!(
            read(&bytes[..1200], &ArchiveLimits::default()),
            Err(ArchiveError::Truncated(_))
        ));
        assert!(matches!(
            read(b"<html>nope</html>", &ArchiveLimits::default()),
            Err(ArchiveError::NotABundle(_))
        ));
    }
}
