//! No panic on any input: thousands of mutated keys, certificates, chains and CSRs (byte flips,
//! truncations, insertions, and corruptions inside the DER so the ASN.1 parsers are reached) go
//! through every parsing entry point. The same entry point is the cargo-fuzz target in host/fuzz.

use crate::support::openssl::{legacy_keys, openssl, seed_pki};
use gatehost::caps::certs::parse_untrusted;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate_bytes(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    match rng.below(4) {
        0 => {
            for _ in 0..=rng.below(8) {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
        }
        1 => out.truncate(rng.below(out.len())),
        2 => {
            let i = rng.below(out.len());
            let junk: Vec<u8> = (0..rng.below(16) + 1).map(|_| rng.next() as u8).collect();
            out.splice(i..i, junk);
        }
        _ => {
            let (a, b) = (rng.below(out.len()), rng.below(out.len()));
            let (a, b) = (a.min(b), a.max(b));
            let copy = out[a..b].to_vec();
            out.splice(a..a, copy);
        }
    }
    out
}

/// Mutate the DER inside each PEM block and re-encode it, so the input is still PEM.
fn mutate_der(rng: &mut Rng, pem_text: &str) -> Vec<u8> {
    let blocks = pem::parse_many(pem_text).unwrap();
    blocks
        .iter()
        .map(|b| {
            let der = if rng.below(2) == 0 {
                mutate_bytes(rng, b.contents())
            } else {
                b.contents().to_vec()
            };
            pem::encode(&pem::Pem::new(b.tag(), der))
        })
        .collect::<String>()
        .into_bytes()
}

#[test]
fn no_input_makes_the_certificate_parsers_panic() {
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
            "aes-128-cbc",
            "-iter",
            "1",
            "-in",
            "sec1.key",
            "-passout",
            "pass:passphrase",
            "-out",
            "enc.key",
        ],
    );
    let seeds: Vec<String> = [
        "dev01.key",
        "pkcs1.key",
        "sec1.key",
        "enc.key",
        "dev01.pem",
        "dev01_chain.pem",
        "dev01.csr",
        "ca.pem",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(d.join(f)).unwrap())
    .collect();

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut runs = 0;
    for round in 0..400 {
        for seed in &seeds {
            let input = if round % 2 == 0 {
                mutate_der(&mut rng, seed)
            } else {
                mutate_bytes(&mut rng, seed.as_bytes())
            };
            let result = std::panic::catch_unwind(|| parse_untrusted(&input));
            assert!(
                result.is_ok(),
                "panic on input:\n{}",
                String::from_utf8_lossy(&input)
            );
            runs += 1;
        }
    }
    assert_eq!(runs, 3200);
}
