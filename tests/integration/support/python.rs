//! The project's Python tooling (`.venv`, from tests/requirements.txt): independent checks with
//! the libraries users have (PyJWT, the Azure IoT device SDK).

use crate::support::repo_root;
use std::path::PathBuf;
use std::process::Command;

/// The venv's python (made by .ci/install-deps), which has PyJWT.
pub fn venv_python() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run .ci/install-deps (it creates the venv with tests/requirements.txt)",
        python.display()
    );
    python
}

/// Run a Python script with arguments; return stdout, failing the test on a non-zero exit.
pub fn python(interpreter: &std::path::Path, script: &str, args: &[&str]) -> String {
    let out = Command::new(interpreter)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Verify `token` with PyJWT against the public key of `cert_pem`; returns header and claims.
pub fn pyjwt_verify(token: &str, cert_pem: &str, audience: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, cert_pem).unwrap();
    let out = python(
        &venv_python(),
        VERIFY_JWT_PY,
        &[token, cert.to_str().unwrap(), audience],
    );
    serde_json::from_str(&out).unwrap()
}

const VERIFY_JWT_PY: &str = r#"
import json, sys, jwt
from cryptography import x509
token, cert_pem, audience = sys.argv[1], open(sys.argv[2], 'rb').read(), sys.argv[3]
key = x509.load_pem_x509_certificate(cert_pem).public_key()
header = jwt.get_unverified_header(token)
options = {"verify_aud": bool(audience), "verify_exp": True}
claims = jwt.decode(token, key, algorithms=[header["alg"]], audience=audience or None, options=options)
print(json.dumps({"header": header, "claims": claims}))
"#;
