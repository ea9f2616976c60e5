//! WIT host impl of `gatehost:plugin/crypto`.

use crate::caps::certs::KeyHandle;
use crate::caps::wasm::WasmCaps;
use crate::caps::wit::plugin::crypto::Host;
use crate::caps::wit::plugin::types::Error;
use wasmtime::component::Resource;

type WitResult<T> = wasmtime::Result<Result<T, Error>>;

impl Host for WasmCaps<'_> {
    fn sha256(&mut self, data: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
        Ok(super::sha256(&data))
    }

    fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
        Ok(super::hmac_sha256(&key, &data))
    }

    fn base64_encode(&mut self, data: Vec<u8>) -> wasmtime::Result<String> {
        Ok(super::base64_encode(&data))
    }

    fn base64_decode(&mut self, text: String) -> WitResult<Vec<u8>> {
        Ok(super::base64_decode(&text).map_err(Into::into))
    }

    fn base64url_encode(&mut self, data: Vec<u8>) -> wasmtime::Result<String> {
        Ok(super::base64url_encode(&data))
    }

    fn base64url_decode(&mut self, text: String) -> WitResult<Vec<u8>> {
        Ok(super::base64url_decode(&text).map_err(Into::into))
    }

    fn percent_encode(&mut self, text: String) -> wasmtime::Result<String> {
        Ok(super::percent_encode(&text))
    }

    fn uuid_v4(&mut self) -> wasmtime::Result<String> {
        Ok(super::uuid_v4())
    }

    fn now_unix(&mut self) -> wasmtime::Result<u64> {
        Ok(super::now_unix())
    }

    fn sas_token(
        &mut self,
        resource: String,
        key: String,
        policy: Option<String>,
        expiry: u64,
    ) -> WitResult<String> {
        Ok(super::sas_token(&resource, &key, policy.as_deref(), expiry).map_err(Into::into))
    }

    fn derive_device_key(
        &mut self,
        group_key: String,
        registration_id: String,
    ) -> WitResult<String> {
        Ok(super::derive_device_key(&group_key, &registration_id).map_err(Into::into))
    }

    fn jwt_sign(
        &mut self,
        key: Resource<KeyHandle>,
        header_json: String,
        claims_json: String,
        x5c_chain_file: Option<String>,
    ) -> WitResult<String> {
        let key = self.key(&key)?.key.clone();
        Ok(super::plugin_jwt(
            self.caps,
            &key,
            &header_json,
            &claims_json,
            x5c_chain_file.as_deref(),
        )
        .map_err(Into::into))
    }

    fn mindconnect_jwt(
        &mut self,
        key: Resource<KeyHandle>,
        chain_file: String,
        client_id: String,
        tenant: String,
        ttl_secs: u32,
    ) -> WitResult<String> {
        let key = self.key(&key)?.key.clone();
        Ok(super::plugin_mindconnect_jwt(
            self.caps,
            &key,
            &chain_file,
            &client_id,
            &tenant,
            ttl_secs.into(),
        )
        .map_err(Into::into))
    }
}
