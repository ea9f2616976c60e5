//! The `http` capability against a local HTTPS server (Python's http.server and ssl) that
//! requires a client certificate: requests, redirects, status errors, permissions.

use crate::support::mosquitto::Pki;
use crate::support::PluginDir;
use gatehost::caps::http::{send, Request};
use gatehost::caps::{CapContext, Permissions};
use gatehost::model::{ClientCertificate, ErrorKind, Message};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const SERVER_PY: &str = r#"
import http.server, json, ssl, sys
cert, key, ca = sys.argv[1:4]
class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args): pass
    def reply(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in headers: self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        if self.path == "/redirect": return self.reply(302, {}, [("Location", "/ok")])
        if self.path == "/away": return self.reply(302, {}, [("Location", "https://evil.example:8443/x")])
        if self.path == "/missing": return self.reply(404, {"errorCode": 404201, "message": "Device not found"})
        if self.path == "/throttle": return self.reply(429, {"message": "slow down"}, [("Retry-After", "3")])
        cn = dict(x[0] for x in self.connection.getpeercert()["subject"])["commonName"]
        self.reply(200, {"path": self.path, "client": cn})
    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.reply(202, {"got": body.decode(), "type": self.headers["Content-Type"]})
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.load_verify_locations(ca)
context.verify_mode = ssl.CERT_REQUIRED
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(pki: &Pki) -> Server {
        let mut child = Command::new("python3")
            .args([
                "-c",
                SERVER_PY,
                &pki.path("server.pem"),
                &pki.path("server.key"),
                &pki.path("ca.pem"),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        Server {
            port: line.trim().parse().expect("the server prints its port"),
            child,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctx(pki: &Pki, endpoints: &[String]) -> CapContext {
    CapContext::ephemeral(
        "http-test",
        Permissions {
            endpoints: endpoints.to_vec(),
            file_roots: vec![pki.dir.display().to_string()],
            kv_namespace: None,
        },
    )
}

fn request(pki: &Pki, url: String) -> Request {
    Request {
        method: "GET".into(),
        url,
        headers: vec![],
        body: vec![],
        timeout_ms: 5000,
        ca_file: Some(pki.path("ca.pem")),
        client_certificate: Some(ClientCertificate {
            chain_file: pki.path("dev01_chain.pem"),
            key_ref: format!("file:{}", pki.path("dev01.key")),
        }),
        errors_as_responses: false,
    }
}

#[test]
fn https_with_a_client_certificate_redirects_and_status_errors() {
    let pki = Pki::new();
    let server = Server::start(&pki);
    let base = format!("https://localhost:{}", server.port);
    let ctx = ctx(&pki, &[format!("localhost:{}", server.port)]);

    let answer = send(&ctx, &request(&pki, format!("{base}/hello"))).unwrap();
    assert_eq!(answer.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        body["client"], "dev01",
        "the server saw our client certificate"
    );

    let mut put = request(&pki, format!("{base}/registrations/dev01/register"));
    put.method = "PUT".into();
    put.headers = vec![("Content-Type".into(), "application/json".into())];
    put.body = br#"{"registrationId":"dev01"}"#.to_vec();
    let answer = send(&ctx, &put).unwrap();
    assert_eq!(answer.status, 202);
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["got"], r#"{"registrationId":"dev01"}"#);
    assert_eq!(body["type"], "application/json");

    let answer = send(&ctx, &request(&pki, format!("{base}/redirect"))).unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&answer.body).unwrap()["path"],
        "/ok"
    );

    let e = send(&ctx, &request(&pki, format!("{base}/missing"))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert_eq!(
        e.message,
        format!(
            r#"{base}/missing answered HTTP 404: {{"errorCode": 404201, "message": "Device not found"}}"#
        )
    );
    let e = send(&ctx, &request(&pki, format!("{base}/throttle"))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::LimitExceeded);
    assert!(
        e.message.starts_with(&format!(
            "{base}/throttle answered HTTP 429, retry after 3 s: "
        )),
        "{e}"
    );
    // A plugin that reads error bodies itself asks for them as responses.
    let mut raw = request(&pki, format!("{base}/throttle"));
    raw.errors_as_responses = true;
    let answer = send(&ctx, &raw).unwrap();
    assert_eq!(answer.status, 429);
    assert!(answer
        .headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("retry-after") && v == "3"));

    let e = send(&ctx, &request(&pki, format!("{base}/away"))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    assert!(
        e.message.contains("may not connect to evil.example:8443"),
        "{e}"
    );
}

#[test]
fn bad_requests_and_failing_servers_are_typed_errors() {
    let pki = Pki::new();
    let server = Server::start(&pki);
    let ctx = ctx(
        &pki,
        &["localhost:*".to_string(), "127.0.0.1:*".to_string()],
    );

    let e = send(&ctx, &request(&pki, "not a url".into())).unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (
            ErrorKind::InvalidInput,
            "'not a url' is not a valid URL: relative URL without a base"
        )
    );
    let e = send(&ctx, &request(&pki, "ftp://localhost/x".into())).unwrap_err();
    assert_eq!(e.message, "'ftp://localhost/x' is not an http(s) URL");

    // The server's certificate is from a CA we do not trust.
    let mut r = request(&pki, format!("https://localhost:{}/x", server.port));
    r.ca_file = Some(pki.path("rogue-ca.pem"));
    let e = send(&ctx, &r).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Tls, "{e}");

    // No client certificate: the server refuses the handshake.
    let mut r = request(&pki, format!("https://localhost:{}/x", server.port));
    r.client_certificate = None;
    let e = send(&ctx, &r).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Tls | ErrorKind::Io), "{e}");

    // A server that never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut r = request(
        &pki,
        format!(
            "https://127.0.0.1:{}/x",
            silent.local_addr().unwrap().port()
        ),
    );
    r.timeout_ms = 500;
    let e = send(&ctx, &r).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(e.message.ends_with("did not answer within 500 ms"), "{e}");

    // An undeclared endpoint.
    let e = send(&ctx, &request(&pki, "https://example.com/x".into())).unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
}

