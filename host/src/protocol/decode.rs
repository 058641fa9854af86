//! Client → server frames: text (control frames, RPC, batches, user
//! messages) and binary.
//!
//! Routing by prefix, as the JavaScript servers do: a text frame is a control
//! frame only when it begins exactly with `{"type"` (and is under
//! [`MAX_CONTROL_FRAME_BYTES`]), an RPC when it begins `{"rpc"`, a batch when
//! it begins `{"batch"`. Anything else is a user message: valid JSON is
//! [`ClientFrame::Ignored`] (we have no user `message` hook yet).
//!
//! The inbound size limit ([`super::MAX_FRAME_BYTES`] by default, operator
//! configurable) is enforced by the server before a frame gets here; decoding
//! is linear in the frame size and never recursive beyond [`MAX_JSON_DEPTH`].

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::error::{ProtocolError, codes};
use super::frames::{ClientFrame, Ref, RpcCall};
use super::validate::{MAX_IDEMPOTENCY_KEY_BYTES, MAX_REF_BYTES, check_depth, is_valid_path};
use super::{MAX_CONTROL_FRAME_BYTES, MAX_JSON_DEPTH, MAX_RPC_BATCH, MAX_SUBSCRIBE_BATCH};

/// Decodes one text frame. See `docs/protocol.md` for the answer to each error.
pub fn decode_text(frame: &str) -> Result<ClientFrame, ProtocolError> {
    let bytes = frame.as_bytes();
    if bytes.starts_with(b"{\"type\"") {
        if bytes.len() >= MAX_CONTROL_FRAME_BYTES {
            return Err(ProtocolError::new(
                codes::PAYLOAD_TOO_LARGE,
                "control frames must be under 8192 bytes",
            ));
        }
        check_depth(bytes, MAX_JSON_DEPTH)?;
        decode_control(frame)
    } else if bytes.starts_with(b"{\"rpc\"") {
        if let Err(err) = check_depth(bytes, MAX_JSON_DEPTH) {
            return Err(err.with_rpc_id(salvage_id(frame)));
        }
        let fields: RpcFields<'_> = serde_json::from_str(frame).map_err(malformed)?;
        decode_call(&fields, false).map(ClientFrame::Rpc)
    } else if bytes.starts_with(b"{\"batch\"") {
        check_depth(bytes, MAX_JSON_DEPTH)?;
        decode_batch(frame)
    } else {
        check_depth(bytes, MAX_JSON_DEPTH)?;
        serde_json::from_str::<serde::de::IgnoredAny>(frame).map_err(malformed)?;
        Ok(ClientFrame::Ignored)
    }
}

/// Decodes one binary frame.
///
/// Binary frames are user messages (ignored), except a svelte-realtime binary
/// RPC call (`[0x00][u16 BE header length][header JSON {rpc,id,args?}][payload]`):
/// binary RPC is not supported yet, so a well-formed one is refused with
/// `INVALID_REQUEST` carrying its id (the client's call fails at once instead
/// of timing out). Upload frames (`0x01`, `0x02`) are ignored.
pub fn decode_binary(frame: &[u8]) -> Result<ClientFrame, ProtocolError> {
    if frame.len() > 3 && frame[0] == 0x00 {
        let header_len = usize::from(u16::from_be_bytes([frame[1], frame[2]]));
        if header_len > 0 && 3 + header_len <= frame.len() {
            let header = &frame[3..3 + header_len];
            if check_depth(header, MAX_JSON_DEPTH).is_ok()
                && let Ok(text) = std::str::from_utf8(header)
                && let Ok(fields) = serde_json::from_str::<RpcFields<'_>>(text)
                && fields.rpc.is_some_and(|raw| raw.get().starts_with('"'))
                && let Ok(Some(id)) = fields.id.map_or(Ok(None), parse_ref)
            {
                return Err(
                    ProtocolError::invalid("binary RPC is not supported").with_rpc_id(Some(id))
                );
            }
        }
    }
    Ok(ClientFrame::Ignored)
}

fn malformed(err: serde_json::Error) -> ProtocolError {
    ProtocolError::invalid(format!("malformed JSON: {err}"))
}

// ---------------------------------------------------------------- control

