//! Certificates and keys made by the real `openssl` CLI, with the exact commands the providers'
//! guides give (X.509 v1 leaves on Debian 12), and a corpus of the other shapes users bring.

use std::path::Path;
use std::process::Command;

/// Run openssl in `dir`; return stdout; fail the test with openssl's stderr otherwise.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The seed's PKI: tenant CA, a device key, CSR, certificate and chain, all made by openssl.
pub fn seed_pki(dir: &Path) {
    openssl(dir, &["genrsa", "-out", "ca.key", "2048"]);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/C=DE/O=Acme/CN=Acme Tenant CA",
            "-days",
            "30",
            "-out",
            "ca.pem",
        ],
    );
    openssl(dir, &["genrsa", "-out", "dev01.key", "2048"]);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "dev01.key",
            "-subj",
            "/C=DE/ST=Munich/O=Acme/OU=IT/CN=dev01",
            "-out",
            "dev01.csr",
        ],
    );
    openssl(
        dir,
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
            "365",
            "-sha256",
            "-out",
            "dev01.pem",
        ],
    );
    let chain = format!("{}{}", read(dir, "dev01.pem"), read(dir, "ca.pem"));
    std::fs::write(dir.join("dev01_chain.pem"), chain).unwrap();
}

/// `pkcs1.key` (RSA, `BEGIN RSA PRIVATE KEY`) and `sec1.key` (P-256 with its `EC PARAMETERS`
/// block), as older OpenSSL set-ups and the providers' guides make them.
pub fn legacy_keys(d: &Path) {
    openssl(d, &["genrsa", "-traditional", "-out", "pkcs1.key", "2048"]);
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-out",
            "sec1.key",
        ],
    );
}

/// A CA `<name>.pem`/`.key` made by openssl.
pub fn openssl_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/O=gatehost tests/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// An RSA certificate for `cn` issued by `ca`: `<name>.key`, `<name>.pem`, `<name>_chain.pem`.
pub fn openssl_leaf(dir: &Path, ca: &str, name: &str, cn: &str) {
    openssl_leaf_valid_for(dir, ca, name, cn, "30")
}

/// [`openssl_leaf`] valid for `days` days from now ("-1" makes one that has already expired),
/// made with the guides' commands (no extensions: X.509 v1, as users' certificates are).
pub fn openssl_leaf_valid_for(dir: &Path, ca: &str, name: &str, cn: &str, days: &str) {
    let (ca_pem, ca_key) = (dir.join(format!("{ca}.pem")), dir.join(format!("{ca}.key")));
    crate::support::openssl::guide_leaf_valid_for(dir, &ca_pem, &ca_key, name, cn, days)
}

/// [`openssl_leaf_valid_for`] with the given extensions file contents (a server's SAN, say).
pub fn openssl_leaf_with(dir: &Path, ca: &str, name: &str, cn: &str, days: &str, extensions: &str) {
    std::fs::write(dir.join("leaf.ext"), extensions).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            days,
            "-extfile",
            "leaf.ext",
            "-out",
            &format!("{name}.pem"),
        ],
    );
    let read = |file: String| std::fs::read_to_string(dir.join(file)).unwrap();
    let chain = format!(
        "{}{}",
        read(format!("{name}.pem")),
        read(format!("{ca}.pem"))
    );
    std::fs::write(dir.join(format!("{name}_chain.pem")), chain).unwrap();
}

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

/// One device certificate of the corpus: its files and how its key is protected.
pub struct Variant {
    pub name: &'static str,
    /// The certificate file a device's `certificate` parameter names.
    pub chain: String,
    pub key: String,
    pub passphrase: Option<&'static str>,
}

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

pub fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
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

pub const PASSPHRASE: &str = "guide-pass";
