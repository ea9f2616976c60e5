//! The built-in template rule: the common brownfield-to-cloud translation written in the config
//! instead of a script. A topic pattern with named captures becomes a target topic, the device
//! the message belongs to, an IoT Hub property bag and (optionally) JSON fields.
//!
//! ```toml
//! [[rules]]
//! name = "plant-telemetry"
//! [rules.template]
//! pattern = "plant1/{line}/{machine}/#"          # {name} = one level, + = any level, # = the rest ({#})
//! device = "{machine}"                           # the upstream device session
//! topic = "devices/{machine}/messages/events/"   # the default for upstream messages
//! properties = { "$.ct" = "application/json", "$.ce" = "utf-8", line = "{line}" }
//! enrich = true                                  # add line, machine to a JSON payload
//! ```

use crate::caps::json::{kind, JsonKind};
use crate::engine::RulePlugin;
use crate::model::{Destination, ErrorKind, Message, Outbound, PluginError};
use crate::pki::crypto::percent_encode;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    pub pattern: String,
    /// The device whose upstream session gets the message (required unless `local`).
    #[serde(default)]
    pub device: Option<String>,
    /// Target topic; default `devices/<device>/messages/events/` (IoT Hub telemetry).
    #[serde(default)]
    pub topic: Option<String>,
    /// IoT Hub property bag appended to the topic (URL-encoded); `$.ct`, `$.ce` and the other
    /// `$.` system properties first, then the rest by name.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Add the captures as fields of a JSON payload (a JSON object gets them first; another JSON
    /// value becomes `{<captures>, "value": <payload>}`; anything else passes unchanged).
    #[serde(default)]
    pub enrich: bool,
    /// Send to the local broker instead of upstream (QoS and retain are then kept).
    #[serde(default)]
    pub local: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Capture(String),
    Any,
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// Index into the captures; `usize::MAX` is the `#` rest.
    Capture(usize),
}

const REST: usize = usize::MAX;

/// One entry of the property bag: `key=` already URL-encoded, and the value's template (or,
/// when it has no captures, the encoded value).
#[derive(Debug, Clone)]
struct Property {
    key: String,
    value: Vec<Piece>,
    fixed: Option<String>,
}

/// A compiled template rule.
#[derive(Debug, Clone)]
pub struct TemplateRule {
    name: String,
    pattern: String,
    levels: Vec<Level>,
    captures: Vec<String>,
    device: Option<Vec<Piece>>,
    topic: Vec<Piece>,
    properties: Vec<Property>,
    enrich: bool,
    local: bool,
}

/// A `[rules.template]` that does not compile: the rule and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule '{rule}': {why}")]
pub struct TemplateError {
    pub rule: String,
    pub why: String,
}

impl TemplateRule {
    /// Compile `config`; every mistake is one sentence naming the rule.
    pub fn new(name: &str, config: &TemplateConfig) -> Result<TemplateRule, TemplateError> {
        let fail = |why: String| TemplateError {
            rule: name.to_string(),
            why,
        };
        let levels = parse_pattern(&config.pattern).map_err(fail)?;
        let captures: Vec<String> = levels
            .iter()
            .filter_map(|l| match l {
                Level::Capture(c) => Some(c.clone()),
                _ => None,
            })
            .collect();
        let has_rest = levels.last() == Some(&Level::Rest);
        let compile = |what: &str, text: &str| {
            parse_template(text, &captures, has_rest)
                .map_err(|why| fail(format!("{what} '{text}': {why}")))
        };
        let device = match (&config.device, config.local) {
            (Some(d), _) => Some(compile("device", d)?),
            (None, true) => None,
            (None, false) => {
                return Err(fail(
                    "a template rule needs `device` (the upstream device) or `local = true`".into(),
                ))
            }
        };
        let topic_text = match (&config.topic, &config.device) {
            (Some(t), _) => t.clone(),
            (None, Some(d)) if !config.local => format!("devices/{d}/messages/events/"),
            (None, _) => return Err(fail("a local template rule needs `topic`".into())),
        };
        let topic = compile("topic", &topic_text)?;
        if !config.properties.is_empty() && !topic_text.ends_with('/') {
            return Err(fail(format!(
                "properties are appended to the topic as an IoT Hub property bag, so topic '{topic_text}' must end with '/'"
            )));
        }
        let mut properties: Vec<(String, Vec<Piece>)> = Vec::new();
        for (k, v) in &config.properties {
            if k.is_empty() {
                return Err(fail("a property has an empty name".into()));
            }
            properties.push((k.clone(), compile(&format!("property {k}"), v)?));
        }
        // System properties first, in the order IoT Hub's documentation writes them ($.ct
        // content type, $.ce encoding, other $. ones), then the application properties by name.
        let rank = |k: &str| match k {
            "$.ct" => 0,
            "$.ce" => 1,
            k if k.starts_with("$.") => 2,
            _ => 3,
        };
        properties.sort_by(|(a, _), (b, _)| (rank(a), a).cmp(&(rank(b), b)));
        let properties = properties
            .into_iter()
            .map(|(k, value)| {
                let key = match k.strip_prefix("$.") {
                    Some(system) => format!("$.{}=", percent_encode(system)),
                    None => format!("{}=", percent_encode(&k)),
                };
                // A value without captures is encoded once, here.
                let fixed = value
                    .iter()
                    .all(|p| matches!(p, Piece::Text(_)))
                    .then(|| percent_encode(&expand(&value, &[], "")));
                Property { key, value, fixed }
            })
            .collect();
        Ok(TemplateRule {
            name: name.to_string(),
            pattern: config.pattern.clone(),
            levels,
            captures,
            device,
            topic,
            properties,
            enrich: config.enrich,
            local: config.local,
        })
    }