fn decode_control(frame: &str) -> Result<ClientFrame, ProtocolError> {
    let msg: Map<String, Value> = serde_json::from_str(frame).map_err(malformed)?;
    let Some(Value::String(kind)) = msg.get("type") else {
        return Ok(ClientFrame::Ignored);
    };
    match kind.as_str() {
        "hello" => {
            let caps = match msg.get("caps") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect(),
                Some(_) => return Err(ProtocolError::invalid("hello: caps must be an array")),
            };
            Ok(ClientFrame::Hello { caps })
        }
        "resume" => {
            let Some(Value::String(session_id)) = msg.get("sessionId") else {
                return Err(ProtocolError::invalid("resume: sessionId must be a string"));
            };
            let mut last_seen_seqs = BTreeMap::new();
            match msg.get("lastSeenSeqs") {
                Some(Value::Object(seqs)) => {
                    for (topic, seq) in seqs {
                        let Some(seq) = seq.as_u64() else {
                            return Err(ProtocolError::invalid(
                                "resume: lastSeenSeqs values must be non-negative integers",
                            ));
                        };
                        last_seen_seqs.insert(topic.clone(), seq);
                    }
                }
                _ => {
                    return Err(ProtocolError::invalid(
                        "resume: lastSeenSeqs must be an object",
                    ));
                }
            }
            Ok(ClientFrame::Resume {
                session_id: session_id.clone(),
                last_seen_seqs,
            })
        }
        "replay" => {
            let Some(Value::String(topic)) = msg.get("topic") else {
                return Err(ProtocolError::invalid("replay: topic must be a string"));
            };
            let since = match msg.get("since") {
                None | Some(Value::Null) => 0,
                Some(v) => v.as_u64().ok_or_else(|| {
                    ProtocolError::invalid("replay: since must be a non-negative integer")
                })?,
            };
            let req_id = match msg.get("reqId") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => Some(Ref::Num(n.as_i64().ok_or_else(|| {
                    ProtocolError::invalid("replay: reqId must be an integer or a string")
                })?)),
                Some(Value::String(s)) if s.len() <= MAX_REF_BYTES => Some(Ref::Str(s.clone())),
                Some(_) => {
                    return Err(ProtocolError::invalid(
                        "replay: reqId must be an integer or a string of at most 256 bytes",
                    ));
                }
            };
            Ok(ClientFrame::Replay {
                topic: topic.clone(),
                since,
                req_id,
            })
        }
        "cursor" => {
            let Some(Value::String(topic)) = msg.get("topic") else {
                return Err(ProtocolError::invalid("cursor: topic must be a string"));
            };
            let data = msg
                .get("data")
                .or_else(|| msg.get("position"))
                .unwrap_or(&Value::Null)
                .to_string();
            Ok(ClientFrame::Cursor {
                topic: topic.clone(),
                data,
            })
        }
        "cursor-snapshot" => {
            let Some(Value::String(topic)) = msg.get("topic") else {
                return Err(ProtocolError::invalid(
                    "cursor-snapshot: topic must be a string",
                ));
            };
            Ok(ClientFrame::CursorSnapshot {
                topic: topic.clone(),
            })
        }
        "subscribe" => {
            let Some(Value::String(topic)) = msg.get("topic") else {
                return Err(ProtocolError::invalid("subscribe: topic must be a string"));
            };
            Ok(ClientFrame::Subscribe {
                topic: topic.clone(),
                reference: control_ref(&msg, "subscribe")?,
            })
        }
        "subscribe-batch" => {
            let Some(Value::Array(items)) = msg.get("topics") else {
                return Err(ProtocolError::invalid(
                    "subscribe-batch: topics must be an array",
                ));
            };
            if items.len() > MAX_SUBSCRIBE_BATCH {
                return Err(ProtocolError::new(
                    codes::PAYLOAD_TOO_LARGE,
                    "subscribe-batch exceeds the maximum of 256 topics",
                ));
            }
            let mut topics = Vec::with_capacity(items.len());
            for item in items {
                let Value::String(topic) = item else {
                    return Err(ProtocolError::invalid(
                        "subscribe-batch: topics must be strings",
                    ));
                };
                topics.push(topic.clone());
            }
            Ok(ClientFrame::SubscribeBatch {
                topics,
                reference: control_ref(&msg, "subscribe-batch")?,
            })
        }
        "unsubscribe" => {
            let Some(Value::String(topic)) = msg.get("topic") else {
                return Err(ProtocolError::invalid(
                    "unsubscribe: topic must be a string",
                ));
            };
            Ok(ClientFrame::Unsubscribe {
                topic: topic.clone(),
            })
        }
        "reply" => {
            let Some(reference) = control_ref(&msg, "reply")? else {
                return Err(ProtocolError::invalid("reply: ref is required"));
            };
            let result = match msg.get("error") {
                Some(Value::String(error)) => Err(error.clone()),
                _ => Ok(msg.get("data").unwrap_or(&Value::Null).to_string()),
            };
            Ok(ClientFrame::Reply { reference, result })
        }
        _ => Ok(ClientFrame::Ignored),
    }
}

/// The `ref` of a control frame: absent or `null` → `None`.
fn control_ref(msg: &Map<String, Value>, what: &str) -> Result<Option<Ref>, ProtocolError> {
    let invalid = || {
        ProtocolError::invalid(format!(
            "{what}: ref must be an integer or a string of at most 256 bytes"
        ))
    };
    match msg.get("ref") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(|n| Some(Ref::Num(n))).ok_or_else(invalid),
        Some(Value::String(s)) if s.len() <= MAX_REF_BYTES => Ok(Some(Ref::Str(s.clone()))),
        Some(_) => Err(invalid()),
    }
}

// ---------------------------------------------------------------- RPC

