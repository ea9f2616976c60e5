//! The certificates integrators have: made by the `openssl` CLI exactly as the providers' guides
//! say (which on Debian 12's OpenSSL 3.0 gives X.509 **v1** device certificates), and in the other
//! forms users meet (v3 with `-extfile`, P-256, PKCS#1 / PKCS#8 / SEC1 / encrypted keys, an
//! intermediate CA, leaf and CA in separate files). Every form goes through the DPS flow in both
//! engines with `gatehost onboard` against the sandbox and carries telemetry to its IoT Hub; the
//! generic `mqtt-broker` flow connects with it too. The other suites use [`guide_leaf`] for their
//! device certificates, so every flow that takes one is run with what the guides make.

use crate::certs_openssl::openssl;
use crate::provider_flows::{publish_over, start};
use crate::support::install_shipped_flows;
use gatehost::sandbox::{Sandbox, Service};
use std::path::Path;
use std::process::Command;

/// The guides' four commands (`000_0b1524f524773d40.txt`, the DPS X.509 tutorials), with
/// `<ca>.pem` / `<ca>.key` in `dir`: `<name>.key`, `<name>.csr`, `<name>.pem` and
/// `<name>_chain.pem` (`cat <name>.pem <ca>.pem`).
pub fn guide_leaf(dir: &Path, ca: &str, name: &str, cn: &str) {
    guide_leaf_by(
        dir,
        &dir.join(format!("{ca}.pem")),
        &dir.join(format!("{ca}.key")),
        name,
        cn,
    )
}

/// [`guide_leaf`] with the CA's files anywhere.
pub fn guide_leaf_by(dir: &Path, ca_pem: &Path, ca_key: &Path, name: &str, cn: &str) {
    guide_leaf_valid_for(dir, ca_pem, ca_key, name, cn, "365")
}

/// [`guide_leaf_by`] valid for `days` days ("-1": already expired).
pub fn guide_leaf_valid_for(
    dir: &Path,
    ca_pem: &Path,
    ca_key: &Path,
    name: &str,
    cn: &str,
    days: &str,
) {
    let key = format!("{name}.key");
    openssl(dir, &["genrsa", "-out", &key, "2048"]);
    signed_by(dir, ca_pem, ca_key, name, cn, days, &[]);
}

/// `openssl req -new` for the existing `<name>.key`, then `openssl x509 -req` by the CA (with
/// `extra` arguments, e.g. `-extfile`), then the chain file.
fn signed_by(
    dir: &Path,
    ca_pem: &Path,
    ca_key: &Path,
    name: &str,
    cn: &str,
    days: &str,
    extra: &[&str],
) {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let subject = format!("/C=DE/ST=Munich/O=Acme/OU=IT/CN={cn}");
    openssl(
        dir,
        &["req", "-new", "-key", &key, "-out", &csr, "-subj", &subject],
    );
    let (ca_pem_s, ca_key_s) = (ca_pem.display().to_string(), ca_key.display().to_string());
    let mut args = vec![
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_pem_s,
        "-CAkey",
        &ca_key_s,
        "-CAcreateserial",
        "-out",
        &pem,
        "-days",
        days,
        "-sha256",
    ];
    args.extend_from_slice(extra);
    openssl(dir, &args);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    std::fs::write(
        dir.join(format!("{name}_chain.pem")),
        format!("{}{}", read(&dir.join(&pem)), read(ca_pem)),
    )
    .unwrap();
}

/// One device certificate of the corpus: its files and how its key is protected.
pub struct Variant {
    pub name: &'static str,
    /// The certificate file a device's `certificate` parameter names.
    pub chain: String,
    pub key: String,
    pub passphrase: Option<&'static str>,
}

const PASSPHRASE: &str = "guide-pass";

