//! Interop with the real `openssl` CLI: keys, CSRs and chains made with the exact commands of the
//! provider guides load and match in gatehost, and what gatehost makes passes openssl's checks.

use crate::support::openssl::{legacy_keys, openssl, read, seed_pki};
use crate::support::{gatehost, run};
use gatehost::caps::certs::{KeyAlgorithm, PrivateKey};
use gatehost::pki::crypto::now_unix;
use gatehost::pki::x509::{self, parse_pem_certs};
use std::process::Command;

#[test]
fn keys_in_every_openssl_format_load_and_match_their_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    seed_pki(d);
    legacy_keys(d);
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            "sec1.key",
            "-passout",
            "pass:s3cret",
            "-out",
            "encrypted.key",
        ],
    );
    assert!(read(d, "dev01.key").starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(read(d, "pkcs1.key").starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert!(read(d, "sec1.key").starts_with("-----BEGIN EC PARAMETERS-----"));

    let load = |f: &str, pass: Option<&str>| PrivateKey::from_pem(&read(d, f), pass, f).unwrap();
    assert_eq!(load("dev01.key", None).algorithm(), KeyAlgorithm::Rsa2048);
    assert_eq!(load("pkcs1.key", None).algorithm(), KeyAlgorithm::Rsa2048);
    assert_eq!(load("sec1.key", None).algorithm(), KeyAlgorithm::P256);
    let decrypted = load("encrypted.key", Some("s3cret"));
    assert_eq!(
        decrypted.public_key_spki_der(),
        load("sec1.key", None).public_key_spki_der()
    );

    let chain = parse_pem_certs(&read(d, "dev01_chain.pem"), "dev01_chain.pem").unwrap();
    let cas = parse_pem_certs(&read(d, "ca.pem"), "ca.pem").unwrap();
    assert!(x509::key_matches(&load("dev01.key", None), &chain[0]));
    assert!(!x509::key_matches(&load("pkcs1.key", None), &chain[0]));
    x509::verify_chain(&chain, &cas, now_unix() as i64, "dev01_chain.pem", "ca.pem").unwrap();

    // What gatehost reports agrees with openssl.
    let info = x509::info(&chain[0]);
    assert_eq!(
        (info.subject_cn.as_str(), info.issuer_cn.as_str()),
        ("dev01", "Acme Tenant CA")
    );
    let fp = openssl(
        d,
        &[
            "x509",
            "-in",
            "dev01.pem",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    );
    assert_eq!(
        fp.trim().split('=').nth(1).unwrap().replace(':', ""),
        info.sha256_thumbprint
    );
    let fp1 = openssl(
        d,
        &[
            "x509",
            "-in",
            "dev01.pem",
            "-noout",
            "-fingerprint",
            "-sha1",
        ],
    );
    assert_eq!(
        fp1.trim().split('=').nth(1).unwrap().replace(':', ""),
        info.sha1_thumbprint
    );
    let serial = openssl(d, &["x509", "-in", "dev01.pem", "-noout", "-serial"]);
    assert_eq!(
        serial
            .trim()
            .trim_start_matches("serial=")
            .trim_start_matches('0'),
        info.serial_hex.trim_start_matches('0')
    );
    let der = openssl(
        d,
        &[
            "x509",
            "-in",
            "dev01.pem",
            "-outform",
            "DER",
            "-out",
            "dev01.der",
        ],
    );
    assert!(der.is_empty());
    assert_eq!(
        gatehost::pki::crypto::base64_decode(&info.der_base64).unwrap(),
        std::fs::read(d.join("dev01.der")).unwrap()
    );

    let out = run(gatehost()
        .args(["certs", "show", "--json"])
        .arg(d.join("dev01_chain.pem")));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["certificates"][0]["subject_cn"], "dev01");
    assert_eq!(v["certificates"][1]["subject_cn"], "Acme Tenant CA");
    assert_eq!(v["certificates"][1]["is_ca"], true);
}

#[test]
fn certificates_gatehost_issues_pass_openssl_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for alg in ["rsa2048", "p256"] {
        let sub = d.join(alg);
        std::fs::create_dir(&sub).unwrap();
        let g = |args: &[&str]| {
            let out = run(gatehost().current_dir(&sub).args(args));
            assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
            assert_eq!(
                out.stdout.lines().count(),
                1,
                "one-line summary: {}",
                out.stdout
            );
            out.stdout
        };
        g(&[
            "certs",
            "ca",
            "--alg",
            alg,
            "--subject",
            "/C=DE/O=Acme/CN=Acme CA",
            "--out",
            "ca.pem",
            "--key-out",
            "ca.key",
        ]);
        g(&["certs", "key", "--alg", alg, "--out", "dev01.key"]);
        g(&[
            "certs",
            "csr",
            "--key",
            "dev01.key",
            "--subject",
            "/C=DE/ST=Munich/O=Acme/OU=IT/CN=dev01",
            "--out",
            "dev01.csr",
        ]);
        g(&[
            "certs",
            "issue",
            "--csr",
            "dev01.csr",
            "--ca",
            "ca.pem",
            "--ca-key",
            "ca.key",
            "--days",
            "365",
            "--out",
            "dev01.pem",
        ]);
        g(&[
            "certs",
            "chain",
            "dev01.pem",
            "ca.pem",
            "--out",
            "dev01_chain.pem",
        ]);
        g(&[
            "certs",
            "verification",
            "--ca",
            "ca.pem",
            "--ca-key",
            "ca.key",
            "--nonce",
            "0A1B2C3D4E5F",
            "--out",
            "verification.pem",
        ]);

        let csr_check = Command::new("openssl")
            .current_dir(&sub)
            .args(["req", "-verify", "-in", "dev01.csr", "-noout"])
            .output()
            .unwrap();
        assert!(csr_check.status.success());
        assert!(String::from_utf8_lossy(&csr_check.stderr).contains("verify OK"));
        assert_eq!(
            openssl(&sub, &["verify", "-CAfile", "ca.pem", "dev01.pem"]).trim(),
            "dev01.pem: OK"
        );
        assert_eq!(
            openssl(&sub, &["verify", "-CAfile", "ca.pem", "verification.pem"]).trim(),
            "verification.pem: OK"
        );
        assert_eq!(
            openssl(&sub, &["x509", "-in", "dev01.pem", "-noout", "-subject"]).trim(),
            "subject=C = DE, ST = Munich, O = Acme, OU = IT, CN = dev01"
        );
        assert_eq!(
            openssl(
                &sub,
                &["x509", "-in", "verification.pem", "-noout", "-subject"]
            )
            .trim(),
            "subject=CN = 0A1B2C3D4E5F"
        );
        // The certificate's public key is the key file's public key.
        assert_eq!(
            openssl(&sub, &["x509", "-in", "dev01.pem", "-noout", "-pubkey"]),
            openssl(&sub, &["pkey", "-in", "dev01.key", "-pubout"])
        );
        // The chain file is leaf + CA, in that order.
        let chain = read(&sub, "dev01_chain.pem");
        assert_eq!(
            chain,
            format!("{}{}", read(&sub, "dev01.pem"), read(&sub, "ca.pem"))
        );
    }
}

