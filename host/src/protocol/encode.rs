//! Server → client frames, built by string concatenation in the exact key
//! order the JavaScript servers use (byte-compatible with their output).

use std::fmt::Write as _;

use super::error::{ProtocolError, RpcErrorBody};
use super::frames::Ref;
use super::validate::needs_escape;

/// The reserved topic RPC answers travel on.
pub const RPC_TOPIC: &str = "__rpc";
/// The `__rpc` event of a batch answer.
pub const BATCH_EVENT: &str = "__batch";
/// The reserved topic protocol errors travel on (our choice; see `docs/protocol.md`).
pub const ERROR_TOPIC: &str = "__error";

/// Appends `s` as a JSON string literal, escaped exactly like JavaScript's
/// `JSON.stringify` (short escapes for `\b \t \n \f \r`, `\u00xx` for other
/// control characters, everything else verbatim).
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        // `i` is an ASCII byte, hence a char boundary.
        out.push_str(&s[start..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0C => out.push_str("\\f"),
            _ => {
                let _ = write!(out, "\\u{:04x}", b);
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn push_ref(out: &mut String, r: &Ref) {
    match r {
        Ref::Num(n) => {
            let _ = write!(out, "{n}");
        }
        Ref::Str(s) => push_json_str(out, s),
    }
}

/// `null` for empty JSON text, so a missing value never produces broken JSON.
fn json_or_null(json: &str) -> &str {
    if json.is_empty() { "null" } else { json }
}

/// `{"type":"welcome","sessionId":"<id>"}`: the first frame on every connection.
pub fn welcome(session_id: &str) -> String {
    let mut out = String::with_capacity(36 + session_id.len());
    out.push_str("{\"type\":\"welcome\",\"sessionId\":");
    push_json_str(&mut out, session_id);
    out.push('}');
    out
}

/// `{"type":"resumed"}`: the answer to a `resume` frame, sent after the
/// replay of every resumed topic.
pub fn resumed() -> &'static str {
    "{\"type\":\"resumed\"}"
}

/// `{"type":"subscribed","topic":"<topic>","ref":<ref>}`: one topic was
/// subscribed. Only sent when the subscribe carried a ref.
pub fn subscribed(topic: &str, reference: &Ref) -> String {
    let mut out = String::with_capacity(40 + topic.len());
    out.push_str("{\"type\":\"subscribed\",\"topic\":");
    push_json_str(&mut out, topic);
    out.push_str(",\"ref\":");
    push_ref(&mut out, reference);
    out.push('}');
    out
}

/// `{"type":"subscribe-denied","topic":"<topic>","ref":<ref>,"reason":"<reason>"}`.
/// The topic may be invalid (reason `INVALID_TOPIC`): it is escaped.
pub fn subscribe_denied(topic: &str, reference: &Ref, reason: &str) -> String {
    let mut out = String::with_capacity(60 + topic.len() + reason.len());
    out.push_str("{\"type\":\"subscribe-denied\",\"topic\":");
    push_json_str(&mut out, topic);
    out.push_str(",\"ref\":");
    push_ref(&mut out, reference);
    out.push_str(",\"reason\":");
    push_json_str(&mut out, reason);
    out.push('}');
    out
}

/// `{"topic":"<topic>","event":"<event>","data":<data>,"seq":<seq>}` (no
/// `seq` key when `seq` is `None`). The fan-out hot path: no serde, one
/// allocation. `topic` and `event` are expected to be pre-validated
/// ([`super::validate_topic`], [`super::validate_event`]); should they hold a
/// quote, backslash or control character anyway they are escaped, so the
/// output is always valid JSON. `data_json` must be valid JSON text (empty
/// text is sent as `null`).
pub fn envelope(topic: &str, event: &str, data_json: &str, seq: Option<u64>) -> String {
    let data = json_or_null(data_json);
    let mut out = String::with_capacity(48 + topic.len() + event.len() + data.len());
    out.push_str("{\"topic\":");
    push_json_str(&mut out, topic);
    out.push_str(",\"event\":");
    push_json_str(&mut out, event);
    out.push_str(",\"data\":");
    out.push_str(data);
    if let Some(seq) = seq {
        let _ = write!(out, ",\"seq\":{seq}");
    }
    out.push('}');
    out
}

fn push_rpc_ok_body(out: &mut String, id: &Ref, result_json: &str) {
    out.push_str("{\"id\":");
    push_ref(out, id);
    out.push_str(",\"ok\":true,\"data\":");
    out.push_str(json_or_null(result_json));
    out.push('}');
}

fn push_rpc_error_body(out: &mut String, id: &Ref, err: &RpcErrorBody) {
    out.push_str("{\"id\":");
    push_ref(out, id);
    out.push_str(",\"ok\":false,\"code\":");
    push_json_str(out, &err.code);
    out.push_str(",\"error\":");
    push_json_str(out, &err.message);
    if let Some(issues) = &err.issues {
        out.push_str(",\"issues\":[");
        for (i, issue) in issues.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"path\":");
            push_json_str(out, &issue.path);
            out.push_str(",\"message\":");
            push_json_str(out, &issue.message);
            out.push('}');
        }
        out.push(']');
    }
    if let Some(ms) = err.retry_after_ms {
        let _ = write!(out, ",\"retryAfter\":{ms}");
    }
    out.push('}');
}