    /// The MQTT filter matching exactly the topics of the pattern.
    pub fn filter(&self) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Capture(_) | Level::Any => "+",
                Level::Rest => "#",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The captured values of `topic` (plus the `#` rest), or `None` when it does not match.
    fn capture<'t>(&self, topic: &'t str) -> Option<(Vec<&'t str>, &'t str)> {
        let mut values = Vec::with_capacity(self.captures.len());
        let mut rest = topic;
        for (i, level) in self.levels.iter().enumerate() {
            if *level == Level::Rest {
                return Some((values, rest));
            }
            let (this, next) = match rest.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (rest, None),
            };
            match level {
                Level::Literal(l) if l != this => return None,
                Level::Capture(_) => values.push(this),
                _ => {}
            }
            let last = i + 1 == self.levels.len();
            match (next, last) {
                (None, true) => return Some((values, "")),
                (Some(n), false) => rest = n,
                // `a/#` also matches `a` (MQTT): the rest is empty.
                (None, false) if self.levels[i + 1] == Level::Rest => return Some((values, "")),
                _ => return None,
            }
        }
        None
    }
}

fn expand(pieces: &[Piece], values: &[&str], rest: &str) -> String {
    let mut out = String::with_capacity(128);
    for p in pieces {
        out.push_str(match p {
            Piece::Text(t) => t,
            Piece::Capture(REST) => rest,
            Piece::Capture(i) => values[*i],
        });
    }
    out
}

impl RulePlugin for TemplateRule {
    fn translate(&self, msg: &Message) -> Result<Vec<Outbound>, PluginError> {
        let invalid = |why: String| PluginError::new(ErrorKind::InvalidInput, why);
        let Some((values, rest)) = self.capture(&msg.topic) else {
            return Err(invalid(format!(
                "topic '{}' does not match pattern '{}' of rule '{}'",
                msg.topic, self.pattern, self.name
            )));
        };
        if let Some(i) = values.iter().position(|v| v.is_empty()) {
            return Err(invalid(format!(
                "topic '{}' has an empty {{{}}} level",
                msg.topic, self.captures[i]
            )));
        }
        let mut topic = expand(&self.topic, &values, rest);
        for (i, p) in self.properties.iter().enumerate() {
            if i > 0 {
                topic.push('&');
            }
            topic.push_str(&p.key);
            match &p.fixed {
                Some(value) => topic.push_str(value),
                None => topic.push_str(&percent_encode(&expand(&p.value, &values, rest))),
            }
        }
        let payload = if self.enrich {
            enrich(&msg.payload, &self.captures, &values)
        } else {
            msg.payload.clone()
        };
        let (destination, qos, retain) = match &self.device {
            Some(device) if !self.local => {
                let device = expand(device, &values, rest);
                // IoT Hub takes QoS 0 and 1, and no retained messages.
                (Destination::Upstream(device), msg.qos.min(1), false)
            }
            _ => (Destination::Local, msg.qos, msg.retain),
        };
        Ok(vec![Outbound {
            destination,
            message: Message {
                topic,
                payload,
                qos,
                retain,
                properties: msg.properties.clone(),
            },
        }])
    }
}

