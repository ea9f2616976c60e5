//! Secrets the host knows — device keys and passwords from the config, the SAS tokens, JWTs and
//! derived device keys it mints for plugins — and the one place that takes them out of the log
//! lines plugins produce (`log::*`, Rhai `print`/`debug`, a WASM guest's stdout and stderr).
//! A plugin that logs its parameters or a token therefore writes `<redacted>` into the journal.
//!
//! The list is process-wide and bounded; strings shorter than [`MIN_LEN`] are not kept (they
//! would blank ordinary words), so a secret that short is not protected here.

use std::borrow::Cow;
use std::sync::RwLock;

/// Shorter strings are not treated as secrets.
pub(crate) const MIN_LEN: usize = 8;
/// The most secrets kept; the oldest go first (a gateway mints a token per connection).
pub(crate) const MAX_KNOWN: usize = 4096;
const MARK: &str = "<redacted>";

static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remember `secret` so that log lines of plugins never show it.
pub(crate) fn remember(secret: &str) {
    if secret.len() < MIN_LEN {
        return;
    }
    let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
    if known.iter().any(|k| k == secret) {
        return;
    }
    if known.len() >= MAX_KNOWN {
        known.remove(0);
    }
    known.push(secret.to_string());
}

/// `text` with every known secret replaced by `<redacted>`.
pub(crate) fn redact(text: &str) -> Cow<'_, str> {
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    let mut out = Cow::Borrowed(text);
    // Longest first, so a token that contains a key is blanked whole.
    let mut hits: Vec<&String> = known.iter().filter(|k| text.contains(k.as_str())).collect();
    hits.sort_by_key(|k| std::cmp::Reverse(k.len()));
    for secret in hits {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), MARK));
        }
    }
    out
}

/// Whether a flow parameter named `name` with `value` is a secret: a key given as base64
/// (`symmetric_key`, `group_key`, `key`, ... — not a key *file*), or a password, secret, token
/// or passphrase.
pub(crate) fn is_secret_param(name: &str, value: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if ["password", "secret", "token", "passphrase"]
        .iter()
        .any(|w| name.contains(w))
    {
        return true;
    }
    (name == "key" || name.ends_with("_key"))
        && base64::Engine::decode(&base64::engine::general_purpose::STANDARD, value)
            .is_ok_and(|k| k.len() >= 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_secrets_are_blanked_and_short_strings_are_not_kept() {
        remember("c2VjcmV0IGRldmljZSBrZXkgZm9yIHRlc3Rz");
        remember("SharedAccessSignature sr=hub&sig=abc%2Bdef&se=1");
        remember("short");
        assert_eq!(
            redact("key=c2VjcmV0IGRldmljZSBrZXkgZm9yIHRlc3Rz token=SharedAccessSignature sr=hub&sig=abc%2Bdef&se=1 short"),
            "key=<redacted> token=<redacted> short"
        );
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn secret_parameters_are_told_from_paths() {
        assert!(is_secret_param(
            "symmetric_key",
            "c2VjcmV0IGRldmljZSBrZXkgZm9yIHRlc3Rz"
        ));
        assert!(is_secret_param("password", "hunter22"));
        assert!(!is_secret_param("key", "certs/dev01.key"));
        assert!(!is_secret_param("registration_id", "press7-registration"));
    }
}
