//! The certs and crypto capabilities as plugins see them, in both engines: the same results from
//! a Rhai script and a WASM component, file roots enforced, and private keys out of reach.

use crate::support::openssl::openssl;
use crate::support::python::pyjwt_verify;
use crate::support::{flow_of, load_rule, repo_root, wasm, PluginDir};
use gatehost::engine::FlowPlugin;
use gatehost::model::{Auth, Connection, ErrorKind, Message, Pair};
use gatehost::plugins::registry::Registry;
use std::path::Path;
use std::sync::Arc;

fn load_flow(dir: &PluginDir, manifest: &Path) -> Arc<dyn FlowPlugin> {
    flow_of(Registry::load_path(dir.env(), manifest).unwrap())
}

fn attr<'a>(conn: &'a Connection, name: &str) -> &'a str {
    conn.attributes
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no attribute {name}"))
}

#[test]
fn rhai_and_wasm_get_the_same_certificate_results() {
    let pki = tempfile::tempdir().unwrap();
    let certs = pki.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    crate::support::openssl::seed_pki(&certs);
    let elsewhere = tempfile::tempdir().unwrap();
    openssl(elsewhere.path(), &["genrsa", "-out", "secret.key", "2048"]);

    let dir = PluginDir::new();
    let perms = format!("[permissions]\nfile_roots = [\"{}\"]", certs.display());
    let source =
        std::fs::read_to_string(repo_root().join("tests/fixtures/rhai/certs-flow.rhai")).unwrap();
    let rhai = load_flow(&dir, &dir.rhai("certs-flow", "flow", &source, &perms));
    let wasm = load_flow(
        &dir,
        &dir.wasm(
            "certs-flow-wasm",
            "flow",
            &wasm("fixture_certs_flow"),
            &perms,
        ),
    );

    let c = |f: &str| certs.join(f).display().to_string();
    let now = gatehost::pki::crypto::now_unix();
    let claims = format!(r#"{{"iss":"dev01","iat":{now},"exp":{}}}"#, now + 300);
    let params: Vec<Pair> = vec![
        ("key".into(), c("dev01.key")),
        ("chain".into(), c("dev01_chain.pem")),
        ("ca".into(), c("ca.pem")),
        ("client_id".into(), "acme_dev01".into()),
        ("tenant".into(), "acme".into()),
        ("claims".into(), claims),
        (
            "outside".into(),
            elsewhere.path().join("secret.key").display().to_string(),
        ),
    ];
    let a = rhai.onboard(&params).unwrap();
    let b = wasm.onboard(&params).unwrap();

    // Everything deterministic is identical (RSA PKCS#1 v1.5 signatures are deterministic);
    // the MindConnect tokens differ only by their fresh jti and iat.
    for name in [
        "algorithm",
        "reference",
        "public-key",
        "chain-cns",
        "thumbprint",
        "key-matches",
        "chain-verified",
        "csr",
        "jwt",
        "outside-root",
        "long-jwt",
    ] {
        // Errors name the plugin; the two fixtures are called certs-flow and certs-flow-wasm.
        let b_value = attr(&b, name).replace("'certs-flow-wasm'", "'certs-flow'");
        assert_eq!(attr(&a, name), b_value, "attribute {name}");
    }
    assert_eq!(attr(&a, "algorithm"), "rsa2048");
    assert_eq!(attr(&a, "reference"), format!("file:{}", c("dev01.key")));
    assert_eq!(attr(&a, "chain-cns"), "dev01,Acme Tenant CA");
    assert_eq!(attr(&a, "key-matches"), "true");
    assert_eq!(attr(&a, "chain-verified"), "ok");
    assert_eq!(
        attr(&a, "public-key").trim(),
        openssl(&certs, &["pkey", "-in", "dev01.key", "-pubout"]).trim()
    );
    assert!(
        attr(&a, "outside-root").starts_with("error: plugin 'certs-flow"),
        "{}",
        attr(&a, "outside-root")
    );
    assert!(
        attr(&a, "outside-root").contains("may not read"),
        "{}",
        attr(&a, "outside-root")
    );
    assert_eq!(
        attr(&a, "long-jwt"),
        "error: MindConnect token lifetime of 7200 s is out of range (1 to 3600)"
    );

    // The CSR made through a plugin passes openssl; the JWTs verify with PyJWT.
    std::fs::write(pki.path().join("plugin.csr"), attr(&a, "csr")).unwrap();
    openssl(
        pki.path(),
        &["req", "-verify", "-in", "plugin.csr", "-noout"],
    );
    let cert = std::fs::read_to_string(certs.join("dev01.pem")).unwrap();
    assert_eq!(
        pyjwt_verify(attr(&a, "jwt"), &cert, "")["header"]["kid"],
        "k1"
    );
    for conn in [&a, &b] {
        let v = pyjwt_verify(attr(conn, "mindconnect-jwt"), &cert, "MQTTBroker");
        assert_eq!(v["claims"]["sub"], "acme_dev01");
        let Auth::CertificateAndPassword {
            certificate,
            password,
        } = &conn.auth
        else {
            panic!("auth is {:?}", conn.auth)
        };
        assert_eq!(password, attr(conn, "mindconnect-jwt"));
        assert_eq!(certificate.key_ref, attr(conn, "reference"));
    }

    // No attribute carries private key material.
    let key_pem = std::fs::read_to_string(certs.join("dev01.key")).unwrap();
    let secret_lines: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for conn in [&a, &b] {
        let everything = serde_json::to_string(conn).unwrap();
        for line in &secret_lines {
            assert!(!everything.contains(line), "private key material leaked");
        }
    }
}

#[test]
fn a_rhai_plugin_cannot_get_at_private_key_bytes() {
    let pki = tempfile::tempdir().unwrap();
    openssl(pki.path(), &["genrsa", "-out", "dev.key", "2048"]);
    let key_path = pki.path().join("dev.key").display().to_string();
    let dir = PluginDir::new();
    let perms = format!("[permissions]\nfile_roots = [\"{}\"]", pki.path().display());
    let script = format!(
        r#"
fn translate(msg) {{
    let key = certs::load_key("{key_path}");
    let seen = [`${{key}}`, key.to_string(), key.to_debug(), key.public_key_pem()];
    for attempt in [|| key.der, || key.private_key, || key.pair, || kv::set("k", key), || to_json(key)] {{
        try {{ seen.push(attempt.call().to_string()); }} catch (e) {{ seen.push("refused"); }}
    }}
    #{{ local: true, topic: "t", payload: seen.reduce(|all, s| all + "\n" + s, "") }}
}}
"#
    );
    let m = dir.rhai("snoop", "rule", &script, &perms);
    let out = load_rule(dir.env(), &m)
        .translate(&Message::new("t", "", 0))
        .unwrap();
    let seen = String::from_utf8(out[0].message.payload.clone()).unwrap();
    let key_pem = std::fs::read_to_string(pki.path().join("dev.key")).unwrap();
    for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(
            !seen.contains(line),
            "private key material reached the script:\n{seen}"
        );
    }
    assert!(
        seen.contains(&format!("KeyPair(file:{key_path})")),
        "{seen}"
    );
    assert_eq!(seen.matches("refused").count(), 5, "{seen}");
}

