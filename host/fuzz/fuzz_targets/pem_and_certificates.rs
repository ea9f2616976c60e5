//! Fuzz the PEM, key and certificate parsing entry points: any input may fail, none may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gatehost::caps::certs::parse_untrusted(data);
});
