//! The `time` capability: a bounded wait for flows (DPS `retry-after`, retry backoff). Both
//! engines stop a plugin that runs past its deadline; one wait is capped so that a plugin cannot
//! park its thread for long in a single host call.

pub mod rhai;
pub mod wasm;

use crate::caps::CapContext;
use crate::model::{ErrorKind, PluginError};
use std::time::Duration;

/// The longest single wait.
pub(crate) const MAX_SLEEP_MS: u64 = 60_000;

/// Sleep `ms` milliseconds, or refuse a wait over [`MAX_SLEEP_MS`].
pub fn sleep_ms(ctx: &CapContext, ms: u64) -> Result<(), PluginError> {
    if ms > MAX_SLEEP_MS {
        return Err(PluginError::new(
            ErrorKind::InvalidInput,
            format!(
                "{}: a wait of {ms} ms is longer than the {MAX_SLEEP_MS} ms one call may take",
                ctx.plugin
            ),
        ));
    }
    let wanted = Duration::from_millis(ms);
    let allowed = super::deadline::bound(wanted);
    super::deadline::blocking(|| std::thread::sleep(allowed));
    match super::deadline::passed("time::sleep_ms") {
        Some(e) if allowed < wanted => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::Permissions;

    #[test]
    fn long_waits_are_refused_short_ones_wait() {
        let ctx = CapContext::ephemeral("flow", Permissions::default());
        let e = sleep_ms(&ctx, MAX_SLEEP_MS + 1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert_eq!(
            e.message,
            "flow: a wait of 60001 ms is longer than the 60000 ms one call may take"
        );
        let start = std::time::Instant::now();
        sleep_ms(&ctx, 20).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
