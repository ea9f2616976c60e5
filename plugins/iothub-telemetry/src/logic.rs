//! The rule's logic as plain Rust, free of any binding: the component (`lib.rs`) wraps it, and
//! the host's benchmark compiles this same file natively as its baseline.
//!
//! JSON is classified and quoted with serde_json, the library behind the host's `json`
//! interface, so the output matches the Rhai twin byte for byte (the parity test checks).

/// What the rule makes of one message.
pub struct Telemetry<'a> {
    pub device: &'a str,
    pub topic: String,
    /// `None`: forward the original payload unchanged.
    pub payload: Option<Vec<u8>>,
}

pub fn translate<'a>(topic: &'a str, payload: &[u8]) -> Result<Telemetry<'a>, String> {
    let mut levels = topic.splitn(3, '/');
    let (Some(site), Some(device), Some(measurement)) =
        (levels.next(), levels.next(), levels.next())
    else {
        return Err(format!(
            "topic '{topic}' does not have the form <site>/<device>/<measurement>"
        ));
    };
    if device.is_empty() {
        return Err(format!("topic '{topic}' has an empty device level"));
    }

    let mut out_topic = String::with_capacity(64 + topic.len() * 3);
    out_topic.push_str("devices/");
    out_topic.push_str(device);
    out_topic.push_str("/messages/events/");

    if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_err() {
        out_topic.push_str("site=");
        percent_encode_into(site, &mut out_topic);
        out_topic.push_str("&measurement=");
        percent_encode_into(measurement, &mut out_topic);
        return Ok(Telemetry {
            device,
            topic: out_topic,
            payload: None,
        });
    }
    out_topic.push_str("$.ct=application%2Fjson&$.ce=utf-8");

    // Valid JSON: only JSON whitespace can surround it.
    let text = trim_json_ws(payload);
    let mut body = Vec::with_capacity(payload.len() + 48 + topic.len() * 2);
    body.extend_from_slice(b"{\"site\":");
    quote_into(site, &mut body);
    body.extend_from_slice(b",\"device\":");
    quote_into(device, &mut body);
    body.extend_from_slice(b",\"measurement\":");
    quote_into(measurement, &mut body);
    if text.first() == Some(&b'{') {
        let inner = trim_json_ws(&text[1..text.len() - 1]);
        if !inner.is_empty() {
            body.push(b',');
            body.extend_from_slice(inner);
        }
    } else {
        body.extend_from_slice(b",\"value\":");
        body.extend_from_slice(text);
    }
    body.push(b'}');
    Ok(Telemetry {
        device,
        topic: out_topic,
        payload: Some(body),
    })
}

fn trim_json_ws(bytes: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| b" \t\r\n".contains(b);
    let start = bytes.iter().position(|b| !is_ws(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ws(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// As the host's `json.quote`: `s` as a JSON string literal.
fn quote_into(s: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(out, s).expect("writing a str into a Vec cannot fail");
}

/// As the host's `crypto.percent-encode`: every byte outside `[A-Za-z0-9_.~-]` as `%XX`.
fn percent_encode_into(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"_.~-".contains(&b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}