/// Add the captures to a JSON payload without touching the original bytes: an object gets them
/// as its first fields (a field the payload already has is not added again); another JSON value
/// is wrapped as `"value"`; anything else is returned unchanged.
fn enrich(payload: &[u8], names: &[String], values: &[&str]) -> Vec<u8> {
    // One parse: an object's top-level keys (values skipped), or the kind of another value.
    let is_object = payload.trim_ascii_start().starts_with(b"{");
    let existing: Option<Vec<String>> = if is_object {
        match serde_json::from_slice::<ObjectKeys>(payload) {
            Ok(keys) => Some(keys.0),
            Err(_) => return payload.to_vec(),
        }
    } else if kind(payload) == JsonKind::Invalid {
        return payload.to_vec();
    } else {
        None
    };
    let text = std::str::from_utf8(payload)
        .expect("valid JSON is UTF-8")
        .trim();
    let mut out = Vec::with_capacity(payload.len() + 32 * names.len() + 16);
    out.push(b'{');
    for (n, v) in names.iter().zip(values) {
        if existing.as_ref().is_some_and(|keys| keys.contains(n)) {
            continue;
        }
        if out.len() > 1 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, n).expect("writing to a Vec cannot fail");
        out.push(b':');
        serde_json::to_writer(&mut out, v).expect("writing to a Vec cannot fail");
    }
    match existing {
        Some(_) => {
            let inner = text[1..text.len() - 1].trim();
            if !inner.is_empty() {
                if out.len() > 1 {
                    out.push(b',');
                }
                out.extend_from_slice(inner.as_bytes());
            }
        }
        None => {
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(b"\"value\":");
            out.extend_from_slice(text.as_bytes());
        }
    }
    out.push(b'}');
    out
}

/// The top-level keys of a JSON object, its values checked but skipped.
struct ObjectKeys(Vec<String>);

impl<'de> Deserialize<'de> for ObjectKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ObjectKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ObjectKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some((k, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                    keys.push(k);
                }
                Ok(ObjectKeys(keys))
            }
        }
        d.deserialize_map(Visitor)
    }
}

fn is_capture_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_pattern(pattern: &str) -> Result<Vec<Level>, String> {
    let bad = |why: &str| Err(format!("pattern '{pattern}' {why}"));
    if pattern.is_empty() {
        return bad("is empty");
    }
    let parts: Vec<&str> = pattern.split('/').collect();
    let mut levels = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let level = match *part {
            "#" if i + 1 == parts.len() => Level::Rest,
            "#" => return bad("uses '#' before the last level"),
            "+" => Level::Any,
            p if p.starts_with('{') && p.ends_with('}') => {
                let name = &p[1..p.len() - 1];
                if !is_capture_name(name) {
                    return bad(&format!(
                        "has capture '{p}': a capture is {{name}} of letters, digits, '_' and '-', filling a whole level"
                    ));
                }
                if levels.contains(&Level::Capture(name.to_string())) {
                    return bad(&format!("captures {{{name}}} twice"));
                }
                Level::Capture(name.to_string())
            }
            p if p.contains(['{', '}', '+', '#']) => {
                return bad(&format!(
                    "has level '{p}': captures and wildcards fill a whole level"
                ))
            }
            p => Level::Literal(p.to_string()),
        };
        levels.push(level);
    }
    Ok(levels)
}

