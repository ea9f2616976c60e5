//! A real Debian `mosquitto` broker for tests: started on an ephemeral loopback port with a config
//! the test chooses, stopped when dropped. Also: a PKI made by gatehost's own certs capability.

use gatehost::caps::certs::{KeyAlgorithm, PrivateKey};
use gatehost::pki::x509::{self, CertificateAuthority, Subject};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Mosquitto {
    child: Child,
    pub port: u16,
}

impl Mosquitto {
    /// Start mosquitto with `listener <port> 127.0.0.1` followed by `config` lines.
    pub fn start(dir: &Path, config: &str) -> Mosquitto {
        let port = free_port();
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!("user root\npersistence false\nlog_dest stderr\nlistener {port} 127.0.0.1\n{config}\n"),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (run .ci/install-deps)");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "mosquitto did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto { child, port }
    }

    /// TLS listener that requires a client certificate and uses its CN as the user name. No
    /// limit on the messages queued for a slow subscriber (mosquitto drops beyond its default
    /// 1000, which a test reading every message must not see as a loss upstream).
    pub fn start_tls(pki: &Pki) -> Mosquitto {
        Mosquitto::start(
            &pki.dir,
            &format!(
                "max_queued_messages 0\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\nallow_anonymous true",
                pki.path("ca.pem"),
                pki.path("server.pem"),
                pki.path("server.key")
            ),
        )
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CA, server certificate (localhost, 127.0.0.1), client certificate dev01 and its chain, a
/// client certificate `guide-dev` made by the guides' openssl commands (v1), plus a second,
/// untrusted CA with its own client certificate.
pub struct Pki {
    pub dir: PathBuf,
    _temp: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        let make_ca = |prefix: &str, cn: &str| {
            let key = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
            let pem =
                x509::self_signed_ca(&key, &Subject::parse(&format!("/CN={cn}")).unwrap(), 30)
                    .unwrap();
            key.write_new_file(&dir.join(format!("{prefix}.key")))
                .unwrap();
            write(&format!("{prefix}.pem"), &pem);
            (key, pem)
        };
        let issue = |ca_key: &PrivateKey, ca_pem: &str, name: &str, cn: &str, sans: &[&str]| {
            let ca = CertificateAuthority::new(ca_pem, ca_key, "ca", "ca key").unwrap();
            let key = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
            let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
            let csr = x509::create_csr(&key, &Subject::parse(&format!("/CN={cn}")).unwrap(), &sans)
                .unwrap();
            let cert = ca.issue(&csr, 30, "csr").unwrap();
            key.write_new_file(&dir.join(format!("{name}.key")))
                .unwrap();
            write(&format!("{name}.pem"), &cert);
            write(&format!("{name}_chain.pem"), &format!("{cert}{ca_pem}"));
        };
        let (ca_key, ca_pem) = make_ca("ca", "Test CA");
        issue(
            &ca_key,
            &ca_pem,
            "server",
            "localhost",
            &["localhost", "127.0.0.1"],
        );
        issue(&ca_key, &ca_pem, "dev01", "dev01", &[]);
        let (rogue_key, rogue_pem) = make_ca("rogue-ca", "Rogue CA");
        issue(&rogue_key, &rogue_pem, "rogue", "rogue", &[]);
        // A device certificate as the providers' guides make it (openssl, X.509 v1).
        crate::support::openssl::guide_leaf(&dir, "ca", "guide-dev", "guide-dev");
        Pki { dir, _temp: temp }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}
