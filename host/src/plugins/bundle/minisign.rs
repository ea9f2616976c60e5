//! minisign-compatible Ed25519 keys and signatures: the key files `minisign -G -W` writes and
//! reads, and the `.minisig` files `minisign -S` writes and `minisign -V` checks (prehashed
//! `ED` signatures; legacy `Ed` ones verify too). Password-protected secret keys are refused.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use blake2::{Blake2b512, Digest};
use zeroize::Zeroizing;

const COMMENT: &str = "untrusted comment: ";
const TRUSTED: &str = "trusted comment: ";

/// A minisign key id: 8 random bytes, shown as minisign shows it (little-endian, 16 hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl std::str::FromStr for KeyId {
    type Err = String;
    fn from_str(s: &str) -> Result<KeyId, String> {
        let s = s.trim();
        if s.len() != 16 {
            return Err(format!(
                "key id '{s}' must be 16 hex digits, as minisign prints it"
            ));
        }
        u64::from_str_radix(s, 16)
            .map(|v| KeyId(v.to_le_bytes()))
            .map_err(|_| format!("key id '{s}' must be 16 hex digits, as minisign prints it"))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MinisignError {
    #[error("not a minisign {what}: {why}")]
    Format { what: &'static str, why: String },
    #[error("the secret key is password-protected; gatehost signs with unencrypted keys (create one with `gatehost plugin keygen` or `minisign -G -W`, or remove the password with `minisign -C -W`)")]
    Encrypted,
    #[error("the signature was made by key {signed_by}, not by key {expected}")]
    WrongKey { signed_by: KeyId, expected: KeyId },
    #[error("the signature does not match (the signed file or the signature was changed)")]
    BadSignature,
    #[error("the trusted comment of the signature was changed")]
    BadTrustedComment,
}

fn format_err(what: &'static str, why: impl Into<String>) -> MinisignError {
    MinisignError::Format {
        what,
        why: why.into(),
    }
}

/// A publisher's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub id: KeyId,
    pub key: [u8; 32],
}

impl PublicKey {
    /// Parse a `.pub` file (two lines) or the bare base64 line `minisign -P` takes.
    pub fn parse(text: &str) -> Result<PublicKey, MinisignError> {
        let what = "public key";
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let line = match lines.as_slice() {
            [comment, key] if comment.starts_with(COMMENT) => *key,
            [key] => *key,
            _ => {
                return Err(format_err(
                    what,
                    "expected an 'untrusted comment:' line and a base64 line",
                ))
            }
        };
        let raw = B64
            .decode(line)
            .map_err(|e| format_err(what, format!("the key line is not base64 ({e})")))?;
        if raw.len() != 42 {
            return Err(format_err(
                what,
                format!("the key is {} bytes, not 42", raw.len()),
            ));
        }
        if &raw[..2] != b"Ed" {
            return Err(format_err(
                what,
                "unsupported signature algorithm (not Ed25519)",
            ));
        }
        Ok(PublicKey {
            id: KeyId(raw[2..10].try_into().expect("8 bytes")),
            key: raw[10..42].try_into().expect("32 bytes"),
        })
    }

    /// The base64 line (what `minisign -P` takes).
    pub fn base64(&self) -> String {
        let mut raw = Vec::with_capacity(42);
        raw.extend_from_slice(b"Ed");
        raw.extend_from_slice(&self.id.0);
        raw.extend_from_slice(&self.key);
        B64.encode(raw)
    }

    /// The `.pub` file, byte for byte as minisign writes it.
    pub fn to_file(&self) -> String {
        format!(
            "{COMMENT}minisign public key {}\n{}\n",
            self.id,
            self.base64()
        )
    }

    /// Check `signature` over `message` (prehashed or legacy).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), MinisignError> {
        if signature.key_id != self.id {
            return Err(MinisignError::WrongKey {
                signed_by: signature.key_id,
                expected: self.id,
            });
        }
        let key = UnparsedPublicKey::new(&ED25519, self.key);
        let signed: Vec<u8> = if signature.prehashed {
            Blake2b512::digest(message).to_vec()
        } else {
            message.to_vec()
        };
        key.verify(&signed, &signature.sig)
            .map_err(|_| MinisignError::BadSignature)?;
        let mut global = signature.sig.to_vec();
        global.extend_from_slice(signature.trusted_comment.as_bytes());
        key.verify(&global, &signature.global_sig)
            .map_err(|_| MinisignError::BadTrustedComment)
    }
}

/// A secret signing key (unencrypted minisign format).
pub struct SecretKey {
    pub id: KeyId,
    /// libsodium layout: 32-byte seed then the 32-byte public key.
    sk: Zeroizing<[u8; 64]>,
}

