//! WIT host impl of `gatehost:plugin/certs`.

use super::{KeyAlgorithm, KeyHandle, Subject};
use crate::caps::wasm::WasmCaps;
use crate::caps::wit::plugin::certs::{
    CertificateInfo as WitInfo, Host, HostKeyPair, KeyAlgorithm as WitAlg, Subject as WitSubject,
};
use crate::caps::wit::plugin::types::Error;
use crate::model::PluginError;
use wasmtime::component::Resource;

type WitResult<T> = wasmtime::Result<Result<T, Error>>;

fn to_wit_alg(a: KeyAlgorithm) -> WitAlg {
    match a {
        KeyAlgorithm::Rsa2048 => WitAlg::Rsa2048,
        KeyAlgorithm::Rsa3072 => WitAlg::Rsa3072,
        KeyAlgorithm::Rsa4096 => WitAlg::Rsa4096,
        KeyAlgorithm::P256 => WitAlg::P256,
    }
}

fn from_wit_alg(a: WitAlg) -> KeyAlgorithm {
    match a {
        WitAlg::Rsa2048 => KeyAlgorithm::Rsa2048,
        WitAlg::Rsa3072 => KeyAlgorithm::Rsa3072,
        WitAlg::Rsa4096 => KeyAlgorithm::Rsa4096,
        WitAlg::P256 => KeyAlgorithm::P256,
    }
}

impl WasmCaps<'_> {
    /// Put a key handle in the resource table, or pass the error through.
    fn key_resource(
        &mut self,
        key: Result<KeyHandle, PluginError>,
    ) -> WitResult<Resource<KeyHandle>> {
        match key {
            Ok(handle) => Ok(Ok(self.table.push(handle)?)),
            Err(e) => Ok(Err(e.into())),
        }
    }

    pub(crate) fn key(&self, key: &Resource<KeyHandle>) -> wasmtime::Result<&KeyHandle> {
        Ok(self.table.get(key)?)
    }
}

impl HostKeyPair for WasmCaps<'_> {
    fn generate(&mut self, alg: WitAlg, name: String) -> WitResult<Resource<KeyHandle>> {
        let key = super::generate_key(self.caps, from_wit_alg(alg), &name);
        self.key_resource(key)
    }

    fn load(&mut self, path: String, passphrase: Option<String>) -> WitResult<Resource<KeyHandle>> {
        let key = super::load_key(self.caps, &path, passphrase.as_deref());
        self.key_resource(key)
    }

    fn open(&mut self, reference: String) -> WitResult<Resource<KeyHandle>> {
        let key = super::open_key(self.caps, &reference);
        self.key_resource(key)
    }

    fn reference(&mut self, key: Resource<KeyHandle>) -> wasmtime::Result<String> {
        Ok(self.key(&key)?.reference.clone())
    }

    fn algorithm(&mut self, key: Resource<KeyHandle>) -> wasmtime::Result<WitAlg> {
        Ok(to_wit_alg(self.key(&key)?.key.algorithm()))
    }

    fn public_key_pem(&mut self, key: Resource<KeyHandle>) -> wasmtime::Result<String> {
        Ok(self.key(&key)?.key.public_key_pem())
    }

    fn drop(&mut self, key: Resource<KeyHandle>) -> wasmtime::Result<()> {
        self.table.delete(key)?;
        Ok(())
    }
}

impl Host for WasmCaps<'_> {
    fn create_csr(
        &mut self,
        key: Resource<KeyHandle>,
        s: WitSubject,
        dns_names: Vec<String>,
    ) -> WitResult<String> {
        let subject = Subject {
            country: s.country,
            state: s.state,
            locality: s.locality,
            organization: s.organization,
            organizational_unit: s.organizational_unit,
            common_name: s.common_name,
        };
        let key = self.key(&key)?.key.clone();
        Ok(super::x509::create_csr(&key, &subject, &dns_names).map_err(Into::into))
    }

    fn read_chain(&mut self, path: String) -> WitResult<Vec<WitInfo>> {
        Ok(super::read_chain(self.caps, &path)
            .map(|infos| {
                infos
                    .into_iter()
                    .map(|i| WitInfo {
                        subject: i.subject,
                        subject_cn: i.subject_cn,
                        issuer: i.issuer,
                        issuer_cn: i.issuer_cn,
                        serial_hex: i.serial_hex,
                        not_before: i.not_before,
                        not_after: i.not_after,
                        is_ca: i.is_ca,
                        sha1_thumbprint: i.sha1_thumbprint,
                        sha256_thumbprint: i.sha256_thumbprint,
                        der_base64: i.der_base64,
                    })
                    .collect()
            })
            .map_err(Into::into))
    }

    fn key_matches(&mut self, key: Resource<KeyHandle>, cert_path: String) -> WitResult<bool> {
        let key = self.key(&key)?.key.clone();
        Ok(super::key_matches(self.caps, &key, &cert_path).map_err(Into::into))
    }

    fn verify_chain(&mut self, chain_path: String, ca_path: String) -> WitResult<()> {
        Ok(super::verify_chain(self.caps, &chain_path, &ca_path).map_err(Into::into))
    }
}