fn parse_template(text: &str, captures: &[String], has_rest: bool) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_string()));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err("has a '{' without a closing '}'".into());
        };
        let name = &rest[open + 1..open + close];
        let piece = if name == "#" {
            if !has_rest {
                return Err("uses {#} but the pattern does not end with #".into());
            }
            Piece::Capture(REST)
        } else {
            match captures.iter().position(|c| c == name) {
                Some(i) => Piece::Capture(i),
                None => {
                    return Err(format!(
                        "uses {{{name}}}, which the pattern does not capture (it captures {})",
                        if captures.is_empty() {
                            "nothing".to_string()
                        } else {
                            captures
                                .iter()
                                .map(|c| format!("{{{c}}}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ))
                }
            }
        };
        pieces.push(piece);
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err("has a '}' without an opening '{'".into());
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(toml_text: &str) -> Result<TemplateRule, String> {
        let config: TemplateConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        TemplateRule::new("t", &config).map_err(|e| e.to_string())
    }

    fn msg(topic: &str, payload: &str, qos: u8) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.as_bytes().to_vec(),
            qos,
            retain: true,
            properties: vec![("k".into(), "v".into())],
        }
    }

    #[test]
    fn captures_become_device_topic_properties_and_fields() {
        let r = rule(
            r#"pattern = "plant1/{line}/{machine}/#"
device = "{machine}"
properties = { "$.ct" = "application/json", "$.ce" = "utf-8", line = "{line}", "signal path" = "{#}" }
enrich = true"#,
        )
        .unwrap();
        assert_eq!(r.filter(), "plant1/+/+/#");
        let out = r
            .translate(&msg(
                "plant1/line 7/press7/oil/temp",
                r#" {"value": 21.5} "#,
                2,
            ))
            .unwrap();
        assert_eq!(out.len(), 1);
        let o = &out[0];
        assert_eq!(o.destination, Destination::Upstream("press7".into()));
        assert_eq!(
            o.message.topic,
            "devices/press7/messages/events/$.ct=application%2Fjson&$.ce=utf-8&line=line%207&signal%20path=oil%2Ftemp"
        );
        assert_eq!(
            String::from_utf8(o.message.payload.clone()).unwrap(),
            r#"{"line":"line 7","machine":"press7","value": 21.5}"#
        );
        assert_eq!((o.message.qos, o.message.retain), (1, false));
        assert_eq!(
            o.message.properties,
            vec![("k".to_string(), "v".to_string())]
        );
    }

    #[test]
    fn payloads_that_are_not_objects() {
        let r = rule("pattern = \"p/{machine}\"\ndevice = \"{machine}\"\nenrich = true").unwrap();
        let p = |payload: &str| {
            String::from_utf8(
                r.translate(&msg("p/m1", payload, 0)).unwrap()[0]
                    .message
                    .payload
                    .clone(),
            )
            .unwrap()
        };
        assert_eq!(p("42"), r#"{"machine":"m1","value":42}"#);
        assert_eq!(p("{}"), r#"{"machine":"m1"}"#);
        assert_eq!(p(r#"{"machine":"own"}"#), r#"{"machine":"own"}"#);
        assert_eq!(p("not json"), "not json");
        let binary = Message {
            payload: vec![0xff, 0x00, 0x7b],
            ..msg("p/m1", "", 0)
        };
        assert_eq!(
            r.translate(&binary).unwrap()[0].message.payload,
            vec![0xff, 0x00, 0x7b]
        );
    }

    #[test]
    fn topics_that_do_not_match_are_errors() {
        let r = rule("pattern = \"plant1/{line}/{machine}\"\ndevice = \"{machine}\"").unwrap();
        for topic in ["plant2/a/b", "plant1/a", "plant1/a/b/c"] {
            let e = r.translate(&msg(topic, "", 0)).unwrap_err();
            assert!(
                e.message.contains("does not match pattern"),
                "{topic}: {}",
                e.message
            );
        }
        let e = r.translate(&msg("plant1/a/", "", 0)).unwrap_err();
        assert!(e.message.contains("empty {machine} level"), "{}", e.message);
        let r = rule("pattern = \"a/#\"\nlocal = true\ntopic = \"b/{#}\"").unwrap();
        let out = r.translate(&msg("a", "x", 2)).unwrap();
        assert_eq!(out[0].message.topic, "b/");
        assert_eq!((out[0].message.qos, out[0].message.retain), (2, true));
        assert_eq!(out[0].destination, Destination::Local);
    }

    #[test]
    fn config_mistakes_are_one_sentence() {
        for (text, why) in [
            ("pattern = \"a/{x}\"", "needs `device`"),
            (
                "pattern = \"a/{x}\"\ndevice = \"{y}\"",
                "uses {y}, which the pattern does not capture (it captures {x})",
            ),
            (
                "pattern = \"a/#/b\"\ndevice = \"d\"",
                "uses '#' before the last level",
            ),
            ("pattern = \"a/x{y}\"\ndevice = \"d\"", "fill a whole level"),
            (
                "pattern = \"a/{x}/{x}\"\ndevice = \"d\"",
                "captures {x} twice",
            ),
            (
                "pattern = \"a/{x}\"\ndevice = \"{x}\"\ntopic = \"t/{#}\"",
                "does not end with #",
            ),
            ("pattern = \"a/{x}\"\ndevice = \"{x\"", "without a closing"),
            (
                "pattern = \"a\"\ndevice = \"d\"\ntopic = \"t\"\nproperties = { a = \"b\" }",
                "must end with '/'",
            ),
            ("pattern = \"a\"\nlocal = true", "needs `topic`"),
        ] {
            let e = rule(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
            assert!(e.starts_with("rule 't': "), "{e}");
        }
    }
}
