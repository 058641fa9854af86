//! Name rules (topics, events, RPC paths) and the JSON nesting check.

use super::error::{ProtocolError, codes};

/// Longest topic, in bytes (topics are ASCII, so also characters).
pub const MAX_TOPIC_BYTES: usize = 256;
/// Longest event name, in bytes.
pub const MAX_EVENT_BYTES: usize = 256;
/// Longest RPC path, in bytes.
pub const MAX_PATH_BYTES: usize = 256;
/// Longest string `ref` / RPC `id`, in bytes.
pub const MAX_REF_BYTES: usize = 256;
/// Longest `idempotencyKey`, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// Checks a topic against the wire rules: 1–256 printable ASCII characters
/// (0x20–0x7E) without `"` or `\`, and no reserved `__` prefix. Every failure
/// is `INVALID_TOPIC`. Used for client subscribes and for plugin publishes.
pub fn validate_topic(topic: &str) -> Result<(), ProtocolError> {
    if topic.is_empty() {
        return Err(ProtocolError::new(codes::INVALID_TOPIC, "topic is empty"));
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(ProtocolError::new(
            codes::INVALID_TOPIC,
            "topic is longer than 256 characters",
        ));
    }
    if let Some(i) = topic
        .bytes()
        .position(|b| !(0x20..=0x7E).contains(&b) || b == b'"' || b == b'\\')
    {
        return Err(ProtocolError::new(
            codes::INVALID_TOPIC,
            format!(
                "topic has a character at byte {i} outside printable ASCII, or a quote or backslash"
            ),
        ));
    }
    if topic.starts_with("__") {
        return Err(ProtocolError::new(
            codes::INVALID_TOPIC,
            "topics starting with __ are reserved",
        ));
    }
    Ok(())
}

/// Checks an event name: 1–256 bytes with no `"`, `\` or control character
/// (below 0x20), so it can be spliced into a JSON string without escaping.
/// Non-ASCII is allowed. Failures are `INVALID_EVENT`.
pub fn validate_event(event: &str) -> Result<(), ProtocolError> {
    if event.is_empty() {
        return Err(ProtocolError::new(codes::INVALID_EVENT, "event is empty"));
    }
    if event.len() > MAX_EVENT_BYTES {
        return Err(ProtocolError::new(
            codes::INVALID_EVENT,
            "event is longer than 256 bytes",
        ));
    }
    if let Some(i) = event.bytes().position(needs_escape) {
        return Err(ProtocolError::new(
            codes::INVALID_EVENT,
            format!("event has a quote, backslash or control character at byte {i}"),
        ));
    }
    Ok(())
}

/// True for the bytes a JSON string cannot hold verbatim.
pub(crate) fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// True when `path` matches `^[a-zA-Z0-9_-]+(?:/[a-zA-Z0-9_-]+)+$` and is at
/// most [`MAX_PATH_BYTES`] long.
pub(crate) fn is_valid_path(path: &str) -> bool {
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return false;
    }
    let mut segments = 0usize;
    for segment in path.split('/') {
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return false;
        }
        segments += 1;
    }
    segments >= 2
}

/// Cheap, non-recursive check that `text` never nests arrays/objects deeper
/// than `max` (the outermost `{` counts as 1). Brackets inside strings are
/// skipped. It does not validate the JSON: serde does that afterwards, and
/// after this check serde can no longer recurse deeply.
pub(crate) fn check_depth(text: &[u8], max: usize) -> Result<(), ProtocolError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(ProtocolError::invalid(format!(
                        "JSON nesting is deeper than {max}"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        for ok in [
            "chat",
            "room:1",
            " ~!#$%&'()*+,-./:;<=>?@[]^_`{|}",
            "_x",
            "a_",
        ] {
            assert_eq!(validate_topic(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(256);
        assert_eq!(validate_topic(&long), Ok(()));
        for bad in [
            "",
            "__rpc",
            "__",
            "a\"b",
            "a\\b",
            "tab\t",
            "caf\u{e9}",
            "\u{7f}",
            "line\u{2028}sep",
        ] {
            let err = validate_topic(bad).unwrap_err();
            assert_eq!(err.code, "INVALID_TOPIC", "{bad:?}");
            assert_eq!(err.rpc_id, None);
        }
        assert_eq!(
            validate_topic(&"a".repeat(257)).unwrap_err().code,
            "INVALID_TOPIC"
        );
    }

    #[test]
    fn events() {
        for ok in ["message", "created", "k3f90", "caf\u{e9}", "__batch", "a b"] {
            assert_eq!(validate_event(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a\"", "a\\", "a\n", "\u{0}"] {
            assert_eq!(validate_event(bad).unwrap_err().code, "INVALID_EVENT");
        }
        assert!(validate_event(&"e".repeat(257)).is_err());
    }

    #[test]
    fn paths() {
        for ok in ["chat/send", "a/b/c", "A-1/_x", "m/f-2"] {
            assert!(is_valid_path(ok), "{ok}");
        }
        for bad in [
            "",
            "chat",
            "/chat/send",
            "chat/",
            "chat//send",
            "chat/se nd",
            "ch.at/send",
            "c/\u{e9}",
        ] {
            assert!(!is_valid_path(bad), "{bad}");
        }
        assert!(!is_valid_path(&format!("a/{}", "b".repeat(255))));
    }

    #[test]
    fn depth() {
        assert!(check_depth(b"{\"a\":[[1]]}", 3).is_ok());
        assert!(check_depth(b"{\"a\":[[[1]]]}", 3).is_err());
        // brackets in strings do not count, escaped quotes do not end strings
        assert!(check_depth(br#"{"a":"[[[[\"[[[["}"#, 1).is_ok());
        let deep = "[".repeat(1_000_000);
        assert!(check_depth(deep.as_bytes(), 64).is_err());
    }
}