impl SecretKey {
    /// A new random key pair.
    pub fn generate() -> SecretKey {
        let mut seed = Zeroizing::new([0u8; 32]);
        let mut id = [0u8; 8];
        aws_lc_rs::rand::fill(seed.as_mut()).expect("the system random source works");
        aws_lc_rs::rand::fill(&mut id).expect("the system random source works");
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_ref()).expect("32-byte seed");
        let mut sk = Zeroizing::new([0u8; 64]);
        sk[..32].copy_from_slice(seed.as_ref());
        sk[32..].copy_from_slice(pair.public_key().as_ref());
        SecretKey { id: KeyId(id), sk }
    }

    /// Parse a `.key` file as `minisign -G -W` writes it.
    pub fn parse(text: &str) -> Result<SecretKey, MinisignError> {
        let what = "secret key";
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let (Some(comment), Some(line)) = (lines.next(), lines.next()) else {
            return Err(format_err(
                what,
                "expected an 'untrusted comment:' line and a base64 line",
            ));
        };
        if !comment.starts_with(COMMENT) {
            return Err(format_err(
                what,
                "the first line must start with 'untrusted comment:'",
            ));
        }
        let raw = Zeroizing::new(
            B64.decode(line)
                .map_err(|e| format_err(what, format!("the key line is not base64 ({e})")))?,
        );
        if raw.len() != 158 {
            return Err(format_err(
                what,
                format!("the key is {} bytes, not 158", raw.len()),
            ));
        }
        if &raw[..2] != b"Ed" {
            return Err(format_err(
                what,
                "unsupported signature algorithm (not Ed25519)",
            ));
        }
        match &raw[2..4] {
            b"\0\0" => {}
            b"Sc" => return Err(MinisignError::Encrypted),
            _ => return Err(format_err(what, "unsupported key derivation function")),
        }
        if &raw[4..6] != b"B2" {
            return Err(format_err(what, "unsupported checksum function"));
        }
        let id = KeyId(raw[54..62].try_into().expect("8 bytes"));
        let mut sk = Zeroizing::new([0u8; 64]);
        sk.copy_from_slice(&raw[62..126]);
        let pair = Ed25519KeyPair::from_seed_unchecked(&sk[..32])
            .map_err(|_| format_err(what, "the key bytes are not an Ed25519 key"))?;
        if pair.public_key().as_ref() != &sk[32..] {
            return Err(format_err(
                what,
                "the key is corrupt (its public half does not match)",
            ));
        }
        Ok(SecretKey { id, sk })
    }

    /// The `.key` file as `minisign -G -W` writes it (no KDF, zero salt and checksum).
    pub fn to_file(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new(vec![0u8; 158]);
        raw[..2].copy_from_slice(b"Ed");
        raw[4..6].copy_from_slice(b"B2");
        raw[54..62].copy_from_slice(&self.id.0);
        raw[62..126].copy_from_slice(self.sk.as_ref());
        Zeroizing::new(format!(
            "{COMMENT}minisign encrypted secret key\n{}\n",
            B64.encode(raw.as_slice())
        ))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            id: self.id,
            key: self.sk[32..].try_into().expect("32 bytes"),
        }
    }

    /// A prehashed (`ED`) signature of `message` carrying `trusted_comment`.
    pub fn sign(&self, message: &[u8], trusted_comment: &str) -> Signature {
        let pair = Ed25519KeyPair::from_seed_unchecked(&self.sk[..32]).expect("checked at parse");
        let sig: [u8; 64] = pair
            .sign(&Blake2b512::digest(message))
            .as_ref()
            .try_into()
            .expect("64 bytes");
        let trusted_comment = trusted_comment.replace(['\r', '\n'], " ");
        let mut global = sig.to_vec();
        global.extend_from_slice(trusted_comment.as_bytes());
        let global_sig: [u8; 64] = pair.sign(&global).as_ref().try_into().expect("64 bytes");
        Signature {
            untrusted_comment: Signature::canonical_comment(self.id),
            key_id: self.id,
            prehashed: true,
            sig,
            trusted_comment,
            global_sig,
        }
    }
}

/// A `.minisig` signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The first line's text. Not signed (by minisign's design anyone can change it), so it is
    /// kept as written and trusted for nothing.
    pub untrusted_comment: String,
    pub key_id: KeyId,
    pub prehashed: bool,
    pub sig: [u8; 64],
    pub trusted_comment: String,
    pub global_sig: [u8; 64],
}

impl Signature {
    /// The untrusted comment gatehost writes (minisign's own adds no key id).
    fn canonical_comment(key_id: KeyId) -> String {
        format!("signature from minisign secret key {key_id}")
    }