#[test]
fn undeclared_file_roots_are_denied_in_both_engines() {
    let pki = tempfile::tempdir().unwrap();
    openssl(pki.path(), &["genrsa", "-out", "dev.key", "2048"]);
    let key_path = pki.path().join("dev.key").display().to_string();
    let dir = PluginDir::new();
    let m = dir.rhai(
        "nosy",
        "flow",
        &format!("fn onboard(p) {{ certs::load_key(\"{key_path}\") }}\nfn refresh(c) {{ #{{}} }}"),
        "",
    );
    let e = load_flow(&dir, &m).onboard(&[]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    assert_eq!(
        e.message,
        format!("plugin 'nosy' may not read {key_path}: it is outside the plugin's file roots (none are declared); add its folder to permissions.file_roots in the manifest")
    );

    let wasm_flow = load_flow(
        &dir,
        &dir.wasm("nosy-wasm", "flow", &wasm("fixture_certs_flow"), ""),
    );
    let e = wasm_flow
        .onboard(&[("key".into(), key_path.clone())])
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    assert!(
        e.message
            .starts_with(&format!("plugin 'nosy-wasm' may not read {key_path}")),
        "{e}"
    );
}

#[test]
fn keys_generated_for_a_plugin_live_in_its_state_with_mode_0600() {
    let dir = PluginDir::new();
    let m = dir.rhai(
        "keymaker",
        "rule",
        r#"
fn translate(msg) {
    let key = certs::generate_key("p256", "device-1");
    let again = certs::open_key(key.reference());
    let dup = "overwrote";
    try { certs::generate_key("p256", "device-1"); } catch (e) { dup = e.message; }
    let bad = "opened";
    try { certs::open_key("state:../other/key"); } catch (e) { bad = e.kind; }
    #{ local: true, topic: "t", payload: `${key.reference()}|${again.public_key_pem() == key.public_key_pem()}|${dup}|${bad}` }
}
"#,
        "",
    );
    let mut env = dir.env();
    env.persistent = true;
    let out = load_rule(env, &m)
        .translate(&Message::new("t", "", 0))
        .unwrap();
    let report = String::from_utf8(out[0].message.payload.clone()).unwrap();
    let parts: Vec<&str> = report.split('|').collect();
    assert_eq!(parts[0], "state:device-1");
    assert_eq!(parts[1], "true");
    assert!(
        parts[2].ends_with("it already exists (a private key is never overwritten)"),
        "{report}"
    );
    assert_eq!(parts[3], "invalid-input");
    let file = dir.path().join("state/keys/keymaker/device-1.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
