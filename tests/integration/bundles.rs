//! Signed plugin bundles end to end: keys and signatures checked by the real `minisign`, packs
//! installed from files and from a local HTTPS server and then run, every refusal (leaving
//! nothing behind), permission upgrades, `gatehost.lock` pinning and `plugin sync`, and the
//! `plugin new` skeletons of both engines.

use crate::support::openssl::{openssl_ca, openssl_leaf_with};
use crate::support::{gatehost, repo_root, run, wasm_dir, Killed, Output};
use gatehost::plugins::bundle::archive::ArchiveLimits;
use gatehost::plugins::bundle::format::{pack, sha256_hex, Bundle, FileHash};
use gatehost::plugins::bundle::minisign::{PublicKey, SecretKey, Signature};
use gatehost::plugins::bundle::trust::TrustStore;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A gateway site: `gatehost.toml`, a trust store and a state directory in a temp dir.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new(extra_config: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("state/trust")).unwrap();
        let site = Site { dir };
        site.config(extra_config);
        site
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self, extra: &str) {
        std::fs::write(
            self.path().join("gatehost.toml"),
            format!("plugin_dirs = []\n{extra}\n"),
        )
        .unwrap();
    }

    fn config_path(&self) -> PathBuf {
        self.path().join("gatehost.toml")
    }

    fn trust(&self, publisher: &str, key: &PublicKey) {
        std::fs::write(
            self.path().join(format!("state/trust/{publisher}.pub")),
            key.to_file(),
        )
        .unwrap();
    }

    /// `gatehost ARGS... --config <site>`.
    fn gatehost(&self, args: &[&str]) -> Output {
        run(gatehost()
            .args(args)
            .arg("--config")
            .arg(self.config_path()))
    }

    fn lock(&self) -> Option<String> {
        std::fs::read_to_string(self.path().join("gatehost.lock")).ok()
    }

    /// Everything under `state/plugins`, for "nothing was left behind" checks.
    fn installed_files(&self) -> Vec<String> {
        let root = self.path().join("state/plugins");
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(&root).unwrap().display().to_string());
                if p.is_dir() && !p.is_symlink() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }
}

/// A Rhai rule plugin in `dir/<name>/` whose output topic carries `tag`.
fn rule_source(dir: &Path, name: &str, version: &str, tag: &str, permissions: &str) -> PathBuf {
    let d = dir.join(format!("{name}-{version}-src"));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join(format!("{name}.toml")),
        format!(
            "name = \"{name}\"\nversion = \"{version}\"\nkind = \"rule\"\napi = \"0.1\"\ndescription = \"test rule\"\npublisher = \"acme\"\n[permissions]\n{permissions}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join(format!("{name}.rhai")),
        format!("fn translate(msg) {{ [#{{ local: true, topic: `{tag}/${{msg.topic}}`, payload: msg.payload, qos: msg.qos, retain: false }}] }}\n"),
    )
    .unwrap();
    d
}

/// Pack (and sign with `key`) a rule; returns the bundle path.
fn bundle_file(
    dir: &Path,
    name: &str,
    version: &str,
    tag: &str,
    permissions: &str,
    key: Option<&SecretKey>,
) -> PathBuf {
    let src = rule_source(dir, name, version, tag, permissions);
    let mut bundle = pack(&src, &ArchiveLimits::default()).unwrap();
    if let Some(key) = key {
        bundle.sign(key).unwrap();
    }
    let out = dir.join(bundle.file_name());
    std::fs::write(&out, bundle.to_bytes()).unwrap();
    out
}

fn key_files(dir: &Path, prefix: &str) -> SecretKey {
    let out = run(gatehost()
        .args(["plugin", "keygen", "--out"])
        .arg(dir.join(prefix)));
    assert_eq!(out.code, 0, "{}", out.stderr);
    SecretKey::parse(&std::fs::read_to_string(dir.join(format!("{prefix}.key"))).unwrap()).unwrap()
}

fn rule_topic(site: &Site, rule: &str) -> Output {
    site.gatehost(&[
        "rule",
        "test",
        rule,
        "--topic",
        "plant1/press7/t",
        "--payload",
        "{}",
    ])
}

