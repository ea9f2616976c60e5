//! PEM as gatehost writes and reads it: LF line endings (as OpenSSL writes them), and the one
//! sentence for a text that holds no PEM block.

/// PEM with LF line endings, as OpenSSL writes it.
pub(crate) fn pem_lf(block: &pem::Pem) -> String {
    pem::encode_config(
        block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Why a text yields no PEM block: truncated (a BEGIN without its END) or not PEM at all.
pub(crate) fn no_pem_block(text: &str, source: &str) -> String {
    if text.contains("-----BEGIN ") {
        format!(
            "{source} is not valid PEM: it is truncated or damaged (a BEGIN line without its END)"
        )
    } else {
        format!("{source} contains no PEM block")
    }
}