/// The corpus, issued by `<ca>` in `dir` (CN = the variant's name).
pub fn corpus(dir: &Path, ca: &str) -> Vec<Variant> {
    let (ca_pem, ca_key) = (dir.join(format!("{ca}.pem")), dir.join(format!("{ca}.key")));
    let file = |f: String| dir.join(f).display().to_string();
    let variant = |name: &'static str, chain: String, passphrase| Variant {
        name,
        chain: file(chain),
        key: file(format!("{name}.key")),
        passphrase,
    };
    let mut all = Vec::new();

    // Exactly the guides: genrsa (PKCS#8 on OpenSSL 3), req, x509 -req: v1.
    guide_leaf_by(dir, &ca_pem, &ca_key, "v1-rsa", "v1-rsa");
    all.push(variant("v1-rsa", "v1-rsa_chain.pem".into(), None));

    // v3: the same with an extensions file.
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(dir, &["genrsa", "-out", "v3-rsa.key", "2048"]);
    signed_by(
        dir,
        &ca_pem,
        &ca_key,
        "v3-rsa",
        "v3-rsa",
        "365",
        &["-extfile", "client.ext"],
    );
    all.push(variant("v3-rsa", "v3-rsa_chain.pem".into(), None));

    // An older OpenSSL's PKCS#1 key (`BEGIN RSA PRIVATE KEY`).
    openssl(
        dir,
        &["genrsa", "-traditional", "-out", "pkcs1-rsa.key", "2048"],
    );
    signed_by(dir, &ca_pem, &ca_key, "pkcs1-rsa", "pkcs1-rsa", "365", &[]);
    all.push(variant("pkcs1-rsa", "pkcs1-rsa_chain.pem".into(), None));

    // P-256 as `openssl ecparam -genkey` makes it (SEC1, with its EC PARAMETERS block).
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-out",
            "sec1-p256.key",
        ],
    );
    signed_by(dir, &ca_pem, &ca_key, "sec1-p256", "sec1-p256", "365", &[]);
    all.push(variant("sec1-p256", "sec1-p256_chain.pem".into(), None));

    // P-256 as `openssl genpkey` makes it (PKCS#8).
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "pkcs8-p256.key",
        ],
    );
    signed_by(
        dir,
        &ca_pem,
        &ca_key,
        "pkcs8-p256",
        "pkcs8-p256",
        "365",
        &[],
    );
    all.push(variant("pkcs8-p256", "pkcs8-p256_chain.pem".into(), None));

    // An encrypted PKCS#8 key (the passphrase reaches gatehost in GATEHOST_KEY_PASSPHRASE).
    openssl(dir, &["genrsa", "-out", "plain.key", "2048"]);
    openssl(
        dir,
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            "plain.key",
            "-passout",
            &format!("pass:{PASSPHRASE}"),
            "-out",
            "encrypted-rsa.key",
        ],
    );
    std::fs::copy(dir.join("plain.key"), dir.join("signing.key")).unwrap();
    signed_by(
        dir,
        &ca_pem,
        &ca_key,
        "signing",
        "encrypted-rsa",
        "365",
        &[],
    );
    for suffix in [".pem", "_chain.pem"] {
        std::fs::rename(
            dir.join(format!("signing{suffix}")),
            dir.join(format!("encrypted-rsa{suffix}")),
        )
        .unwrap();
    }
    all.push(variant(
        "encrypted-rsa",
        "encrypted-rsa_chain.pem".into(),
        Some(PASSPHRASE),
    ));

    // An intermediate CA between the enrolled CA and the device; the chain holds leaf and
    // intermediate.
    std::fs::write(
        dir.join("intermediate.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    openssl(dir, &["genrsa", "-out", "line-ca.key", "2048"]);
    signed_by(
        dir,
        &ca_pem,
        &ca_key,
        "line-ca",
        "Acme Line 7 Intermediate CA",
        "365",
        &["-extfile", "intermediate.ext"],
    );
    guide_leaf_by(
        dir,
        &dir.join("line-ca.pem"),
        &dir.join("line-ca.key"),
        "via-intermediate",
        "via-intermediate",
    );
    all.push(variant(
        "via-intermediate",
        "via-intermediate_chain.pem".into(),
        None,
    ));

    // The leaf alone in its file (the CA is the service's business).
    guide_leaf_by(dir, &ca_pem, &ca_key, "leaf-only", "leaf-only");
    all.push(variant("leaf-only", "leaf-only.pem".into(), None));
    all
}

/// `openssl x509 -noout -text` of a certificate file.
fn text_of(dir: &Path, file: &str) -> String {
    openssl(dir, &["x509", "-noout", "-text", "-in", file])
}

#[test]
fn the_guides_commands_make_x509_v1_certificates() {
    // The premise of this suite: what users have is v1, and the corpus holds both versions.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    crate::sandbox_brokers::openssl_ca(d, "acme-ca");
    let corpus = corpus(d, "acme-ca");
    assert!(text_of(d, "v1-rsa.pem").contains("Version: 1 (0x0)"));
    assert!(text_of(d, "v3-rsa.pem").contains("Version: 3 (0x2)"));
    assert!(std::fs::read_to_string(d.join("pkcs1-rsa.key"))
        .unwrap()
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert!(std::fs::read_to_string(d.join("encrypted-rsa.key"))
        .unwrap()
        .starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    assert_eq!(corpus.len(), 8);
}

/// A gatehost.toml with one DPS device per variant and flow (`<variant>@<flow>`).
fn dps_config(
    d: &Path,
    sandbox: &Sandbox,
    corpus: &[Variant],
    flows: &[&str],
) -> std::path::PathBuf {
    let mut text = "state_dir = \"state\"\nplugin_dirs = [\"plugins\"]\n".to_string();
    for v in corpus {
        for flow in flows {
            text.push_str(&format!(
                "[[devices]]\nname = \"{}@{flow}\"\nflow = \"{flow}\"\ndeadline_secs = 20\n[devices.params]\nid_scope = \"0ne00SANDBOX\"\nregistration_id = \"{}\"\ncertificate = \"{}\"\nkey = \"{}\"\ndps_host = \"localhost\"\ndps_port = \"{}\"\nhub_port = \"{}\"\nca_file = \"{}\"\n",
                v.name,
                v.name,
                v.chain,
                v.key,
                sandbox.port(Service::Dps).unwrap(),
                sandbox.port(Service::IotHub).unwrap(),
                sandbox.ca_file().display()
            ));
        }
    }
    let path = d.join("gatehost.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `gatehost onboard DEVICE --json`, with the passphrase in the environment when it needs one.
fn onboard(config: &Path, device: &str, passphrase: Option<&str>) -> serde_json::Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gatehost"));
    command
        .args(["onboard", device, "--json", "--config"])
        .arg(config);
    if let Some(p) = passphrase {
        command.env("GATEHOST_KEY_PASSPHRASE", p);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{device}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_certificate_form_onboards_through_dps_in_both_engines_and_sends_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sandbox = start(d);
    install_shipped_flows(d);
    crate::flow_twins::install_twins(d);
    let corpus = corpus(d, "acme-ca");
    let flows = ["azure-dps", "azure-dps-wasm"];
    let config = dps_config(d, &sandbox, &corpus, &flows);
    for v in &corpus {
        for flow in flows {
            let device = format!("{}@{flow}", v.name);
            // Onboarding connects to the assigned hub with the certificate once.
            let c = onboard(&config, &device, v.passphrase);
            assert_eq!(c["auth"], "client-certificate", "{device}: {c}");
            assert_eq!(c["client_id"], v.name, "{device}: {c}");
            if v.passphrase.is_some() {
                // This test process has no passphrase to read the key with; the onboarding
                // above connected with it.
                continue;
            }
            let body = format!("{{\"via\":\"{flow}\"}}");
            let topic = format!("devices/{}/messages/events/", v.name);
            publish_over(d, &config, &device, &topic, &body);
            let record = sandbox
                .recorder
                .wait_for(std::time::Duration::from_secs(5), |r| {
                    r.service == "iothub"
                        && r.event == "telemetry"
                        && r.client_id == v.name
                        && r.body == body.as_bytes()
                })
                .unwrap_or_else(|| panic!("{device}: no telemetry: {:#?}", sandbox.recorder.all()));
            assert_eq!(
                record.identity.as_deref(),
                Some(format!("x509:{}", v.name).as_str()),
                "{device}"
            );
        }
    }
}
