//! Getting bundle bytes from where an operator points: a path, a `file://` URL, or an
//! `https://` URL (verified TLS: system roots or a given CA file). Bounded in size and time;
//! an HTML page, a redirect loop or a plain `http://` URL is refused with the reason.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct FetchOptions {
    /// PEM file of CA certificates for HTTPS (default: the system roots).
    pub ca_file: Option<std::path::PathBuf>,
    pub timeout: Duration,
    pub max_bytes: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            ca_file: None,
            timeout: Duration::from_secs(60),
            max_bytes: 256 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {why}")]
pub(crate) struct FetchError {
    pub source_name: String,
    pub why: String,
}

/// The bytes at `source`.
pub(crate) fn fetch(source: &str, options: &FetchOptions) -> Result<Vec<u8>, FetchError> {
    let err = |why: String| FetchError {
        source_name: source.to_string(),
        why,
    };
    if let Some(rest) = source.strip_prefix("file://") {
        return read_file(Path::new(rest), options.max_bytes).map_err(err);
    }
    if source.starts_with("https://") {
        return download(source, options).map_err(err);
    }
    if source.starts_with("http://") {
        return Err(err(
            "plain http:// is not accepted; serve bundles over https:// or copy the file".into(),
        ));
    }
    if source.contains("://") {
        return Err(err(
            "unsupported URL scheme (use a path, file:// or https://)".into(),
        ));
    }
    read_file(Path::new(source), options.max_bytes).map_err(err)
}

fn read_file(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Err("is a directory, not a bundle file".into());
    }
    if meta.len() > max {
        return Err(format!(
            "is {} bytes; a bundle may be at most {max} bytes",
            meta.len()
        ));
    }
    let mut data = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| e.to_string())?;
    Ok(data)
}

fn download(url: &str, options: &FetchOptions) -> Result<Vec<u8>, String> {
    let ca = match &options.ca_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let ca_name = options
        .ca_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let roots = crate::pki::tls::roots_from(ca.as_deref().map(|pem| (pem, ca_name.as_str())))
        .map_err(|e| e.message)?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = reqwest::blocking::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            if attempt.url().scheme() != "https" {
                attempt.error("redirected away from https")
            } else if attempt.previous().len() >= 5 {
                attempt.error("more than 5 redirects")
            } else {
                attempt.follow()
            }
        }))
        .connect_timeout(options.timeout.min(Duration::from_secs(10)))
        .timeout(options.timeout)
        .build()
        .map_err(|e| format!("HTTP client set-up failed: {e}"))?;
    let describe = |e: reqwest::Error| {
        if e.is_timeout() {
            format!("no complete answer within {} s", options.timeout.as_secs())
        } else {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    };
    let response = client.get(url).send().map_err(describe)?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("the server answered HTTP {status}"));
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("text/html") {
        return Err(format!(
            "the server returned an HTML page (content-type {content_type}), not a bundle; check the URL"
        ));
    }
    if let Some(len) = response.content_length() {
        if len > options.max_bytes {
            return Err(format!(
                "the bundle is {len} bytes; at most {} are accepted",
                options.max_bytes
            ));
        }
    }
    let mut data = Vec::new();
    response
        .take(options.max_bytes + 1)
        .read_to_end(&mut data)
        .map_err(|e| {
            if e.to_string().contains("timed out") {
                format!("no complete answer within {} s", options.timeout.as_secs())
            } else {
                format!("reading the answer failed: {e}")
            }
        })?;
    if data.len() as u64 > options.max_bytes {
        return Err(format!(
            "the bundle is larger than {} bytes",
            options.max_bytes
        ));
    }
    Ok(data)
}
