//! The JSON-lines files the server's state is saved in (retained messages, persistent
//! sessions): written whole to a new file, synced and renamed over the old one, so a crash
//! leaves the old or the new file, never half of one; read back line by line, a bad line named.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

/// Write `items` to `path`, one JSON value per line.
pub(crate) fn save<T: Serialize>(
    path: &Path,
    items: impl IntoIterator<Item = T>,
) -> std::io::Result<()> {
    let mut text = Vec::new();
    for item in items {
        serde_json::to_writer(&mut text, &item).map_err(std::io::Error::other)?;
        text.push(b'\n');
    }
    let fresh = path.with_extension("jsonl.new");
    {
        let mut file = std::fs::File::create(&fresh)?;
        file.write_all(&text)?;
        file.sync_all()?;
    }
    std::fs::rename(&fresh, path)
}

/// The values in `path`, each parsed or the sentence naming its line (none when the file does
/// not exist).
pub fn load<T: DeserializeOwned>(path: &Path) -> std::io::Result<Vec<Result<T, String>>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut items = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        items.push(
            serde_json::from_str(&line)
                .map_err(|e| format!("{} line {}: {e}", path.display(), n + 1)),
        );
    }
    Ok(items)
}
