//! The `json` capability: classify and quote JSON once, in the host, so that rules in both
//! engines make identical decisions and produce identical bytes.

pub mod rhai;
pub mod wasm;

use serde::de::IgnoredAny;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    Invalid,
    Object,
    Array,
    String,
    Number,
    Boolean,
    Null,
}

impl JsonKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JsonKind::Invalid => "invalid",
            JsonKind::Object => "object",
            JsonKind::Array => "array",
            JsonKind::String => "string",
            JsonKind::Number => "number",
            JsonKind::Boolean => "boolean",
            JsonKind::Null => "null",
        }
    }
}

/// What kind of JSON document `document` is; `Invalid` for non-UTF-8 or malformed input.
pub fn kind(document: &[u8]) -> JsonKind {
    if serde_json::from_slice::<IgnoredAny>(document).is_err() {
        return JsonKind::Invalid;
    }
    // Valid JSON: the first non-whitespace byte names the kind.
    match document.iter().find(|b| !b" \t\r\n".contains(b)) {
        Some(b'{') => JsonKind::Object,
        Some(b'[') => JsonKind::Array,
        Some(b'"') => JsonKind::String,
        Some(b't') | Some(b'f') => JsonKind::Boolean,
        Some(b'n') => JsonKind::Null,
        Some(_) => JsonKind::Number,
        None => JsonKind::Invalid,
    }
}

/// `s` as a JSON string literal, quotes included.
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("serializing a str cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind(br#" {"a":1} "#), JsonKind::Object);
        assert_eq!(kind(b"[1,2]"), JsonKind::Array);
        assert_eq!(kind(b"\"x\""), JsonKind::String);
        assert_eq!(kind(b"-1.5e3"), JsonKind::Number);
        assert_eq!(kind(b"true"), JsonKind::Boolean);
        assert_eq!(kind(b"null"), JsonKind::Null);
        assert_eq!(kind(b""), JsonKind::Invalid);
        assert_eq!(kind(b"{"), JsonKind::Invalid);
        assert_eq!(kind(b"{} x"), JsonKind::Invalid);
        assert_eq!(kind(&[0xff, 0xfe]), JsonKind::Invalid);
    }

    #[test]
    fn quoting_escapes() {
        assert_eq!(quote("a\"b\\c\n"), r#""a\"b\\c\n""#);
        assert_eq!(quote("ü"), "\"ü\"");
    }
}
