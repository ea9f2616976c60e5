//! What every capability's Rhai registration shares: host errors as Rhai exceptions, and
//! messages and bytes to and from script values. The Rhai engine (`engine::rhai`) uses the same
//! conversions for what rules return.

use crate::model::{Message, Pair, PluginError};
use rhai::{Array, Dynamic, EvalAltResult, Map, Position, INT};

pub(crate) type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// A host error as a Rhai exception: the thrown value is `#{kind: "...", message: "..."}`, which
/// a script can `catch` and match on, exactly as a WASM plugin matches on `error.kind`.
pub(crate) fn plugin_error(e: PluginError) -> Box<EvalAltResult> {
    let mut map = Map::new();
    map.insert("kind".into(), e.kind.as_str().into());
    map.insert("message".into(), e.message.into());
    EvalAltResult::ErrorRuntime(map.into(), Position::NONE).into()
}

/// `#{topic, payload (blob), qos, retain, properties: [[key, value], ...]}`.
pub(crate) fn message_to_dynamic(m: &Message) -> Dynamic {
    let mut map = Map::new();
    map.insert("topic".into(), m.topic.as_str().into());
    map.insert("payload".into(), Dynamic::from_blob(m.payload.clone()));
    map.insert("qos".into(), (m.qos as INT).into());
    map.insert("retain".into(), m.retain.into());
    let properties: Array = m
        .properties
        .iter()
        .map(|(k, v)| {
            let pair: Array = vec![k.as_str().into(), v.as_str().into()];
            pair.into()
        })
        .collect();
    map.insert("properties".into(), properties.into());
    map.into()
}

/// Bytes from a script value: a blob as it is, a string as its UTF-8. `what` names the field.
pub(crate) fn bytes_from_dynamic(value: Dynamic, what: &str) -> Result<Vec<u8>, String> {
    if value.is_blob() {
        return Ok(value.into_blob().expect("checked is_blob"));
    }
    value
        .into_string()
        .map(String::into_bytes)
        .map_err(|t| format!("'{what}' must be a blob or a string, not {t}"))
}

/// A message from a script map `#{topic, payload, qos, retain, properties}`: what rules return and
/// what `mqtt` sessions publish. The fields are moved out, not copied. The error completes
/// "message ...: <error>".
pub(crate) fn message_from_map(mut map: Map) -> Result<Message, String> {
    let mut field = |name: &str| map.remove(name);
    let topic = field("topic")
        .ok_or_else(|| "'topic' is missing".to_string())?
        .into_string()
        .map_err(|t| format!("'topic' must be a string, not {t}"))?;
    let payload = match field("payload") {
        None => Vec::new(),
        Some(p) => bytes_from_dynamic(p, "payload")?,
    };
    let qos = match field("qos") {
        None => 0,
        Some(q) => {
            let q = q
                .as_int()
                .map_err(|t| format!("'qos' must be an integer, not {t}"))?;
            u8::try_from(q).map_err(|_| format!("'qos' must be 0, 1 or 2, got {q}"))?
        }
    };
    let retain = match field("retain") {
        None => false,
        Some(r) => r
            .as_bool()
            .map_err(|t| format!("'retain' must be a bool, not {t}"))?,
    };
    let properties = match field("properties") {
        None => Vec::new(),
        Some(p) => pairs_from_dynamic(p).map_err(|what| format!("'properties' {what}"))?,
    };
    Ok(Message {
        topic,
        payload,
        qos,
        retain,
        properties,
    })
}

/// `[[key, value], ...]` (ordered, duplicates allowed) or a map.
fn pairs_from_dynamic(value: Dynamic) -> Result<Vec<Pair>, String> {
    if value.is_map() {
        let map = value.cast::<Map>();
        return Ok(map
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect());
    }
    let items = value
        .into_array()
        .map_err(|t| format!("must be an array of [key, value] pairs or a map, not {t}"))?;
    items
        .into_iter()
        .map(|item| {
            let pair = item
                .into_array()
                .map_err(|t| format!("must hold [key, value] pairs, found {t}"))?;
            match <[Dynamic; 2]>::try_from(pair) {
                Ok([k, v]) => Ok((k.to_string(), v.to_string())),
                Err(pair) => Err(format!(
                    "must hold [key, value] pairs, found {} items",
                    pair.len()
                )),
            }
        })
        .collect()
}
