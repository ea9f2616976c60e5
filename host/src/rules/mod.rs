//! Rules that are not plugins: the built-in template rule, configured in `gatehost.toml`.

pub mod template;
