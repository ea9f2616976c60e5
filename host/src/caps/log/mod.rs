//! The `log` capability: plugin log lines go to the host's tracing subscriber, tagged with the
//! plugin's name.

pub mod rhai;
pub mod wasm;

use super::CapContext;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn parse(name: &str) -> Option<Level> {
        Some(match name {
            "trace" => Level::Trace,
            "debug" => Level::Debug,
            "info" => Level::Info,
            "warn" => Level::Warn,
            "error" => Level::Error,
            _ => return None,
        })
    }
}

/// Longest log message a plugin may emit; longer ones are cut (and say so).
pub(crate) const MAX_MESSAGE_BYTES: usize = 8 * 1024;

pub fn log(ctx: &CapContext, level: Level, message: &str) {
    let message = crate::redact::redact(message);
    let message = truncate(&message);
    let plugin = &*ctx.plugin;
    match level {
        Level::Trace => tracing::trace!(plugin, "{message}"),
        Level::Debug => tracing::debug!(plugin, "{message}"),
        Level::Info => tracing::info!(plugin, "{message}"),
        Level::Warn => tracing::warn!(plugin, "{message}"),
        Level::Error => tracing::error!(plugin, "{message}"),
    }
}

fn truncate(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.into();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... [truncated {} bytes]",
        &message[..end],
        message.len() - end
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = truncate(&long);
        assert!(cut.ends_with(&format!("[truncated {} bytes]", MAX_MESSAGE_BYTES)));
        assert!(truncate("short").len() == 5);
    }

    #[test]
    fn levels_parse_by_wit_name() {
        assert_eq!(Level::parse("warn"), Some(Level::Warn));
        assert_eq!(Level::parse("loud"), None);
    }
}