    /// Parse a `.minisig` file (its untrusted comment is not part of the signature).
    pub fn parse(text: &str) -> Result<Signature, MinisignError> {
        let what = "signature";
        let lines: Vec<&str> = text.split('\n').collect();
        let (comment, sig_line, trusted, global_line) = match lines.as_slice() {
            [a, b, c, d] | [a, b, c, d, ""] => (*a, *b, *c, *d),
            _ => return Err(format_err(what, "expected four lines")),
        };
        let Some(untrusted_comment) = comment.strip_prefix(COMMENT) else {
            return Err(format_err(
                what,
                "the first line must start with 'untrusted comment:'",
            ));
        };
        let trusted_comment = trusted
            .strip_prefix(TRUSTED)
            .ok_or_else(|| format_err(what, "the third line must start with 'trusted comment:'"))?;
        let raw = B64
            .decode(sig_line)
            .map_err(|e| format_err(what, format!("the signature line is not base64 ({e})")))?;
        if raw.len() != 74 {
            return Err(format_err(
                what,
                format!("the signature is {} bytes, not 74", raw.len()),
            ));
        }
        let prehashed = match &raw[..2] {
            b"ED" => true,
            b"Ed" => false,
            _ => return Err(format_err(what, "unsupported signature algorithm")),
        };
        let global = B64
            .decode(global_line)
            .map_err(|e| format_err(what, format!("the global signature is not base64 ({e})")))?;
        let global_sig: [u8; 64] = global
            .as_slice()
            .try_into()
            .map_err(|_| format_err(what, "the global signature is not 64 bytes"))?;
        Ok(Signature {
            untrusted_comment: untrusted_comment.to_string(),
            key_id: KeyId(raw[2..10].try_into().expect("8 bytes")),
            prehashed,
            sig: raw[10..74].try_into().expect("64 bytes"),
            trusted_comment: trusted_comment.to_string(),
            global_sig,
        })
    }

    /// The `.minisig` file, in minisign's four-line layout.
    pub fn to_file(&self) -> String {
        let mut raw = Vec::with_capacity(74);
        raw.extend_from_slice(if self.prehashed { b"ED" } else { b"Ed" });
        raw.extend_from_slice(&self.key_id.0);
        raw.extend_from_slice(&self.sig);
        format!(
            "{COMMENT}{}\n{}\n{TRUSTED}{}\n{}\n",
            self.untrusted_comment,
            B64.encode(raw),
            self.trusted_comment,
            B64.encode(self.global_sig)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_signatures_round_trip() {
        let sk = SecretKey::generate();
        let again = SecretKey::parse(&sk.to_file()).unwrap();
        assert_eq!(again.public(), sk.public());
        let pk = PublicKey::parse(&sk.public().to_file()).unwrap();
        let sig = sk.sign(b"hello", "gatehost test");
        let text = sig.to_file();
        let parsed = Signature::parse(&text).unwrap();
        assert_eq!(parsed, sig);
        let comment = format!(
            "untrusted comment: {}\n",
            Signature::canonical_comment(sk.id)
        );
        assert!(text.starts_with(&comment), "{text}");
        pk.verify(b"hello", &parsed).unwrap();
        assert_eq!(
            pk.verify(b"hellO", &parsed),
            Err(MinisignError::BadSignature)
        );
        let mut changed = parsed.clone();
        changed.trusted_comment.push('!');
        assert_eq!(
            pk.verify(b"hello", &changed),
            Err(MinisignError::BadTrustedComment)
        );
        let other = SecretKey::generate().public();
        assert!(matches!(
            other.verify(b"hello", &parsed),
            Err(MinisignError::WrongKey { .. })
        ));
    }

    #[test]
    fn key_ids_print_as_minisign_does() {
        // `minisign -G` printed "minisign public key 1DA33EEBD4B283B0" for this key.
        let pk =
            PublicKey::parse("RWSwg7LU6z6jHTSs6thDMNpoKdq7ubUqUPV4tdSTaeKUIzcGAV+uawyz").unwrap();
        assert_eq!(pk.id.to_string(), "1DA33EEBD4B283B0");
        assert_eq!("1DA33EEBD4B283B0".parse::<KeyId>().unwrap(), pk.id);
        assert!(pk
            .to_file()
            .starts_with("untrusted comment: minisign public key 1DA33EEBD4B283B0\n"));
    }

    #[test]
    fn encrypted_and_garbled_keys_are_refused() {
        let sk = SecretKey::generate();
        let text = sk.to_file();
        let line = text.lines().nth(1).unwrap();
        let mut raw = B64.decode(line).unwrap();
        raw[2..4].copy_from_slice(b"Sc");
        let encrypted = format!("untrusted comment: x\n{}\n", B64.encode(&raw));
        assert_eq!(
            SecretKey::parse(&encrypted).err(),
            Some(MinisignError::Encrypted)
        );
        assert!(matches!(
            SecretKey::parse("hello"),
            Err(MinisignError::Format { .. })
        ));
        assert!(matches!(
            PublicKey::parse("untrusted comment: x\n!!!\n"),
            Err(MinisignError::Format { .. })
        ));
    }
}
