//! DPS over HTTPS (the REST API), sharing enrollments, operations and throttling with DPS over
//! MQTT: `PUT /<idScope>/registrations/<registrationId>/register?api-version=..` and
//! `GET /<idScope>/registrations/<registrationId>/operations/<operationId>?api-version=..`,
//! authenticated by a SAS token in `Authorization` or by the TLS client certificate. HTTP is
//! served by hyper over tokio-rustls.

use super::dps::{Caller, Dps, Reply};
use crate::events::{Event, Recorder};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The largest request body DPS reads (a register body with custom payload).
const MAX_BODY: usize = 64 * 1024;
/// How much of a body over [`MAX_BODY`] is read (and thrown away) before answering 413.
const DRAIN_MAX: usize = 16 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const SERVICE: &str = "dps-rest";

/// Listen on `addr` (port 0 = any) and serve DPS's REST API on the current tokio runtime; the
/// port it listens on.
pub async fn serve(
    addr: &str,
    tls: Arc<rustls::ServerConfig>,
    dps: Arc<Dps>,
    recorder: Arc<Recorder>,
) -> std::io::Result<u16> {
    let listener = TcpListener::bind(addr).await?;
    let port = listener.local_addr()?.port();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            let (acceptor, dps, recorder) = (acceptor.clone(), dps.clone(), recorder.clone());
            tokio::spawn(async move {
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            recorder.push(
                                Event::new(SERVICE, "tls-failed", "")
                                    .detail(format!("TLS handshake with {peer} failed: {e}")),
                            );
                            return;
                        }
                        Err(_) => {
                            recorder.push(Event::new(SERVICE, "tls-failed", "").detail(format!(
                                "{peer} did not complete the TLS handshake in time"
                            )));
                            return;
                        }
                    };
                let chain: Arc<Vec<Vec<u8>>> = Arc::new(
                    stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
                        .unwrap_or_default(),
                );
                let service = hyper::service::service_fn(move |request| {
                    let (dps, recorder, chain) = (dps.clone(), recorder.clone(), chain.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            handle(&dps, &recorder, &chain, request).await,
                        )
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                // A client that breaks the connection mid-request only ends its own connection.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(port)
}

/// The request, as far as DPS cares: register (no operation id) or operation status.
#[derive(Debug, PartialEq)]
struct Route {
    scope: String,
    registration_id: String,
    operation_id: Option<String>,
}

/// Match a method and path against the two operations; the HTTP error otherwise.
fn route(method: &Method, path: &str) -> Result<Route, (StatusCode, String)> {
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (scope, id, operation_id, wanted) = match parts[..] {
        [scope, "registrations", id, "register"] => (scope, id, None, Method::PUT),
        [scope, "registrations", id, "operations", op] if !op.is_empty() => {
            (scope, id, Some(op.to_string()), Method::GET)
        }
        _ => ("", "", None, Method::PUT),
    };
    if scope.is_empty() || id.is_empty() {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no DPS operation at '{path}'"),
        ));
    }
    if *method != wanted {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            format!("'{path}' takes {wanted}, not {method}"),
        ));
    }
    Ok(Route {
        scope: scope.to_string(),
        registration_id: id.to_string(),
        operation_id,
    })
}

async fn handle(
    dps: &Dps,
    recorder: &Recorder,
    chain: &[Vec<u8>],
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let refuse = |status: StatusCode, id: &str, why: String| {
        recorder.push(Event::new(SERVICE, "bad-request", id).detail(why.clone()));
        error_response(status, &why)
    };
    let route = match route(request.method(), &path) {
        Ok(route) => route,
        Err((status, why)) => return refuse(status, "", why),
    };
    if !query.split('&').any(|kv| kv.starts_with("api-version=")) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "",
            format!("'{path}' has no api-version query parameter"),
        );
    }
    let sas = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("<not text>").to_string())
        .unwrap_or_default();
    // Read the whole body (past the limit only to drain it, up to DRAIN_MAX): answering
    // before it is read makes the server close the connection under a client still sending,
    // which then sees a broken pipe instead of the 413.
    let mut body = request.into_body();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "",
                "the request body could not be read".to_string(),
            );
        };
        if let Some(data) = frame.data_ref() {
            seen += data.len();
            if seen <= MAX_BODY {
                kept.extend_from_slice(data);
            } else if seen > DRAIN_MAX {
                break;
            }
        }
    }
    if seen > MAX_BODY {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
            format!("the request body of {seen} bytes or more is over the {MAX_BODY}-byte limit"),
        );
    }
    let body = bytes::Bytes::from(kept);
    let auth = dps.authenticate(&route.scope, &route.registration_id, &sas, chain);
    let caller = Caller {
        transport: SERVICE,
        registration_id: &route.registration_id,
        auth: &auth,
    };
    let reply = match &route.operation_id {
        None => dps.register(&caller, &body),
        Some(operation_id) => dps.operation_status(&caller, operation_id),
    };
    json_response(reply)
}

fn json_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut response = Response::builder()
        .status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(
            hyper::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        );
    if let Some(secs) = reply.retry_after {
        response = response.header(hyper::header::RETRY_AFTER, secs);
    }
    response
        .body(Full::new(Bytes::from(reply.body.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn error_response(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(Reply {
        status: status.as_u16(),
        retry_after: None,
        body: json!({
            "errorCode": status.as_u16() as u32 * 1000,
            "trackingId": uuid::Uuid::new_v4().to_string(),
            "message": message,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_the_two_operations() {
        assert_eq!(
            route(&Method::PUT, "/0ne00SANDBOX/registrations/dev%2D1/register"),
            Ok(Route {
                scope: "0ne00SANDBOX".into(),
                registration_id: "dev-1".into(),
                operation_id: None
            })
        );
        assert_eq!(
            route(&Method::GET, "/s/registrations/d/operations/4.abc"),
            Ok(Route {
                scope: "s".into(),
                registration_id: "d".into(),
                operation_id: Some("4.abc".into())
            })
        );
        assert_eq!(
            route(&Method::GET, "/s/registrations/d/register")
                .unwrap_err()
                .0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            route(&Method::PUT, "/s/registrations//register")
                .unwrap_err()
                .0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            route(&Method::PUT, "/").unwrap_err().0,
            StatusCode::NOT_FOUND
        );
    }
}
