//! Signatures checked by independent implementations run in the test: Python's standard library
//! recomputes SAS tokens, PyJWT verifies RS256/ES256 JWTs with the certificate's public key.

use crate::support::python::{pyjwt_verify, python};
use gatehost::caps::certs::{KeyAlgorithm, PrivateKey};
use gatehost::pki::crypto;
use gatehost::pki::x509::{self, CertificateAuthority, Subject};

const SAS_PY: &str = r#"
import base64, hashlib, hmac, sys, urllib.parse
resource, key, policy, expiry = sys.argv[1:5]
sr = urllib.parse.quote(resource, safe='')
sig = base64.b64encode(hmac.new(base64.b64decode(key), (sr + "\n" + expiry).encode(), hashlib.sha256).digest()).decode()
token = "SharedAccessSignature sr=%s&sig=%s&se=%s" % (sr, urllib.parse.quote(sig, safe=''), expiry)
if policy:
    token += "&skn=" + urllib.parse.quote(policy, safe='')
print(token)
"#;

#[test]
fn sas_tokens_match_pythons_standard_library() {
    let key = crypto::base64_encode(b"an example device key of 32 byt");
    let cases = [
        ("0ne00055505/registrations/press7", Some("registration")),
        ("myhub.azure-devices.net/devices/press7", None),
        ("myhub.azure-devices.net/devices/dev 1+é=~_.-", None),
        ("0ne000AAAAA/registrations/a/b?c&d", Some("registration")),
    ];
    for (resource, policy) in cases {
        for expiry in [1u64, 1_700_000_000, 4_102_444_800] {
            let ours = crypto::sas_token(resource, &key, policy, expiry).unwrap();
            let theirs = python(
                std::path::Path::new("python3"),
                SAS_PY,
                &[resource, &key, policy.unwrap_or(""), &expiry.to_string()],
            );
            assert_eq!(ours, theirs, "{resource}");
        }
    }
}

/// A CA and a device certificate for `algorithm`, as PEM, with the device key.
pub fn device(algorithm: KeyAlgorithm, cn: &str) -> (PrivateKey, String, String) {
    let ca_key = PrivateKey::generate(algorithm).unwrap();
    let ca_pem = x509::self_signed_ca(
        &ca_key,
        &Subject::parse("/O=Acme/CN=Acme Tenant CA").unwrap(),
        30,
    )
    .unwrap();
    let ca = CertificateAuthority::new(&ca_pem, &ca_key, "ca.pem", "ca.key").unwrap();
    let key = PrivateKey::generate(algorithm).unwrap();
    let csr = x509::create_csr(&key, &Subject::parse(&format!("/CN={cn}")).unwrap(), &[]).unwrap();
    let cert = ca.issue(&csr, 30, "dev.csr").unwrap();
    let chain = format!("{cert}{ca_pem}");
    (key, cert, chain)
}

#[test]
fn rs256_and_es256_jwts_verify_with_pyjwt() {
    for (algorithm, alg) in [
        (KeyAlgorithm::Rsa2048, "RS256"),
        (KeyAlgorithm::P256, "ES256"),
    ] {
        let (key, cert, chain) = device(algorithm, "agent01");
        let now = crypto::now_unix();
        let claims =
            serde_json::json!({"iss": "agent01", "iat": now, "exp": now + 600, "note": "ü"});
        let token = gatehost::pki::jwt::jwt_sign(
            &key,
            r#"{"kid":"k1"}"#,
            &claims.to_string(),
            Some((&chain, "chain.pem")),
            Some(3600),
        )
        .unwrap();
        let v = pyjwt_verify(&token, &cert, "");
        assert_eq!(v["header"]["alg"], alg);
        assert_eq!(v["header"]["kid"], "k1");
        assert_eq!(v["header"]["typ"], "JWT");
        assert_eq!(v["claims"], claims);
        let ders = x509::parse_pem_certs(&chain, "chain.pem").unwrap();
        let x5c: Vec<String> = ders.iter().map(|d| crypto::base64_encode(d)).collect();
        assert_eq!(v["header"]["x5c"], serde_json::json!(x5c));
    }
}

#[test]
fn the_mindconnect_token_has_every_claim_the_broker_checks() {
    let (key, cert, chain) = device(KeyAlgorithm::Rsa2048, "acme_agent01");
    let token = gatehost::pki::jwt::mindconnect_jwt(
        &key,
        &chain,
        "chain.pem",
        "acme_agent01",
        "acme",
        3600,
    )
    .unwrap();
    let v = pyjwt_verify(&token, &cert, "MQTTBroker");
    let c = &v["claims"];
    assert_eq!(v["header"]["alg"], "RS256");
    assert_eq!(v["header"]["x5c"].as_array().unwrap().len(), 2);
    assert_eq!(c["iss"], "acme_agent01");
    assert_eq!(c["sub"], "acme_agent01");
    assert_eq!(c["aud"], serde_json::json!(["MQTTBroker"]));
    assert_eq!(
        c["schemas"],
        serde_json::json!(["urn:siemens:mindsphere:v1"])
    );
    assert_eq!(c["ten"], "acme");
    assert!(c["jti"].as_str().unwrap().len() <= 36);
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        3600
    );

    let e = gatehost::pki::jwt::mindconnect_jwt(
        &key,
        &chain,
        "chain.pem",
        "acme_agent01",
        "acme",
        3601,
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        "MindConnect token lifetime of 3601 s is out of range (1 to 3600)"
    );
    let e =
        gatehost::pki::jwt::mindconnect_jwt(&key, &chain, "chain.pem", "a", &"t".repeat(37), 60)
            .unwrap_err();
    assert_eq!(
        e.message,
        "MindConnect tenant must be 1 to 36 characters, got 37"
    );
}