fn assert_refused(out: &Output, phrase: &str) {
    assert_eq!(out.code, 1, "stdout: {} stderr: {}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(phrase),
        "expected '{phrase}' in: {}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

fn minisign(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("minisign")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("minisign runs (apt-get install minisign)")
}

/// `tar xf bundle bundle.toml bundle.toml.minisig` into `dir`.
fn extract_signed_part(bundle: &Path, dir: &Path) {
    let status = Command::new("tar")
        .current_dir(dir)
        .arg("xf")
        .arg(bundle)
        .args(["bundle.toml", "bundle.toml.minisig"])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn gatehost_and_minisign_read_each_others_keys_and_signatures() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // A key made by gatehost signs a bundle; minisign verifies the signed part.
    let key = key_files(dir, "acme");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("acme.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let src = rule_source(dir, "interop", "1.0.0", "v1", "");
    let packed = run(gatehost()
        .args(["plugin", "pack"])
        .arg(&src)
        .arg("--out")
        .arg(dir.join("interop.ghp")));
    assert_eq!(packed.code, 0, "{}", packed.stderr);
    assert!(packed.stdout.contains("unsigned"), "{}", packed.stdout);
    let signed = run(gatehost()
        .args(["plugin", "sign"])
        .arg(dir.join("interop.ghp"))
        .arg("--key")
        .arg(dir.join("acme.key")));
    assert_eq!(signed.code, 0, "{}", signed.stderr);
    extract_signed_part(&dir.join("interop.ghp"), dir);
    let v = minisign(dir, &["-Vm", "bundle.toml", "-p", "acme.pub"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let said = String::from_utf8_lossy(&v.stdout);
    assert!(
        said.contains("gatehost bundle interop 1.0.0 publisher:acme"),
        "{said}"
    );
    let ok = run(gatehost()
        .args(["plugin", "verify"])
        .arg(dir.join("interop.ghp"))
        .arg("--trust")
        .arg(dir.join("acme.pub")));
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(
        ok.stdout
            .contains(&format!("signed by acme (key {})", key.id)),
        "{}",
        ok.stdout
    );

    // A key made by `minisign -G -W` signs with gatehost; both tools verify.
    let g = minisign(dir, &["-G", "-W", "-p", "ms.pub", "-s", "ms.key"]);
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let signed = run(gatehost()
        .args(["plugin", "sign"])
        .arg(dir.join("interop.ghp"))
        .arg("--key")
        .arg(dir.join("ms.key"))
        .arg("--out")
        .arg(dir.join("interop-ms.ghp")));
    assert_eq!(signed.code, 0, "{}", signed.stderr);
    let sub = dir.join("ms");
    std::fs::create_dir(&sub).unwrap();
    extract_signed_part(&dir.join("interop-ms.ghp"), &sub);
    let v = minisign(&sub, &["-Vm", "bundle.toml", "-p", "../ms.pub"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    std::fs::copy(dir.join("ms.pub"), dir.join("acme@ms.pub")).unwrap();
    let ok = run(gatehost()
        .args(["plugin", "verify"])
        .arg(dir.join("interop-ms.ghp"))
        .arg("--trust")
        .arg(dir.join("acme@ms.pub")));
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    // The other key does not verify it.
    let wrong = run(gatehost()
        .args(["plugin", "verify"])
        .arg(dir.join("interop-ms.ghp"))
        .arg("--trust")
        .arg(dir.join("acme.pub")));
    assert_refused(&wrong, "which is not in the trust store");

    // A signature made by `minisign -S` (prehashed, minisign's own comments) verifies with
    // gatehost's verifier.
    let s = minisign(
        &sub,
        &[
            "-S",
            "-s",
            "../ms.key",
            "-m",
            "bundle.toml",
            "-x",
            "by-minisign.sig",
            "-t",
            "made by minisign",
        ],
    );
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let sig =
        Signature::parse(&std::fs::read_to_string(sub.join("by-minisign.sig")).unwrap()).unwrap();
    let public = PublicKey::parse(&std::fs::read_to_string(dir.join("ms.pub")).unwrap()).unwrap();
    let message = std::fs::read(sub.join("bundle.toml")).unwrap();
    public.verify(&message, &sig).unwrap();
    assert_eq!(sig.trusted_comment, "made by minisign");
    assert!(public.verify(b"another file", &sig).is_err());
}

#[test]
fn signatures_made_by_minisign_itself_sign_a_bundle() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let g = minisign(dir, &["-G", "-W", "-p", "acme.pub", "-s", "acme.key"]);
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let src = rule_source(dir, "by-minisign", "1.0.0", "v1", "");
    let packed = run(gatehost()
        .args(["plugin", "pack"])
        .arg(&src)
        .arg("--out")
        .arg(dir.join("unsigned.ghp")));
    assert_eq!(packed.code, 0, "{}", packed.stderr);
    let status = Command::new("tar")
        .current_dir(dir)
        .args(["xf", "unsigned.ghp", "bundle.toml"])
        .status()
        .unwrap();
    assert!(status.success());
    // minisign's defaults (its own untrusted comment, prehashed), a comment of one's own, a
    // trusted comment, and the legacy (not prehashed) format.
    let variants: [(&str, &[&str]); 4] = [
        ("default", &[]),
        ("comment", &["-c", "release signed on the build server"]),
        ("trusted", &["-t", "acme line-rule release 1.0.0"]),
        ("legacy", &["-l"]),
    ];
    for (name, extra) in variants {
        let sig = format!("{name}.minisig");
        let mut args = vec!["-S", "-s", "acme.key", "-m", "bundle.toml", "-x", &sig];
        args.extend_from_slice(extra);
        let s = minisign(dir, &args);
        assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
        let out = dir.join(format!("{name}.ghp"));
        let signed = run(gatehost()
            .args(["plugin", "sign"])
            .arg(dir.join("unsigned.ghp"))
            .arg("--signature")
            .arg(dir.join(&sig))
            .arg("--out")
            .arg(&out));
        assert_eq!(signed.code, 0, "{name}: {}", signed.stderr);
        let ok = run(gatehost()
            .args(["plugin", "verify"])
            .arg(&out)
            .arg("--trust")
            .arg(dir.join("acme.pub")));
        assert_eq!(ok.code, 0, "{name}: {}", ok.stderr);
        assert!(
            ok.stdout.contains("signed by acme"),
            "{name}: {}",
            ok.stdout
        );
        // The signature travels byte for byte, and minisign (requiring a prehashed signature
        // where it made one) verifies what the bundle holds.
        let sub = dir.join(name);
        std::fs::create_dir(&sub).unwrap();
        extract_signed_part(&out, &sub);
        assert_eq!(
            std::fs::read(sub.join("bundle.toml.minisig")).unwrap(),
            std::fs::read(dir.join(&sig)).unwrap()
        );
        let verify: &[&str] = if name == "legacy" {
            &["-V", "-m", "bundle.toml", "-p", "../acme.pub"]
        } else {
            &["-V", "-H", "-m", "bundle.toml", "-p", "../acme.pub"]
        };
        let v = minisign(&sub, verify);
        assert!(
            v.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&v.stderr)
        );
    }

    // A signature of another file, or by another key, is attached but never trusted.
    std::fs::write(dir.join("other.txt"), "not the bundle").unwrap();
    let s = minisign(dir, &["-S", "-s", "acme.key", "-m", "other.txt"]);
    assert!(s.status.success());
    let signed = run(gatehost()
        .args(["plugin", "sign"])
        .arg(dir.join("unsigned.ghp"))
        .arg("--signature")
        .arg(dir.join("other.txt.minisig"))
        .arg("--out")
        .arg(dir.join("wrong.ghp")));
    assert_eq!(signed.code, 0, "{}", signed.stderr);
    let refused = run(gatehost()
        .args(["plugin", "verify"])
        .arg(dir.join("wrong.ghp"))
        .arg("--trust")
        .arg(dir.join("acme.pub")));
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    // Not a signature at all: one sentence naming the file.
    let bad = run(gatehost()
        .args(["plugin", "sign"])
        .arg(dir.join("unsigned.ghp"))
        .arg("--signature")
        .arg(dir.join("other.txt")));
    assert_refused(&bad, "other.txt is not a minisign signature");
}

/// Start `tests/fixtures/https_server.py` over `dir` with a certificate for 127.0.0.1 issued by
/// an openssl CA; returns the server, its port and the CA file.
fn https_server(dir: &Path, serve: &Path) -> (Child, u16, PathBuf) {
    openssl_ca(dir, "web-ca");
    openssl_leaf_with(
        dir,
        "web-ca",
        "web",
        "127.0.0.1",
        "2",
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    );
    let mut child = Command::new("python3")
        .arg(repo_root().join("tests/fixtures/https_server.py"))
        .arg("--dir")
        .arg(serve)
        .arg("--cert")
        .arg(dir.join("web.pem"))
        .arg("--key")
        .arg(dir.join("web.key"))
        .args(["--lifetime", "240"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("the server prints its port");
    (child, port, dir.join("web-ca.pem"))
}

#[test]
fn install_from_a_file_and_from_https_then_run_the_plugin() {
    let d = tempfile::tempdir().unwrap();
    let key = key_files(d.path(), "acme");
    let site = Site::new("[[rules]]\nname = \"r\"\nrule = \"shared-rule\"\nfrom = [\"plant1/#\"]");
    site.trust("acme", &key.public());

    let v1 = bundle_file(d.path(), "shared-rule", "1.0.0", "v1", "", Some(&key));
    let out = site.gatehost(&["plugin", "install", v1.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("installed shared-rule 1.0.0 (signed by acme"),
        "{}",
        out.stdout
    );
    let t = rule_topic(&site, "shared-rule");
    assert_eq!(t.code, 0, "{}", t.stderr);
    assert!(
        t.stdout.contains(r#""topic":"v1/plant1/press7/t""#),
        "{}",
        t.stdout
    );
    let check = site.gatehost(&["check"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    let lock = site.lock().unwrap();
    assert!(
        lock.contains(&format!(
            "sha256 = \"{}\"",
            sha256_hex(&std::fs::read(&v1).unwrap())
        )),
        "{lock}"
    );
    let list = site.gatehost(&["plugin", "list", "--json"]);
    let row: serde_json::Value = serde_json::from_str(list.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(row["publisher"], "acme");
    assert_eq!(row["trust"], format!("signed by acme (key {})", key.id));
    // Installing the same bundle again changes nothing.
    let again = site.gatehost(&["plugin", "install", &format!("file://{}", v1.display())]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stdout.starts_with("already installed"),
        "{}",
        again.stdout
    );

    // v2 from a local HTTPS server, pinned by its SHA-256.
    let served = d.path().join("served");
    std::fs::create_dir(&served).unwrap();
    let v2 = bundle_file(d.path(), "shared-rule", "2.0.0", "v2", "", Some(&key));
    std::fs::copy(&v2, served.join("shared-rule-2.0.0.ghp")).unwrap();
    std::fs::write(
        served.join("portal.html"),
        "<html><body>Please log in</body></html>",
    )
    .unwrap();
    let (server, port, ca) = https_server(d.path(), &served);
    let _server = Killed(server);
    let url = format!("https://127.0.0.1:{port}/shared-rule-2.0.0.ghp");
    let wrong_hash = site.gatehost(&[
        "plugin",
        "install",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--sha256",
        &"0".repeat(64),
    ]);
    assert_refused(&wrong_hash, "not the expected");
    let no_ca = site.gatehost(&["plugin", "install", &url]);
    assert_refused(&no_ca, "certificate");
    let sha = sha256_hex(&std::fs::read(&v2).unwrap());
    let out = site.gatehost(&[
        "plugin",
        "install",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--sha256",
        &sha,
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("upgraded from 1.0.0 to shared-rule 2.0.0"),
        "{}",
        out.stdout
    );
    let t = rule_topic(&site, "shared-rule");
    assert!(
        t.stdout.contains(r#""topic":"v2/plant1/press7/t""#),
        "{}",
        t.stdout
    );
    // The old version's files are gone; one live link and one version remain.
    let files = site.installed_files();
    assert!(files.iter().all(|f| !f.contains("1.0.0")), "{files:?}");

    // URLs that are not bundles.
    let html = site.gatehost(&[
        "plugin",
        "install",
        &format!("https://127.0.0.1:{port}/portal.html"),
        "--ca",
        ca.to_str().unwrap(),
    ]);
    assert_refused(&html, "HTML page");
    let slow = site.gatehost(&[
        "plugin",
        "install",
        &format!("https://127.0.0.1:{port}/slow/x.ghp"),
        "--ca",
        ca.to_str().unwrap(),
        "--timeout-secs",
        "2",
    ]);
    assert_refused(&slow, "no complete answer within 2 s");
    let missing = site.gatehost(&[
        "plugin",
        "install",
        &format!("https://127.0.0.1:{port}/nope.ghp"),
        "--ca",
        ca.to_str().unwrap(),
    ]);
    assert_refused(&missing, "404");
    let plain = site.gatehost(&[
        "plugin",
        "install",
        &format!("http://127.0.0.1:{port}/shared-rule-2.0.0.ghp"),
    ]);
    assert_refused(&plain, "plain http:// is not accepted");
    // Still v2, still in sync with the lock.
    assert!(rule_topic(&site, "shared-rule").stdout.contains("v2/"));
    assert_eq!(site.gatehost(&["check"]).code, 0);

    // Remove: the plugin, its files and its lock entry go.
    let out = site.gatehost(&["plugin", "remove", "shared-rule"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!site.lock().unwrap().contains("shared-rule"));
    assert_eq!(site.installed_files(), vec![".store".to_string()]);
    let out = site.gatehost(&["plugin", "remove", "shared-rule"]);
    assert_refused(&out, "is not installed");
}

/// Bytes of a tar archive written by Python's tarfile: `entries` of (name, data, type).
fn python_tar(dir: &Path, entries: &[(&str, &[u8], &str)]) -> Vec<u8> {
    let script = r#"
import io, sys, tarfile, json
spec = json.load(open(sys.argv[1]))
with tarfile.open(sys.argv[2], "w", format=tarfile.USTAR_FORMAT) as tar:
    for name, data, kind in spec:
        info = tarfile.TarInfo(name)
        data = bytes.fromhex(data)
        if kind == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
"#;
    let spec: Vec<(String, String, String)> = entries
        .iter()
        .map(|(n, d, k)| (n.to_string(), hex::encode(d), k.to_string()))
        .collect();
    std::fs::write(dir.join("spec.json"), serde_json::to_string(&spec).unwrap()).unwrap();
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(dir.join("spec.json"))
        .arg(dir.join("crafted.tar"))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(dir.join("crafted.tar")).unwrap()
}

#[test]
fn bad_bundles_are_refused_and_leave_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let key = key_files(dir, "acme");
    let other = key_files(dir, "mallory");
    let site = Site::new("[bundles]\nmax_entry_mib = 1");
    site.trust("acme", &key.public());
    site.trust("mallory", &other.public());

    let good = std::fs::read(bundle_file(dir, "victim", "1.0.0", "v1", "", Some(&key))).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    // The signed description and payload of the good bundle, to craft variants from.
    let entries =
        gatehost::plugins::bundle::archive::read(&good, &ArchiveLimits::default()).unwrap();
    let desc = &entries[0].data;
    let sig = &entries[1].data;
    let script = &entries[2].data;
    let manifest = &entries[3].data;

    let mut cases: Vec<(&str, String, &str)> = Vec::new();
    cases.push((
        "truncated",
        write("t.ghp", &good[..good.len() - 700]),
        "truncated",
    ));
    cases.push((
        "garbage",
        write("g.ghp", &[0x42u8; 3000]),
        "not a gatehost bundle: it does not start with a tar header",
    ));
    cases.push(("empty", write("e.ghp", b""), "only 0 bytes long"));
    let gz = {
        let mut child = Command::new("gzip")
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&good).unwrap();
        child.wait_with_output().unwrap().stdout
    };
    cases.push(("gzip", write("z.ghp", &gz), "gzip-compressed"));
    cases.push((
        "html",
        write("h.ghp", b"<!DOCTYPE html><html>login</html>"),
        "HTML",
    ));
    let traversal = python_tar(
        dir,
        &[
            ("bundle.toml", desc, "file"),
            ("payload/../../evil.rhai", script, "file"),
        ],
    );
    cases.push((
        "traversal",
        write("p.ghp", &traversal),
        "would escape the bundle",
    ));
    let absolute = python_tar(
        dir,
        &[
            ("bundle.toml", desc, "file"),
            ("/etc/cron.d/x", script, "file"),
        ],
    );
    cases.push((
        "absolute",
        write("a.ghp", &absolute),
        "absolute paths are not allowed",
    ));
    let link = python_tar(
        dir,
        &[
            ("bundle.toml", desc, "file"),
            ("payload/victim.rhai", b"", "symlink"),
        ],
    );
    cases.push((
        "symlink",
        write("l.ghp", &link),
        "symbolic links are not allowed",
    ));
    let dup = python_tar(
        dir,
        &[
            ("bundle.toml", desc, "file"),
            ("bundle.toml.minisig", sig, "file"),
            ("payload/victim.rhai", script, "file"),
            ("payload/victim.rhai", script, "file"),
            ("payload/victim.toml", manifest, "file"),
        ],
    );
    cases.push(("duplicate", write("d.ghp", &dup), "appears twice"));
    let big = python_tar(
        dir,
        &[
            ("bundle.toml", desc, "file"),
            ("payload/huge.bin", &vec![0u8; (1 << 20) + 1], "file"),
        ],
    );
    cases.push((
        "oversized",
        write("o.ghp", &big),
        "the limit is 1048576 bytes",
    ));
    // Another tool's tar of the right entries: valid tar, but not byte-canonical.
    let foreign = python_tar(
        dir,
        &[
            ("bundle.toml", desc, "file"),
            ("bundle.toml.minisig", sig, "file"),
            ("payload/victim.rhai", script, "file"),
            ("payload/victim.toml", manifest, "file"),
        ],
    );
    cases.push((
        "rewritten",
        write("f.ghp", &foreign),
        "the bundle was modified",
    ));
    // A payload byte changed (tar still valid): the hash list catches it.
    let mut tampered = good.clone();
    let at = find(&tampered, b"fn translate").unwrap();
    tampered[at] = b'F';
    cases.push((
        "tampered entry",
        write("x.ghp", &tampered),
        "entry 'payload/victim.rhai' was changed",
    ));
    // bundle.toml changed (still valid TOML): the signature catches it.
    let mut redescribed = good.clone();
    let at = find(&redescribed, b"test rule").unwrap();
    redescribed[at] = b'b';
    cases.push((
        "bad signature",
        write("s.ghp", &redescribed),
        "signature of bundle.toml is invalid",
    ));
    let unsigned = std::fs::read(bundle_file(dir, "victim", "1.0.1", "v1", "", None)).unwrap();
    cases.push((
        "unsigned",
        write("u.ghp", &unsigned),
        "the bundle is not signed",
    ));
    let stranger = SecretKey::generate();
    let unknown = std::fs::read(bundle_file(
        dir,
        "victim",
        "1.0.2",
        "v1",
        "",
        Some(&stranger),
    ))
    .unwrap();
    cases.push((
        "unknown key",
        write("k.ghp", &unknown),
        "which is not in the trust store",
    ));
    let impostor =
        std::fs::read(bundle_file(dir, "victim", "1.0.3", "v1", "", Some(&other))).unwrap();
    cases.push((
        "wrong publisher",
        write("w.ghp", &impostor),
        "of publisher 'mallory'",
    ));
    cases.push((
        "future world",
        write("fw.ghp", &future_world(dir, &key)),
        "api 1.0 is not supported",
    ));
    cases.push(("not a file", dir.display().to_string(), "is a directory"));
    cases.push((
        "missing file",
        dir.join("nope.ghp").display().to_string(),
        "No such file",
    ));

    for (what, path, phrase) in &cases {
        let out = site.gatehost(&["plugin", "install", path]);
        assert_eq!(out.code, 1, "{what}: {}", out.stdout);
        assert!(
            out.stderr.contains(phrase),
            "{what}: expected '{phrase}' in: {}",
            out.stderr
        );
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{what}: {}",
            out.stderr
        );
        assert!(
            site.installed_files().iter().all(|f| f == ".store"),
            "{what} left {:?}",
            site.installed_files()
        );
        assert_eq!(site.lock(), None, "{what} wrote the lock");
    }

    // Unsigned bundles are accepted when the config says so (development).
    site.config("[bundles]\nallow_unsigned = true");
    let out = site.gatehost(&[
        "plugin",
        "install",
        &cases.iter().find(|c| c.0 == "unsigned").unwrap().1,
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("unsigned (allowed by [bundles] allow_unsigned)"),
        "{}",
        out.stdout
    );
    // ... and refused again, at load and by check, once the config no longer allows them.
    site.config("");
    let check = site.gatehost(&["check"]);
    assert_eq!(check.code, 1);
    assert!(
        check
            .stderr
            .contains("installed plugin 'victim': the bundle is not signed"),
        "{}",
        check.stderr
    );
    assert_eq!(site.gatehost(&["plugin", "remove", "victim"]).code, 0);

    // A revoked key: refused at install, and an installed plugin it signed stops loading.
    let out = site.gatehost(&["plugin", "install", &write("good.ghp", &good)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    site.config(&format!("[bundles]\nrevoked_keys = [\"{}\"]", key.id));
    let t = rule_topic(&site, "victim");
    assert_eq!(t.code, 1);
    assert!(
        t.stderr
            .contains(&format!("signed by key {}, which is revoked", key.id)),
        "{}",
        t.stderr
    );
    let check = site.gatehost(&["check"]);
    assert!(
        check.stderr.contains("which is revoked"),
        "{}",
        check.stderr
    );
    assert_eq!(site.gatehost(&["plugin", "remove", "victim"]).code, 0);
    let out = site.gatehost(&[
        "plugin",
        "install",
        &dir.join("good.ghp").display().to_string(),
    ]);
    assert_refused(&out, "which is revoked");
    assert!(site.installed_files().iter().all(|f| f == ".store"));
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A correctly signed bundle for world `gatehost:plugin@1.0`, which this host does not provide.
fn future_world(dir: &Path, key: &SecretKey) -> Vec<u8> {
    let src = rule_source(dir, "future", "1.0.0", "v1", "");
    let mut bundle = pack(&src, &ArchiveLimits::default()).unwrap();
    for e in &mut bundle.payload {
        if e.path.ends_with(".toml") {
            e.data = String::from_utf8(e.data.clone())
                .unwrap()
                .replace("api = \"0.1\"", "api = \"1.0\"")
                .into_bytes();
        }
    }
    bundle.description.api = "1.0".into();
    bundle.description.files = bundle
        .payload
        .iter()
        .map(|e| FileHash {
            path: e.path.clone(),
            size: e.data.len() as u64,
            sha256: sha256_hex(&e.data),
        })
        .collect();
    bundle.description_bytes = toml::to_string(&bundle.description).unwrap().into_bytes();
    bundle.sign(key).unwrap();
    bundle.to_bytes()
}

#[test]
fn a_changed_byte_anywhere_in_a_signed_bundle_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    let bytes = std::fs::read(bundle_file(
        d.path(),
        "every-byte",
        "1.0.0",
        "v1",
        "",
        Some(&key),
    ))
    .unwrap();
    let trust = TrustStore {
        keys: vec![("acme".into(), key.public())],
        ..TrustStore::default()
    };
    let limits = ArchiveLimits::default();
    let original = Bundle::open(&bytes, &limits).unwrap();
    trust.verify(&original).unwrap();
    // The signature's untrusted comment is, by minisign's design, not signed: a change there
    // verifies (and is trusted for nothing), yet changes the bundle's SHA-256, which
    // gatehost.lock and `install --sha256` pin. Every other byte is covered by the signature.
    let marker = b"untrusted comment: ";
    let start = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the signature's first line")
        + marker.len();
    let end = start + bytes[start..].iter().position(|&b| b == b'\n').unwrap();
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80] {
            let mut changed = bytes.clone();
            changed[i] ^= flip;
            if let Ok(bundle) = Bundle::open(&changed, &limits) {
                if trust.verify(&bundle).is_ok() {
                    assert!(
                        (start..end).contains(&i),
                        "byte {i} (^{flip:#x}) of {} changed unnoticed",
                        bytes.len()
                    );
                    assert_ne!(bundle.sha256, original.sha256, "byte {i}");
                }
            }
        }
    }
}

#[test]
fn upgrades_that_add_permissions_need_approval_and_the_lock_pins_the_site() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let key = key_files(dir, "acme");
    let site = Site::new("");
    site.trust("acme", &key.public());
    let v1 = bundle_file(
        dir,
        "pinned",
        "1.0.0",
        "v1",
        "endpoints = [\"broker.example.com:8883\"]",
        Some(&key),
    );
    let v2 = bundle_file(
        dir,
        "pinned",
        "1.1.0",
        "v2",
        "endpoints = [\"broker.example.com:8883\", \"*.evil.example:443\"]\nfile_roots = [\"/etc\"]",
        Some(&key),
    );
    assert_eq!(
        site.gatehost(&["plugin", "install", v1.to_str().unwrap()])
            .code,
        0
    );
    let refused = site.gatehost(&["plugin", "install", v2.to_str().unwrap()]);
    assert_refused(&refused, "asks for permissions 1.0.0 did not have: endpoint *.evil.example:443, file root /etc; review them and run again with --approve-permissions");
    assert!(
        rule_topic(&site, "pinned").stdout.contains("v1/"),
        "v1 keeps running"
    );
    let approved = site.gatehost(&[
        "plugin",
        "install",
        v2.to_str().unwrap(),
        "--approve-permissions",
    ]);
    assert_eq!(approved.code, 0, "{}", approved.stderr);
    assert!(
        approved
            .stdout
            .contains("net:*.evil.example:443 files:/etc"),
        "{}",
        approved.stdout
    );
    assert!(rule_topic(&site, "pinned").stdout.contains("v2/"));
    // A changed bundle under an installed version is refused.
    let v2b = bundle_file(&dir.join("b"), "pinned", "1.1.0", "v2b", "endpoints = [\"broker.example.com:8883\", \"*.evil.example:443\"]\nfile_roots = [\"/etc\"]", Some(&key));
    let same_version = site.gatehost(&["plugin", "install", v2b.to_str().unwrap()]);
    assert_refused(
        &same_version,
        "is already installed from a different bundle",
    );

    // The lock pins exactly what is installed; check finds every difference.
    assert_eq!(site.gatehost(&["check"]).code, 0);
    let lock_path = site.path().join("gatehost.lock");
    let lock = site.lock().unwrap();
    std::fs::write(&lock_path, lock.replace("1.1.0", "1.0.0")).unwrap();
    let check = site.gatehost(&["check"]);
    assert_eq!(check.code, 1);
    assert!(
        check
            .stderr
            .contains("plugin 'pinned' is installed at 1.1.0 but"),
        "{}",
        check.stderr
    );
    std::fs::write(
        &lock_path,
        lock.replace(&sha256_hex(&std::fs::read(&v2).unwrap()), &"ab".repeat(32)),
    )
    .unwrap();
    assert!(site
        .gatehost(&["check"])
        .stderr
        .contains("is installed from a bundle with SHA-256"));
    std::fs::remove_file(&lock_path).unwrap();
    let check = site.gatehost(&["check"]);
    assert!(
        check
            .stderr
            .contains("plugin 'pinned' 1.1.0 is installed but not in"),
        "{}",
        check.stderr
    );
    std::fs::write(&lock_path, &lock).unwrap();
    assert_eq!(site.gatehost(&["check"]).code, 0);

    // A file changed on disk after install is found at load and by check.
    let installed_script = site.path().join("state/plugins/pinned/payload/pinned.rhai");
    let original = std::fs::read_to_string(&installed_script).unwrap();
    std::fs::write(&installed_script, original.replace("v2/", "xx/")).unwrap();
    let t = rule_topic(&site, "pinned");
    assert_eq!(t.code, 1);
    assert!(
        t.stderr.contains("changed on disk since it was installed"),
        "{}",
        t.stderr
    );
    let repaired = site.gatehost(&["plugin", "install", v2.to_str().unwrap()]);
    assert_eq!(repaired.code, 0, "{}", repaired.stderr);
    assert!(
        repaired.stdout.contains("damaged; reinstalled"),
        "{}",
        repaired.stdout
    );
    assert!(rule_topic(&site, "pinned").stdout.contains("v2/"));
    assert_eq!(
        std::fs::read_to_string(&installed_script).unwrap(),
        original
    );
    let versions: Vec<String> = site
        .installed_files()
        .into_iter()
        .filter(|f| f.starts_with(".store/pinned-") && f.matches('/').count() == 1)
        .collect();
    assert_eq!(
        versions.len(),
        1,
        "one version directory is kept: {versions:?}"
    );

    // Reproduce the site elsewhere from its lock and a directory of bundles.
    let bundles = dir.join("bundles");
    std::fs::create_dir(&bundles).unwrap();
    std::fs::copy(&v2, bundles.join("pinned-1.1.0.ghp")).unwrap();
    let other = Site::new("");
    other.trust("acme", &key.public());
    std::fs::write(other.path().join("gatehost.lock"), &lock).unwrap();
    assert_eq!(other.gatehost(&["check"]).code, 1, "nothing installed yet");
    let sync = other.gatehost(&["plugin", "sync", "--from", bundles.to_str().unwrap()]);
    assert_eq!(sync.code, 0, "{}", sync.stderr);
    assert!(
        sync.stdout.contains("installed pinned 1.1.0"),
        "{}",
        sync.stdout
    );
    assert_eq!(other.gatehost(&["check"]).code, 0);
    assert_eq!(other.lock().unwrap(), lock);
    assert!(rule_topic(&other, "pinned").stdout.contains("v2/"));
    // A bundle directory holding something else under the pinned name is refused.
    std::fs::copy(&v2b, bundles.join("pinned-1.1.0.ghp")).unwrap();
    let third = Site::new("");
    third.trust("acme", &key.public());
    std::fs::write(third.path().join("gatehost.lock"), &lock).unwrap();
    let sync = third.gatehost(&["plugin", "sync", "--from", bundles.to_str().unwrap()]);
    assert_refused(&sync, "but");
    assert!(sync.stderr.contains("pins"), "{}", sync.stderr);
    assert!(
        third.installed_files().is_empty(),
        "{:?}",
        third.installed_files()
    );
}

/// Build a WASM skeleton with the plugins workspace's lock and target directory (so the SDK and
/// wit-bindgen are not compiled again) and put the component where its manifest expects it.
fn build_wasm_skeleton(dir: &Path, crate_name: &str) {
    let plugins_target = wasm_dir().parent().unwrap().parent().unwrap().to_path_buf();
    std::fs::copy(
        repo_root().join("plugins/Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(dir)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &plugins_target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "building the {crate_name} skeleton failed"
    );
    let out = dir.join("target/wasm32-wasip2/release");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(
        plugins_target.join(format!("wasm32-wasip2/release/{crate_name}.wasm")),
        out.join(format!("{crate_name}.wasm")),
    )
    .unwrap();
}

#[test]
fn plugin_new_skeletons_of_both_engines_pass_check_and_run() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let mut dirs = Vec::new();
    for (name, kind, engine) in [
        ("skel-rhai-rule", "rule", "rhai"),
        ("skel-rhai-flow", "flow", "rhai"),
        ("skel-wasm-rule", "rule", "wasm"),
        ("skel-wasm-flow", "flow", "wasm"),
    ] {
        let out = run(gatehost()
            .args([
                "plugin", "new", name, "--kind", kind, "--engine", engine, "--out",
            ])
            .arg(dir.join(name)));
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        if engine == "wasm" {
            build_wasm_skeleton(&dir.join(name), &name.replace('-', "_"));
        }
        dirs.push(format!("{:?}", dir.join(name).display().to_string()));
    }
    let again = run(gatehost()
        .args([
            "plugin",
            "new",
            "skel-rhai-rule",
            "--kind",
            "rule",
            "--engine",
            "rhai",
            "--out",
        ])
        .arg(dir.join("skel-rhai-rule")));
    assert_refused(&again, "already exists");
    let bad = run(gatehost().args([
        "plugin", "new", "Bad Name", "--kind", "rule", "--engine", "rhai",
    ]));
    assert_refused(&bad, "is not a plugin name");

    let mut config = format!("plugin_dirs = [{}]\n", dirs.join(", "));
    for engine in ["rhai", "wasm"] {
        config.push_str(&format!(
            "[[rules]]\nname = \"r-{engine}\"\nrule = \"skel-{engine}-rule\"\nfrom = [\"plant1/#\"]\n[[devices]]\nname = \"dev-{engine}\"\nflow = \"skel-{engine}-flow\"\n[devices.params]\nhost = \"broker.example.com\"\ndevice_id = \"press7\"\npassword = \"secret\"\n"
        ));
    }
    std::fs::write(dir.join("gatehost.toml"), &config).unwrap();
    let check = run(gatehost()
        .args(["check", "--config"])
        .arg(dir.join("gatehost.toml")));
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(check.stdout.contains("4 plugins"), "{}", check.stdout);
    let mut outputs = Vec::new();
    for engine in ["rhai", "wasm"] {
        let t = run(gatehost()
            .args([
                "rule",
                "test",
                &format!("skel-{engine}-rule"),
                "--topic",
                "plant1/press7/oil temp",
                "--payload",
                "{\"v\":1}",
                "--qos",
                "2",
                "--config",
            ])
            .arg(dir.join("gatehost.toml")));
        assert_eq!(t.code, 0, "{engine}: {}", t.stderr);
        outputs.push(t.stdout);
    }
    assert_eq!(
        outputs[0], outputs[1],
        "the two skeleton rules behave alike"
    );
    assert!(
        outputs[0].contains(r#""topic":"devices/press7/messages/events/measurement=oil%20temp""#),
        "{}",
        outputs[0]
    );
    assert!(outputs[0].contains(r#""qos":1"#), "{}", outputs[0]);
    // The flows' parameters are checked: a missing one is named.
    std::fs::write(
        dir.join("gatehost.toml"),
        config.replace("password = \"secret\"\n", ""),
    )
    .unwrap();
    let check = run(gatehost()
        .args(["check", "--config"])
        .arg(dir.join("gatehost.toml")));
    assert_eq!(check.code, 1);
    assert!(
        check
            .stderr
            .contains("device 'dev-wasm': missing parameters: password"),
        "{}",
        check.stderr
    );

    // A WASM skeleton packs, installs and runs as a bundle.
    let key = SecretKey::generate();
    let site = Site::new("");
    std::fs::write(dir.join("k.key"), key.to_file().as_bytes()).unwrap();
    site.trust("my-company", &key.public());
    let packed = run(gatehost()
        .args(["plugin", "pack"])
        .arg(dir.join("skel-wasm-rule"))
        .arg("--key")
        .arg(dir.join("k.key"))
        .arg("--out")
        .arg(dir.join("skel.ghp")));
    assert_eq!(packed.code, 0, "{}", packed.stderr);
    assert_eq!(
        site.gatehost(&["plugin", "install", dir.join("skel.ghp").to_str().unwrap()])
            .code,
        0
    );
    let t = site.gatehost(&[
        "rule",
        "test",
        "skel-wasm-rule",
        "--topic",
        "plant1/press7/oil temp",
        "--payload",
        "{\"v\":1}",
        "--qos",
        "2",
    ]);
    assert_eq!(t.code, 0, "{}", t.stderr);
    assert_eq!(t.stdout, outputs[1]);
}

#[test]
fn an_upgrade_that_raises_its_limits_needs_approval() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let key = key_files(dir, "acme");
    let site = Site::new("");
    site.trust("acme", &key.public());
    let with_limit = |version: &str, ms: u32| {
        bundle_file(
            dir,
            "bounded",
            version,
            "v",
            &format!("\n[limits]\ntimeout_ms = {ms}"),
            Some(&key),
        )
    };
    let v1 = with_limit("1.0.0", 200);
    assert_eq!(
        site.gatehost(&["plugin", "install", v1.to_str().unwrap()])
            .code,
        0
    );
    let v2 = with_limit("1.1.0", 900);
    let refused = site.gatehost(&["plugin", "install", v2.to_str().unwrap()]);
    assert_refused(
        &refused,
        "asks for permissions 1.0.0 did not have: limit timeout_ms = 900 (was 200); review them and run again with --approve-permissions",
    );
    let approved = site.gatehost(&[
        "plugin",
        "install",
        v2.to_str().unwrap(),
        "--approve-permissions",
    ]);
    assert_eq!(approved.code, 0, "{}", approved.stderr);
    // Lowering a limit needs nobody's approval.
    let v3 = with_limit("1.2.0", 100);
    let lower = site.gatehost(&["plugin", "install", v3.to_str().unwrap()]);
    assert_eq!(lower.code, 0, "{}", lower.stderr);
}
