//! WIT host impl of `gatehost:plugin/certs`.

use super::{unsupported, KeyHandle};
use crate::engine::bindings::plugin::certs::{
    CertificateInfo, Host, HostKeyPair, KeyAlgorithm, Subject,
};
use crate::engine::bindings::plugin::types::Error;
use crate::engine::wasm::HostState;
use wasmtime::component::Resource;

type WitResult<T> = wasmtime::Result<Result<T, Error>>;

impl HostKeyPair for HostState {
    fn generate(&mut self, _alg: KeyAlgorithm, _name: String) -> WitResult<Resource<KeyHandle>> {
        Ok(Err(unsupported("key-pair.generate").into()))
    }

    fn load(
        &mut self,
        _path: String,
        _passphrase: Option<String>,
    ) -> WitResult<Resource<KeyHandle>> {
        Ok(Err(unsupported("key-pair.load").into()))
    }

    fn open(&mut self, _reference: String) -> WitResult<Resource<KeyHandle>> {
        Ok(Err(unsupported("key-pair.open").into()))
    }

    fn reference(&mut self, key: Resource<KeyHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&key)?.reference.clone())
    }

    fn algorithm(&mut self, _key: Resource<KeyHandle>) -> wasmtime::Result<KeyAlgorithm> {
        wasmtime::bail!("{}", unsupported("key-pair.algorithm"))
    }

    fn public_key_pem(&mut self, _key: Resource<KeyHandle>) -> wasmtime::Result<String> {
        wasmtime::bail!("{}", unsupported("key-pair.public-key-pem"))
    }

    fn drop(&mut self, key: Resource<KeyHandle>) -> wasmtime::Result<()> {
        self.table.delete(key)?;
        Ok(())
    }
}

impl Host for HostState {
    fn create_csr(
        &mut self,
        _key: Resource<KeyHandle>,
        _subject: Subject,
        _dns_names: Vec<String>,
    ) -> WitResult<String> {
        Ok(Err(unsupported("create-csr").into()))
    }

    fn read_chain(&mut self, _path: String) -> WitResult<Vec<CertificateInfo>> {
        Ok(Err(unsupported("read-chain").into()))
    }

    fn key_matches(&mut self, _key: Resource<KeyHandle>, _cert_path: String) -> WitResult<bool> {
        Ok(Err(unsupported("key-matches").into()))
    }

    fn verify_chain(&mut self, _chain_path: String, _ca_path: String) -> WitResult<()> {
        Ok(Err(unsupported("verify-chain").into()))
    }
}