fn push_rpc_prefix(out: &mut String, event: &str) {
    out.push_str("{\"topic\":\"__rpc\",\"event\":");
    push_json_str(out, event);
    out.push_str(",\"data\":");
}

/// `{"topic":"__rpc","event":"<id>","data":{"id":<id>,"ok":true,"data":<result>}}`.
/// The event is the id as text (a numeric id `5` gives event `"5"`, data id `5`).
pub fn rpc_ok(id: &Ref, result_json: &str) -> String {
    let mut out = String::with_capacity(64 + result_json.len());
    push_rpc_prefix(&mut out, &id.to_string());
    push_rpc_ok_body(&mut out, id, result_json);
    out.push('}');
    out
}

/// `{"topic":"__rpc","event":"<id>","data":{"id":<id>,"ok":false,"code":"<code>","error":"<message>","issues":[{"path","message"}],"retryAfter":<ms>}}`
/// (`issues` and `retryAfter` only when set).
pub fn rpc_error(id: &Ref, err: &RpcErrorBody) -> String {
    let mut out = String::with_capacity(96 + err.message.len());
    push_rpc_prefix(&mut out, &id.to_string());
    push_rpc_error_body(&mut out, id, err);
    out.push('}');
    out
}

/// `{"topic":"__rpc","event":"__batch","data":{"batch":[<result>,...]}}`, each
/// result shaped like the `data` of [`rpc_ok`] / [`rpc_error`], in call order.
pub fn rpc_batch(results: &[(Ref, Result<String, RpcErrorBody>)]) -> String {
    let mut out = String::with_capacity(64 + 64 * results.len());
    push_rpc_prefix(&mut out, BATCH_EVENT);
    out.push_str("{\"batch\":[");
    for (i, (id, result)) in results.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match result {
            Ok(json) => push_rpc_ok_body(&mut out, id, json),
            Err(err) => push_rpc_error_body(&mut out, id, err),
        }
    }
    out.push_str("]}}");
    out
}

/// `{"topic":"__error","event":"<code>","data":{"code":"<code>","error":"<message>"}}`:
/// the answer to a malformed frame that is not an RPC call with a readable id.
pub fn protocol_error(err: &ProtocolError) -> String {
    let mut out = String::with_capacity(80 + err.message.len());
    out.push_str("{\"topic\":\"__error\",\"event\":");
    push_json_str(&mut out, err.code);
    out.push_str(",\"data\":{\"code\":");
    push_json_str(&mut out, err.code);
    out.push_str(",\"error\":");
    push_json_str(&mut out, &err.message);
    out.push_str("}}");
    out
}

/// The reserved topic prefix replay answers travel on: `__replay:{topic}`.
pub const REPLAY_TOPIC_PREFIX: &str = "__replay:";

/// An event on `__replay:{topic}`.
fn replay_frame(topic: &str, event: &str, data_json: &str) -> String {
    let mut channel = String::with_capacity(REPLAY_TOPIC_PREFIX.len() + topic.len());
    channel.push_str(REPLAY_TOPIC_PREFIX);
    channel.push_str(topic);
    envelope(&channel, event, data_json, None)
}

/// `{"reqId":<ref>,` or `{` (the opening of a replay payload).
fn open_replay_data(req_id: Option<&Ref>) -> String {
    let mut data = String::from("{");
    if let Some(r) = req_id {
        data.push_str("\"reqId\":");
        push_ref(&mut data, r);
        data.push(',');
    }
    data
}

/// `truncated` (data `null`) on `__replay:{topic}`: some events the client
/// asked for are gone; sent before the `msg`s.
pub fn replay_truncated(topic: &str) -> String {
    replay_frame(topic, "truncated", "null")
}

/// `msg` `{"reqId"?,"seq","event","data"}` on `__replay:{topic}`: one
/// replayed event (`data_json` is the event's JSON data).
pub fn replay_msg(
    topic: &str,
    req_id: Option<&Ref>,
    seq: u64,
    event: &str,
    data_json: &str,
) -> String {
    let mut data = open_replay_data(req_id);
    let _ = write!(data, "\"seq\":{seq},\"event\":");
    push_json_str(&mut data, event);
    data.push_str(",\"data\":");
    data.push_str(json_or_null(data_json));
    data.push('}');
    replay_frame(topic, "msg", &data)
}

/// `end` on `__replay:{topic}` after the `msg`s: `{"reqId"?,"truncated"?:true}`,
/// or `null` when there is neither (as the core replay plugin sends).
pub fn replay_end(topic: &str, req_id: Option<&Ref>, truncated: bool) -> String {
    if req_id.is_none() && !truncated {
        return replay_frame(topic, "end", "null");
    }
    let mut data = open_replay_data(req_id);
    if truncated {
        data.push_str("\"truncated\":true");
    } else {
        data.pop();
    }
    data.push('}');
    replay_frame(topic, "end", &data)
}

/// `denied` `{"code","reqId"?}` on `__replay:{topic}`: the subscribe gate
/// refused the topic (or, with `SERVICE_UNAVAILABLE`, the buffer could
/// not be read).
pub fn replay_denied(topic: &str, code: &str, req_id: Option<&Ref>) -> String {
    let mut data = String::from("{\"code\":");
    push_json_str(&mut data, code);
    if let Some(r) = req_id {
        data.push_str(",\"reqId\":");
        push_ref(&mut data, r);
    }
    data.push('}');
    replay_frame(topic, "denied", &data)
}