#[test]
fn gatehost_issues_for_openssl_csrs_with_openssl_cas() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    seed_pki(d);
    openssl(d, &["genrsa", "-traditional", "-out", "dev02.key", "2048"]);
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "dev02.key",
            "-subj",
            "/CN=dev02",
            "-out",
            "dev02.csr",
        ],
    );
    let out = run(gatehost().current_dir(d).args([
        "certs",
        "issue",
        "--csr",
        "dev02.csr",
        "--ca",
        "ca.pem",
        "--ca-key",
        "ca.key",
        "--out",
        "dev02.pem",
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        openssl(d, &["verify", "-CAfile", "ca.pem", "dev02.pem"]).trim(),
        "dev02.pem: OK"
    );
}

#[test]
fn bad_certificate_inputs_get_one_clear_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    seed_pki(d);
    let key = read(d, "dev01.key");
    std::fs::write(d.join("truncated.key"), &key[..key.len() / 2]).unwrap();
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            "dev01.key",
            "-passout",
            "pass:right",
            "-out",
            "enc.key",
        ],
    );
    openssl(d, &["genrsa", "-out", "other.key", "2048"]);
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "dev01.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "-1",
            "-sha256",
            "-out",
            "expired.pem",
        ],
    );

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "certs",
                "csr",
                "--key",
                "truncated.key",
                "--subject",
                "/CN=x",
                "--out",
                "x.csr",
            ],
            "gatehost: truncated.key is not valid PEM: ",
        ),
        (
            vec![
                "certs",
                "csr",
                "--key",
                "dev01.pem",
                "--subject",
                "/CN=x",
                "--out",
                "x.csr",
            ],
            "gatehost: dev01.pem contains a certificate, not a private key",
        ),
        (
            vec![
                "certs",
                "csr",
                "--key",
                "enc.key",
                "--subject",
                "/CN=x",
                "--out",
                "x.csr",
            ],
            "gatehost: enc.key is an encrypted private key and no passphrase was given",
        ),
        (
            vec![
                "certs",
                "csr",
                "--key",
                "enc.key",
                "--passphrase",
                "wrong",
                "--subject",
                "/CN=x",
                "--out",
                "x.csr",
            ],
            "gatehost: enc.key could not be decrypted: wrong passphrase",
        ),
        (
            vec![
                "certs",
                "csr",
                "--key",
                "dev01.key",
                "--subject",
                "/O=Acme",
                "--out",
                "x.csr",
            ],
            "gatehost: --subject: subject '/O=Acme' has no CN=",
        ),
        (
            vec![
                "certs",
                "issue",
                "--csr",
                "dev01.csr",
                "--ca",
                "ca.pem",
                "--ca-key",
                "other.key",
                "--out",
                "x.pem",
            ],
            "gatehost: the CA key other.key does not match the CA certificate ca.pem",
        ),
        (
            vec![
                "certs",
                "issue",
                "--csr",
                "dev01.key",
                "--ca",
                "ca.pem",
                "--ca-key",
                "ca.key",
                "--out",
                "x.pem",
            ],
            "gatehost: dev01.key contains no CERTIFICATE REQUEST",
        ),
        (
            vec![
                "certs",
                "issue",
                "--csr",
                "dev01.csr",
                "--ca",
                "dev01.pem",
                "--ca-key",
                "dev01.key",
                "--out",
                "x.pem",
            ],
            "gatehost: dev01.pem is not a CA certificate",
        ),
        (
            vec![
                "certs",
                "issue",
                "--csr",
                "dev01.csr",
                "--ca",
                "ca.pem",
                "--ca-key",
                "ca.key",
                "--days",
                "0",
                "--out",
                "x.pem",
            ],
            "gatehost: validity of 0 days is out of range (1 to 36500)",
        ),
        (
            vec!["certs", "chain", "dev01.pem", "dev01.pem", "--out", "x.pem"],
            "gatehost: certificate 'dev01' in dev01.pem is not issued by the CA in dev01.pem",
        ),
        (
            vec!["certs", "show", "dev01.key"],
            "gatehost: dev01.key contains a private key, not a certificate",
        ),
        (
            vec!["certs", "key", "--alg", "p256", "--out", "dev01.key"],
            "gatehost: cannot write key file dev01.key: it already exists",
        ),
        (
            vec![
                "sign",
                "jwt",
                "--key",
                "dev01.key",
                "--claims",
                "{\"iat\":0,\"exp\":7200}",
            ],
            "gatehost: JWT lifetime exp - iat = 7200 s exceeds the provider maximum of 3600 s",
        ),
        (
            vec!["sign", "jwt", "--key", "dev01.key", "--claims", "[1]"],
            "gatehost: JWT claims must be a JSON object",
        ),
        (
            vec![
                "sign",
                "derive-key",
                "--group-key",
                "a2V5",
                "--registration-id",
                "",
            ],
            "gatehost: --group-key/--registration-id: registration id is empty",
        ),
    ];
    for (args, expected) in cases {
        let out = run(gatehost().current_dir(d).args(&args));
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.starts_with(expected),
            "{args:?}:\n  got {}\n  want {expected}",
            out.stderr
        );
        assert_eq!(
            out.stderr.trim_end().lines().count(),
            1,
            "{args:?}: {}",
            out.stderr
        );
    }
    assert!(
        !d.join("x.csr").exists() && !d.join("x.pem").exists(),
        "nothing is written on error"
    );

    // An expired certificate (made by openssl) is named with its expiry date.
    let expired = parse_pem_certs(&read(d, "expired.pem"), "expired.pem").unwrap();
    let e = x509::check_validity(&expired[0], now_unix() as i64, "expired.pem").unwrap_err();
    assert!(
        e.message
            .starts_with("certificate 'dev01' in expired.pem expired on "),
        "{e}"
    );
    let cas = parse_pem_certs(&read(d, "ca.pem"), "ca.pem").unwrap();
    let e =
        x509::verify_chain(&expired, &cas, now_unix() as i64, "expired.pem", "ca.pem").unwrap_err();
    assert!(e.message.contains("expired on"), "{e}");
    // And a certificate that is not valid yet.
    let chain = parse_pem_certs(&read(d, "dev01.pem"), "dev01.pem").unwrap();
    let e = x509::check_validity(&chain[0], 0, "dev01.pem").unwrap_err();
    assert!(
        e.message
            .starts_with("certificate 'dev01' in dev01.pem is not valid before "),
        "{e}"
    );
}
