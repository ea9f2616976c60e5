//! DPS over HTTPS: gatehost's HTTP capability (SAS in `Authorization`) and the `curl` CLI (client
//! certificate) register through the sandbox's REST API, which shares enrollments and
//! operations with DPS over MQTT; every malformed request gets its 4xx.

use crate::support::sandbox::{ctx, start_sandbox, DEVICE_KEY};
use gatehost::caps::http::{self, Request, Response};
use gatehost::caps::CapContext;
use gatehost::pki::crypto;
use gatehost::sandbox::{Sandbox, Service};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const API: &str = "api-version=2021-06-01";

fn token(id: &str, key: &str) -> String {
    crypto::sas_token(
        &format!("0ne00SANDBOX/registrations/{id}"),
        key,
        Some("registration"),
        crypto::now_unix() + 600,
    )
    .unwrap()
}

/// gatehost's HTTP capability (as a flow would use it) for the answers it returns as success.
fn send(
    ctx: &CapContext,
    sandbox: &Sandbox,
    method: &str,
    path: &str,
    auth: &str,
    body: &str,
) -> Response {
    let port = sandbox.port(Service::DpsRest).unwrap();
    let request = Request {
        method: method.into(),
        url: format!("https://localhost:{port}{path}"),
        headers: vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            ("Authorization".to_string(), auth.to_string()),
        ],
        body: body.as_bytes().to_vec(),
        timeout_ms: 5000,
        ca_file: Some(sandbox.ca_file().display().to_string()),
        client_certificate: None,
        errors_as_responses: false,
    };
    http::send(ctx, &request).unwrap()
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.body)))
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `curl` against the sandbox's REST port with an optional `Authorization` header and client
/// certificate (`<name>.pem` with `<name>_chain.pem` and `<name>.key` beside it): (status, JSON body).
fn curl(
    sandbox: &Sandbox,
    method: &str,
    path: &str,
    body: &str,
    auth: Option<&str>,
    cert: Option<&Path>,
) -> (u16, serde_json::Value) {
    let port = sandbox.port(Service::DpsRest).unwrap();
    // The body from a file: a 200 KB one does not fit on a command line.
    let body_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body_file.path(), body).unwrap();
    let mut command = Command::new("curl");
    command
        .args(["-sS", "-X", method, "--cacert"])
        .arg(sandbox.ca_file())
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", body_file.path().display()))
        .args(["-w", "\n%{http_code}"]);
    if let Some(auth) = auth {
        command.args(["-H", &format!("Authorization: {auth}")]);
    }
    if let Some(cert) = cert {
        let stem = cert.file_stem().unwrap().to_string_lossy();
        command
            .arg("--cert")
            .arg(cert.with_file_name(format!("{stem}_chain.pem")))
            .arg("--key")
            .arg(cert.with_extension("key"));
    }
    let out = command
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (code.parse().unwrap(), json)
}

