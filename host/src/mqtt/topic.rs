//! MQTT topic names and filters: what is valid, and what a filter matches. The one place the
//! host decides either, for the local broker, the emulators, rules and the config checks.

pub(crate) use crate::model::MAX_TOPIC_BYTES;

/// What is wrong with a topic name or filter; the message completes the sentence "topic 'x' ..."
/// (or "filter 'x' ...").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TopicError {
    #[error("contains a wildcard (+ or #)")]
    Wildcard,
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_TOPIC_BYTES} bytes")]
    TooLong,
    #[error("contains a NUL character")]
    Nul,
    #[error("uses '#' other than as the whole last level")]
    MisplacedHash,
    #[error("uses '+' other than as a whole level")]
    MisplacedPlus,
}

/// Check an MQTT topic name one publishes to: a valid filter without wildcards.
pub(crate) fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    validate_topic_filter(topic)
}

/// Check an MQTT topic filter: non-empty, `#` only as the whole last level, `+` only as a whole
/// level, no NUL, at most 65 535 bytes.
pub(crate) fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    if filter.contains('\0') {
        return Err(TopicError::Nul);
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err(TopicError::MisplacedHash);
        }
        if level.contains('+') && *level != "+" {
            return Err(TopicError::MisplacedPlus);
        }
    }
    Ok(())
}

/// Does `topic` match the subscription `filter` (`+` one level, `#` the rest)? Given a filter
/// as `topic`, whether `filter` covers every topic that filter can match (how a policy's allowed
/// filter judges a requested subscription).
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether a subscription to `filter` receives a message on `topic`, as MQTT says
/// ([MQTT-4.7.2-1]): like [`filter_matches`], except that a filter starting with a wildcard does
/// not receive topics starting with `$` (`$SYS/...`, `$iothub/...`): `#` and `+/...` never see
/// them, `$SYS/#` does.
pub(crate) fn subscription_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['#', '+']) {
        return false;
    }
    filter_matches(filter, topic)
}

/// Whether a PUBLISH or will may name `topic` (no wildcards, no NUL, not empty).
pub(crate) fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters() {
        assert!(validate_topic_filter("plant1/#").is_ok());
        assert!(validate_topic_filter("+/press7/+").is_ok());
        assert!(validate_topic_filter("#").is_ok());
        assert_eq!(
            validate_topic_filter("a/#/b").unwrap_err().to_string(),
            "uses '#' other than as the whole last level"
        );
        assert_eq!(
            validate_topic_filter("a/b+").unwrap_err().to_string(),
            "uses '+' other than as a whole level"
        );
        assert_eq!(
            validate_topic_filter("").unwrap_err().to_string(),
            "is empty"
        );
    }

    #[test]
    fn wildcard_subscriptions_do_not_receive_dollar_topics() {
        // The examples of MQTT 3.1.1 section 4.7.2 (and 5.0 section 4.7.2).
        assert!(!subscription_matches("#", "$SYS/broker/clients"));
        assert!(!subscription_matches(
            "+/monitor/Clients",
            "$SYS/monitor/Clients"
        ));
        assert!(subscription_matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(subscription_matches(
            "$SYS/monitor/+",
            "$SYS/monitor/Clients"
        ));
        assert!(!subscription_matches("+/+", "$TopicA/B"));
        assert!(subscription_matches("+/+", "TopicA/B"));
        assert!(subscription_matches("#", "a/$b"));
    }

    #[test]
    fn filters_match_like_mqtt() {
        assert!(filter_matches(
            "$dps/registrations/res/#",
            "$dps/registrations/res/202/?$rid=1"
        ));
        assert!(filter_matches(
            "devices/d1/messages/devicebound/#",
            "devices/d1/messages/devicebound/%24.to=x"
        ));
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(!filter_matches("a/+/c", "a/b/d"));
        assert!(!filter_matches("a/b", "a/b/c"));
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("dt/press7/#", "dt/press7/temp"));
        // Filters against filters: does the first cover the second?
        assert!(filter_matches("dt/press7/#", "dt/press7/+"));
        assert!(filter_matches("dt/press7/#", "dt/press7/#"));
        assert!(filter_matches("dt/+/temp", "dt/press7/temp"));
        assert!(filter_matches("dt/+/temp", "dt/+/temp"));
        assert!(!filter_matches("dt/+/temp", "dt/#"));
        assert!(!filter_matches("dt/press7/temp", "dt/press7/+"));
        assert!(!filter_matches("dt/press7/#", "dt/press8/temp"));
        assert!(!filter_matches("dt/press7", "dt/press7/temp"));
    }
}