/// The Rhai twin of plugins/fixtures/http-rule.
const HTTP_RULE_RHAI: &str = r#"
fn property(msg, name) {
    for p in msg.properties { if p[0] == name { return p[1]; } }
    ""
}
fn translate(msg) {
    let answer = http::send(#{
        method: "PUT",
        url: property(msg, "url"),
        headers: [["Content-Type", "application/json"]],
        body: msg.payload,
        timeout_ms: 5000,
        ca_file: property(msg, "ca"),
        client_certificate: #{ chain_file: property(msg, "chain"), key_ref: `file:${property(msg, "key")}` }
    });
    let denied = "allowed";
    try { http::send(#{ url: "https://localhost:1/x" }); }
    catch (e) { denied = if e.kind == "permission-denied" { e.kind } else { "other-error" }; }
    #{ local: true, topic: `status/${answer.status}/${denied}`, payload: answer.body }
}
"#;

#[test]
fn rhai_and_wasm_plugins_send_the_same_https_requests() {
    let pki = Pki::new();
    let server = Server::start(&pki);
    let dir = PluginDir::new();
    let perms = format!(
        "[permissions]\nendpoints = [\"localhost:{}\"]\nfile_roots = [\"{}\"]",
        server.port,
        pki.dir.display()
    );
    let rhai = dir.rhai("rest", "rule", HTTP_RULE_RHAI, &perms);
    let wasm = dir.wasm(
        "rest-wasm",
        "rule",
        &crate::support::wasm("fixture_http_rule"),
        &perms,
    );
    let mut msg = Message::new("t", r#"{"registrationId":"dev01"}"#, 0);
    msg.properties = vec![
        (
            "url".into(),
            format!("https://localhost:{}/register", server.port),
        ),
        ("ca".into(), pki.path("ca.pem")),
        ("chain".into(), pki.path("dev01_chain.pem")),
        ("key".into(), pki.path("dev01.key")),
    ];
    let mut outputs = Vec::new();
    for manifest in [rhai, wasm] {
        let out = crate::support::load_rule(dir.env(), &manifest)
            .translate(&msg)
            .unwrap();
        assert_eq!(out[0].message.topic, "status/202/permission-denied");
        let body: serde_json::Value = serde_json::from_slice(&out[0].message.payload).unwrap();
        assert_eq!(body["got"], r#"{"registrationId":"dev01"}"#);
        assert_eq!(body["type"], "application/json");
        outputs.push(out);
    }
    assert_eq!(outputs[0], outputs[1], "both engines give the same result");

    // An undeclared URL fails both plugins with the same kind of error.
    msg.properties[0].1 = "https://localhost:1/nothing".into();
    let errors: Vec<_> = ["rest", "rest-wasm"]
        .iter()
        .map(|name| {
            crate::support::load_rule(dir.env(), &dir.path().join(format!("{name}.toml")))
                .translate(&msg)
                .unwrap_err()
        })
        .collect();
    assert_eq!(errors[0].kind, ErrorKind::PermissionDenied);
    assert_eq!(errors[0].kind, errors[1].kind);
}