#[test]
fn dps_rest_registers_with_a_sas_token_and_answers_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = start_sandbox(dir.path(), "");
    let ctx = ctx(dir.path());
    let sas = token("sym-dev", DEVICE_KEY);
    let register = format!("/0ne00SANDBOX/registrations/sym-dev/register?{API}");

    let r = send(
        &ctx,
        &sandbox,
        "PUT",
        &register,
        &sas,
        r#"{"registrationId":"sym-dev","payload":{"site":"plant1"}}"#,
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(header(&r, "retry-after"), Some("1"));
    let op = json(&r)["operationId"].as_str().unwrap().to_string();
    assert_eq!(json(&r)["status"], "assigning");
    let status = format!("/0ne00SANDBOX/registrations/sym-dev/operations/{op}?{API}");
    let r = send(&ctx, &sandbox, "GET", &status, &sas, "");
    assert_eq!(r.status, 202);
    std::thread::sleep(Duration::from_millis(350));
    let r = send(&ctx, &sandbox, "GET", &status, &sas, "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let state = &json(&r)["registrationState"];
    assert_eq!(json(&r)["status"], "assigned");
    assert_eq!(state["assignedHub"], "localhost");
    assert_eq!(state["deviceId"], "sym-dev");
    assert_eq!(state["payload"]["site"], "plant1");
    assert!(state["createdDateTimeUtc"].is_string());
    assert!(sandbox
        .recorder
        .of("dps-rest", "assigned")
        .iter()
        .any(|r| r.identity.as_deref() == Some("sas:sym-dev")));

    // Credentials: none, a wrong key, a token for another registration.
    let wrong = token("sym-dev", &crypto::base64_encode(b"not the enrolled key"));
    let someone_else = token("other", DEVICE_KEY);
    for (auth, why) in [
        (None, "neither a SAS token nor a client certificate"),
        (Some(wrong.as_str()), "the SAS signature does not match"),
        (Some(someone_else.as_str()), "the SAS token is for resource"),
    ] {
        let (code, body) = curl(&sandbox, "PUT", &register, "{}", auth, None);
        assert_eq!(code, 401, "{why}");
        assert_eq!(body["errorCode"], 401002);
        assert!(
            sandbox
                .recorder
                .wait_for(Duration::from_secs(2), |r| r.service == "dps-rest"
                    && r.event == "unauthorized"
                    && r.detail.starts_with(why))
                .is_some(),
            "{why}"
        );
    }

    // Malformed requests.
    for (method, path, body, code) in [
        ("PUT", register.as_str(), "[1,2]", 400),
        (
            "PUT",
            "/0ne00SANDBOX/registrations/sym-dev/register",
            "{}",
            400,
        ),
        ("GET", register.as_str(), "", 405),
        ("PUT", "/0ne00SANDBOX/devices/sym-dev", "{}", 404),
        (
            "GET",
            &format!("/0ne00SANDBOX/registrations/sym-dev/operations/4.nope?{API}"),
            "",
            404,
        ),
    ] {
        let (got, answer) = curl(&sandbox, method, path, body, Some(&sas), None);
        assert_eq!(got, code, "{method} {path} {body}: {answer}");
        assert!(answer["message"].is_string());
    }
    let big = format!(
        r#"{{"registrationId":"sym-dev","payload":"{}"}}"#,
        "x".repeat(70_000)
    );
    assert_eq!(
        curl(&sandbox, "PUT", &register, &big, Some(&sas), None).0,
        413
    );
    // 200 KB: every try gets its 413 (the server reads the body before answering; it once
    // closed the connection under curl, which then failed with "Send failure: Broken pipe").
    let huge = format!(
        r#"{{"registrationId":"sym-dev","payload":"{}"}}"#,
        "x".repeat(200_000)
    );
    for _ in 0..5 {
        assert_eq!(
            curl(&sandbox, "PUT", &register, &huge, Some(&sas), None).0,
            413
        );
    }

    // The operation belongs to sym-dev: another registration cannot read it.
    let group_id = "line7-dev3";
    let key = crypto::derive_device_key(crate::support::sandbox::GROUP_KEY, group_id).unwrap();
    let path = format!("/0ne00SANDBOX/registrations/{group_id}/operations/{op}?{API}");
    assert_eq!(
        curl(
            &sandbox,
            "GET",
            &path,
            "",
            Some(&token(group_id, &key)),
            None
        )
        .0,
        404
    );
}

#[test]
fn dps_rest_registers_curl_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = start_sandbox(dir.path(), "");
    let pki = dir.path().join("pki");
    let single = pki.join("x509-single.pem");
    let cert = Some(single.as_path());
    let (code, body) = curl(
        &sandbox,
        "PUT",
        &format!("/0ne00SANDBOX/registrations/x509-single/register?{API}"),
        r#"{"registrationId":"x509-single"}"#,
        None,
        cert,
    );
    assert_eq!(code, 202, "{body}");
    let op = body["operationId"].as_str().unwrap();
    std::thread::sleep(Duration::from_millis(350));
    let (code, body) = curl(
        &sandbox,
        "GET",
        &format!("/0ne00SANDBOX/registrations/x509-single/operations/{op}?{API}"),
        "",
        None,
        cert,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["registrationState"]["deviceId"], "x509-single");
    assert_eq!(body["status"], "assigned");

    // The certificate is for x509-single, not for the registration id in the path.
    let (code, _) = curl(
        &sandbox,
        "PUT",
        &format!("/0ne00SANDBOX/registrations/x509-group-dev/register?{API}"),
        "{}",
        None,
        cert,
    );
    assert_eq!(code, 401);
    assert!(sandbox
        .recorder
        .wait_for(Duration::from_secs(2), |r| r.service == "dps-rest"
            && r.detail
                .contains("the client certificate is for 'x509-single'"))
        .is_some());
}