/// `Some(raw)` whenever the key is present, even when its value is `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// The fields of an RPC call, kept as raw JSON spans (no copy of `args`).
#[derive(Deserialize)]
struct RpcFields<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    rpc: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    args: Option<&'a RawValue>,
    #[serde(
        default,
        borrow,
        deserialize_with = "present",
        rename = "idempotencyKey"
    )]
    idempotency_key: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    stream: Option<&'a RawValue>,
}

/// Parses an id: integer or string (≤ 256 bytes); `null` → `None`.
fn parse_ref(raw: &RawValue) -> Result<Option<Ref>, ProtocolError> {
    let text = raw.get().trim();
    let invalid =
        || ProtocolError::invalid("id must be an integer or a string of at most 256 bytes");
    if text == "null" {
        return Ok(None);
    }
    if text.starts_with('"') {
        let s: String = serde_json::from_str(text).map_err(|_| invalid())?;
        if s.len() > MAX_REF_BYTES {
            return Err(invalid());
        }
        return Ok(Some(Ref::Str(s)));
    }
    serde_json::from_str::<i64>(text)
        .map(|n| Some(Ref::Num(n)))
        .map_err(|_| invalid())
}

/// Best effort: the id of an RPC frame we refuse to parse fully (too deep).
fn salvage_id(frame: &str) -> Option<Ref> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(default, borrow)]
        id: Option<&'a RawValue>,
    }
    let only: IdOnly<'_> = serde_json::from_str(frame).ok()?;
    parse_ref(only.id?).ok().flatten()
}

/// Turns the raw fields into a call. `in_batch`: the id is required (an
/// id-less entry is answered with id `""`).
fn decode_call(fields: &RpcFields<'_>, in_batch: bool) -> Result<RpcCall, ProtocolError> {
    let id = match fields.id {
        None => None,
        Some(raw) => parse_ref(raw)?,
    };
    let fail = |message: &str| ProtocolError::invalid(message).with_rpc_id(id.clone());
    if in_batch && id.is_none() {
        return Err(ProtocolError::invalid(
            "Each batch entry requires rpc and id",
        ));
    }
    let path = match fields.rpc {
        Some(raw) if raw.get().starts_with('"') => {
            serde_json::from_str::<String>(raw.get()).map_err(|_| fail("Invalid path"))?
        }
        _ => return Err(fail("Invalid path")),
    };
    if !is_valid_path(&path) {
        return Err(fail("Invalid path"));
    }
    let args_json = match fields.args {
        None => "[]".to_owned(),
        Some(raw) if raw.get().trim_start().starts_with('[') => raw.get().trim().to_owned(),
        Some(_) => return Err(fail("args must be an array")),
    };
    let idempotency_key = match fields.idempotency_key.map(|raw| raw.get().trim()) {
        None | Some("null") => None,
        Some(text) => {
            let key = serde_json::from_str::<String>(text)
                .map_err(|_| fail("idempotencyKey must be a string"))?;
            if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
                return Err(fail("idempotencyKey is longer than 256 bytes"));
            }
            Some(key)
        }
    };
    let stream = match fields.stream.map(|raw| raw.get().trim()) {
        None | Some("null") | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(fail("stream must be a boolean")),
    };
    Ok(RpcCall {
        path,
        id,
        args_json,
        idempotency_key,
        stream,
    })
}

fn decode_batch(frame: &str) -> Result<ClientFrame, ProtocolError> {
    #[derive(Deserialize)]
    struct BatchFields<'a> {
        #[serde(default, borrow, deserialize_with = "present")]
        batch: Option<&'a RawValue>,
        #[serde(default, borrow, deserialize_with = "present")]
        sequential: Option<&'a RawValue>,
    }
    let fields: BatchFields<'_> = serde_json::from_str(frame).map_err(malformed)?;
    let sequential = match fields.sequential.map(|raw| raw.get().trim()) {
        None | Some("null") | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ProtocolError::invalid("sequential must be a boolean")),
    };
    let entries: Vec<&RawValue> = match fields.batch {
        Some(raw) if raw.get().trim_start().starts_with('[') => {
            serde_json::from_str(raw.get()).map_err(malformed)?
        }
        _ => return Err(ProtocolError::invalid("batch must be an array")),
    };
    let no_id = || Some(Ref::Str(String::new()));
    if entries.len() > MAX_RPC_BATCH {
        let err = ProtocolError::invalid("Batch exceeds maximum of 50 calls").with_rpc_id(no_id());
        return Ok(ClientFrame::Batch {
            calls: vec![Err(err)],
            sequential,
        });
    }
    let calls = entries
        .into_iter()
        .map(|entry| {
            let result = if entry.get().trim_start().starts_with('{') {
                serde_json::from_str::<RpcFields<'_>>(entry.get())
                    .map_err(malformed)
                    .and_then(|fields| decode_call(&fields, true))
            } else {
                Err(ProtocolError::invalid(
                    "Each batch entry requires rpc and id",
                ))
            };
            result.map_err(|err| {
                if err.rpc_id.is_some() {
                    err
                } else {
                    err.with_rpc_id(no_id())
                }
            })
        })
        .collect();
    Ok(ClientFrame::Batch { calls, sequential })
}
