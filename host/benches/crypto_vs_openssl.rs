//! Signing and key generation, gatehost next to the `openssl` CLI on the same machine:
//!
//!   cargo bench -p gatehost --bench crypto_vs_openssl
//!
//! - SAS token mint: gatehost only (openssl has no equivalent); goal ≤ 5 µs.
//! - RS256 / ES256 sign: gatehost's JWT signature (SHA-256 + RSA PKCS#1 v1.5 / ECDSA P-256)
//!   vs `openssl speed -seconds 3 rsa2048` / `ecdsap256` (sign of a digest). Goal RS256 ≤ 1.5×.
//! - RSA-2048 / P-256 key generation: median of N runs; openssl runs `genpkey` as a process, so
//!   the median start-up cost of `openssl version` is measured too and subtracted. Goal RSA ≤ 2×.

use gatehost::caps::certs::{KeyAlgorithm, PrivateKey};
use gatehost::pki::crypto;
use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

fn per_op(iterations: u32, mut f: impl FnMut()) -> Duration {
    f(); // warm up
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed() / iterations
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn timed_runs(n: usize, mut f: impl FnMut()) -> Duration {
    median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `openssl speed` prints "... <sign/s> <verify/s>" on the line of the algorithm.
fn openssl_sign_time(algorithm: &str, line_marker: &str) -> Duration {
    let out = openssl(&["speed", "-seconds", "3", algorithm]);
    let line = out
        .lines()
        .find(|l| l.contains(line_marker))
        .expect("speed result line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let signs_per_sec: f64 = fields[fields.len() - 2].parse().expect("sign/s");
    Duration::from_secs_f64(1.0 / signs_per_sec)
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).display().to_string();

    let key = crypto::base64_encode(b"an example device key of 32 byt");
    let sas = per_op(200_000, || {
        black_box(
            crypto::sas_token(
                black_box("0ne00055505/registrations/press7"),
                &key,
                Some("registration"),
                1_700_000_000,
            )
            .unwrap(),
        );
    });

    let rsa = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    let ec = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
    let input = [7u8; 64];
    let rs256 = per_op(3_000, || {
        black_box(rsa.sign_jwt(black_box(&input)).unwrap());
    });
    let es256 = per_op(20_000, || {
        black_box(ec.sign_jwt(black_box(&input)).unwrap());
    });
    let claims = r#"{"iss":"acme_agent01","sub":"acme_agent01","aud":["MQTTBroker"],"iat":1700000000,"exp":1700003600}"#;
    let jwt = per_op(3_000, || {
        black_box(gatehost::pki::jwt::jwt_sign(&rsa, "", claims, None, None).unwrap());
    });
    let openssl_rs256 = openssl_sign_time("rsa2048", "rsa 2048 bits");
    let openssl_es256 = openssl_sign_time("ecdsap256", "nistp256");

    let runs = 31;
    let rsa_gen = timed_runs(runs, || {
        black_box(PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap());
    });
    let ec_gen = timed_runs(runs, || {
        black_box(PrivateKey::generate(KeyAlgorithm::P256).unwrap());
    });
    let startup = timed_runs(runs, || {
        openssl(&["version"]);
    });
    let openssl_rsa_gen = timed_runs(runs, || {
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &out("r.key"),
        ]);
    });
    let openssl_ec_gen = timed_runs(runs, || {
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &out("e.key"),
        ]);
    });
    let net = |d: Duration| d.saturating_sub(startup);

    println!("| operation | gatehost | openssl | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!("| SAS token mint | {} | - | - | ≤ 5 µs |", fmt(sas));
    println!(
        "| RS256 sign (RSA-2048) | {} | {} | {:.2}× | ≤ 1.5× |",
        fmt(rs256),
        fmt(openssl_rs256),
        rs256.as_secs_f64() / openssl_rs256.as_secs_f64()
    );
    println!(
        "| ES256 sign (P-256) | {} | {} | {:.2}× | - |",
        fmt(es256),
        fmt(openssl_es256),
        es256.as_secs_f64() / openssl_es256.as_secs_f64()
    );
    println!(
        "| whole RS256 JWT (JSON, base64url, sign) | {} | - | - | - |",
        fmt(jwt)
    );
    println!("| RSA-2048 keygen, median of {runs} | {} | {} (process {}, minus start-up {}) | {:.2}× | ≤ 2× |", fmt(rsa_gen), fmt(net(openssl_rsa_gen)), fmt(openssl_rsa_gen), fmt(startup), rsa_gen.as_secs_f64() / net(openssl_rsa_gen).as_secs_f64());
    println!(
        "| P-256 keygen, median of {runs} | {} | {} (process {}, minus start-up) | - | - |",
        fmt(ec_gen),
        fmt(net(openssl_ec_gen)),
        fmt(openssl_ec_gen)
    );
}
