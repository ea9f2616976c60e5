//! The `http` capability: outbound HTTP(S) requests for plugins (reqwest, with the same rustls
//! configuration as MQTT: CA file or system roots, client certificate by key handle). The URL's
//! endpoint, and every redirect target, must match the plugin's declared endpoints. 2xx and 3xx
//! answers are returned; 4xx and 5xx are typed errors that carry the status, `Retry-After` and
//! the start of the body — unless the request sets `errors_as_responses`.

pub mod rhai;
pub mod wasm;

use super::tls::{self, TlsOptions};
use super::CapContext;
use crate::model::{ClientCertificate, ErrorKind, Pair, PluginError};
use std::time::Duration;

/// The largest response body a plugin receives.
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_REDIRECTS: usize = 10;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: Vec<Pair>,
    #[serde(default)]
    pub body: Vec<u8>,
    /// 0 = the default (30 s).
    #[serde(default)]
    pub timeout_ms: u32,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub client_certificate: Option<ClientCertificate>,
    /// Return 4xx/5xx answers as responses instead of errors.
    #[serde(default)]
    pub errors_as_responses: bool,
}

fn default_method() -> String {
    "GET".into()
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<Pair>,
    pub body: Vec<u8>,
}

fn err(kind: ErrorKind, message: String) -> PluginError {
    PluginError::new(kind, message)
}

pub fn send(ctx: &CapContext, r: &Request) -> Result<Response, PluginError> {
    let url = reqwest::Url::parse(&r.url).map_err(|e| {
        err(
            ErrorKind::InvalidInput,
            format!("'{}' is not a valid URL: {e}", r.url),
        )
    })?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(err(
            ErrorKind::InvalidInput,
            format!("'{}' is not an http(s) URL", r.url),
        ));
    }
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    ctx.check_endpoint(&host, port)?;
    let method =
        reqwest::Method::from_bytes(r.method.to_ascii_uppercase().as_bytes()).map_err(|_| {
            err(
                ErrorKind::InvalidInput,
                format!("'{}' is not an HTTP method", r.method),
            )
        })?;

    let tls_options = TlsOptions {
        ca_file: r.ca_file.clone(),
        client_certificate: match &r.client_certificate {
            None => None,
            Some(c) => Some((
                c.chain_file.clone(),
                super::certs::open_key(ctx, &c.key_ref)?,
            )),
        },
        server_name: None,
        alpn: vec!["http/1.1".into()],
    };
    let tls = tls::client_config(ctx, &host, &tls_options)?;
    let redirect_ctx = ctx.clone();
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        let url = attempt.url();
        let host = url.host_str().unwrap_or_default();
        match redirect_ctx.check_endpoint(host, url.port_or_known_default().unwrap_or(443)) {
            Ok(()) => attempt.follow(),
            Err(e) => attempt.error(e.message),
        }
    });
    let asked = match r.timeout_ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(ms.into()),
    };
    // No longer than what is left of the plugin call.
    let timeout = super::deadline::bound(asked);
    if timeout.is_zero() {
        return Err(super::deadline::passed("an HTTP request")
            .unwrap_or_else(|| err(ErrorKind::Timeout, "no time left for the request".into())));
    }
    let client = reqwest::blocking::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .redirect(policy)
        .timeout(timeout)
        .build()
        .map_err(|e| err(ErrorKind::Io, format!("HTTP client set-up failed: {e}")))?;
    let mut request = client.request(method, url).body(r.body.clone());
    for (k, v) in &r.headers {
        request = request.header(k, v);
    }
    let response =
        super::deadline::blocking(|| request.send()).map_err(|e| match super::deadline::passed(
            &format!("an HTTP request to {}", r.url),
        ) {
            Some(deadline) if e.is_timeout() => deadline,
            _ => failure(&r.url, timeout, &e),
        })?;
    let status = response.status().as_u16();
    let headers: Vec<Pair> = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = read_body(response, &r.url)?;
    if status >= 400 && !r.errors_as_responses {
        return Err(status_error(&r.url, status, &headers, &body));
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn read_body(response: reqwest::blocking::Response, url: &str) -> Result<Vec<u8>, PluginError> {
    use std::io::Read;
    let mut body = Vec::new();
    response
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| {
            err(
                ErrorKind::Io,
                format!("reading the answer of {url} failed: {e}"),
            )
        })?;
    if body.len() > MAX_BODY_BYTES {
        return Err(err(
            ErrorKind::LimitExceeded,
            format!("the answer of {url} is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    Ok(body)
}

fn status_error(url: &str, status: u16, headers: &[Pair], body: &[u8]) -> PluginError {
    let kind = match status {
        401 | 403 => ErrorKind::Refused,
        404 => ErrorKind::NotFound,
        429 => ErrorKind::LimitExceeded,
        _ => ErrorKind::Remote,
    };
    let retry = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .map(|(_, v)| format!(", retry after {v} s"))
        .unwrap_or_default();
    let text = String::from_utf8_lossy(body);
    let excerpt: String = text
        .chars()
        .take(300)
        .collect::<String>()
        .replace('\n', " ");
    err(
        kind,
        format!("{url} answered HTTP {status}{retry}: {excerpt}"),
    )
}

fn failure(url: &str, timeout: Duration, e: &reqwest::Error) -> PluginError {
    if e.is_timeout() {
        return err(
            ErrorKind::Timeout,
            format!("{url} did not answer within {} ms", timeout.as_millis()),
        );
    }
    if e.is_redirect() {
        let why = std::error::Error::source(e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        return err(
            ErrorKind::PermissionDenied,
            format!("{url} redirected where the plugin may not go: {why}"),
        );
    }
    if let Some(tls_error) = crate::pki::tls::find_rustls_error(e) {
        return err(
            ErrorKind::Tls,
            format!(
                "TLS with {url} failed: {}",
                crate::pki::tls::describe(tls_error)
            ),
        );
    }
    // The innermost cause says what happened (refused, reset, DNS).
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    err(ErrorKind::Io, format!("request to {url} failed: {root}"))
}
