//! Golden frames (every shape in `docs/protocol.md`, exact bytes), decode
//! tests for every client frame, and property tests (no panic on any input,
//! RPC round trips, envelopes always valid JSON).

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::runtime::types::ValidationIssue;

fn s(x: &str) -> Ref {
    Ref::Str(x.to_owned())
}

fn call(path: &str, id: Option<Ref>, args: &str) -> RpcCall {
    RpcCall {
        path: path.to_owned(),
        id,
        args_json: args.to_owned(),
        idempotency_key: None,
        stream: false,
    }
}

// ------------------------------------------------------------ golden frames

#[test]
fn golden_welcome_and_resumed() {
    assert_eq!(
        welcome("0b0c2a52-59a6-4a8e-9b8e-6f0b1c2d3e4f"),
        r#"{"type":"welcome","sessionId":"0b0c2a52-59a6-4a8e-9b8e-6f0b1c2d3e4f"}"#
    );
    assert_eq!(resumed(), r#"{"type":"resumed"}"#);
}

#[test]
fn golden_subscribe_acks() {
    assert_eq!(
        subscribed("chat", &Ref::Num(1)),
        r#"{"type":"subscribed","topic":"chat","ref":1}"#
    );
    assert_eq!(
        subscribed("room:lobby", &s("r-1")),
        r#"{"type":"subscribed","topic":"room:lobby","ref":"r-1"}"#
    );
    assert_eq!(
        subscribe_denied("chat", &Ref::Num(1), "FORBIDDEN"),
        r#"{"type":"subscribe-denied","topic":"chat","ref":1,"reason":"FORBIDDEN"}"#
    );
    // An invalid topic is echoed escaped, exactly as JSON.stringify would.
    assert_eq!(
        subscribe_denied("a\"b\\c\n", &Ref::Num(2), "INVALID_TOPIC"),
        r#"{"type":"subscribe-denied","topic":"a\"b\\c\n","ref":2,"reason":"INVALID_TOPIC"}"#
    );
}

#[test]
fn golden_envelopes() {
    assert_eq!(
        envelope(
            "room:lobby",
            "message",
            r#"{"id":"m1","user":"ann","text":"hi"}"#,
            Some(17)
        ),
        r#"{"topic":"room:lobby","event":"message","data":{"id":"m1","user":"ann","text":"hi"},"seq":17}"#
    );
    assert_eq!(
        envelope("chat", "created", "null", None),
        r#"{"topic":"chat","event":"created","data":null}"#
    );
    assert_eq!(
        envelope("chat", "created", "", Some(1)),
        r#"{"topic":"chat","event":"created","data":null,"seq":1}"#
    );
}

#[test]
fn golden_rpc_answers() {
    assert_eq!(
        rpc_ok(&s("k3f90"), r#"{"id":"m1"}"#),
        r#"{"topic":"__rpc","event":"k3f90","data":{"id":"k3f90","ok":true,"data":{"id":"m1"}}}"#
    );
    assert_eq!(
        rpc_ok(&Ref::Num(5), "null"),
        r#"{"topic":"__rpc","event":"5","data":{"id":5,"ok":true,"data":null}}"#
    );
    assert_eq!(
        rpc_error(&s("k3f91"), &RpcErrorBody::new("NOT_FOUND", "Not found")),
        r#"{"topic":"__rpc","event":"k3f91","data":{"id":"k3f91","ok":false,"code":"NOT_FOUND","error":"Not found"}}"#
    );
    let validation = RpcErrorBody {
        code: "VALIDATION".into(),
        message: "Invalid arguments".into(),
        issues: Some(vec![ValidationIssue {
            path: "args[1]".into(),
            message: "text must not be empty".into(),
        }]),
        retry_after_ms: None,
    };
    assert_eq!(
        rpc_error(&s("k3f92"), &validation),
        r#"{"topic":"__rpc","event":"k3f92","data":{"id":"k3f92","ok":false,"code":"VALIDATION","error":"Invalid arguments","issues":[{"path":"args[1]","message":"text must not be empty"}]}}"#
    );
    let limited = RpcErrorBody {
        retry_after_ms: Some(1200),
        ..RpcErrorBody::new("RATE_LIMITED", "Too many requests")
    };
    assert_eq!(
        rpc_error(&s("k3f93"), &limited),
        r#"{"topic":"__rpc","event":"k3f93","data":{"id":"k3f93","ok":false,"code":"RATE_LIMITED","error":"Too many requests","retryAfter":1200}}"#
    );
    assert_eq!(
        rpc_error(&s("k3f94"), &RpcErrorBody::internal()),
        r#"{"topic":"__rpc","event":"k3f94","data":{"id":"k3f94","ok":false,"code":"INTERNAL_ERROR","error":"Internal server error"}}"#
    );
}

#[test]
fn golden_rpc_batch() {
    let results = vec![
        (s("a1"), Ok("1".to_owned())),
        (
            s("a2"),
            Err(RpcErrorBody::new("INVALID_REQUEST", "Invalid path")),
        ),
    ];
    assert_eq!(
        rpc_batch(&results),
        r#"{"topic":"__rpc","event":"__batch","data":{"batch":[{"id":"a1","ok":true,"data":1},{"id":"a2","ok":false,"code":"INVALID_REQUEST","error":"Invalid path"}]}}"#
    );
    assert_eq!(
        rpc_batch(&[]),
        r#"{"topic":"__rpc","event":"__batch","data":{"batch":[]}}"#
    );
}

#[test]
fn golden_protocol_error() {
    assert_eq!(
        protocol_error(&ProtocolError::invalid("args must be an array")),
        r#"{"topic":"__error","event":"INVALID_REQUEST","data":{"code":"INVALID_REQUEST","error":"args must be an array"}}"#
    );
    assert_eq!(
        protocol_error(&ProtocolError::new(
            "PAYLOAD_TOO_LARGE",
            "control frames must be under 8192 bytes"
        )),
        r#"{"topic":"__error","event":"PAYLOAD_TOO_LARGE","data":{"code":"PAYLOAD_TOO_LARGE","error":"control frames must be under 8192 bytes"}}"#
    );
}

#[test]
fn oversized_batch_answer_matches_svelte_realtime() {
    let calls: Vec<Value> = (0..51)
        .map(|i| json!({"rpc":"m/f","id":format!("c{i}"),"args":[]}))
        .collect();
    let frame = json!({ "batch": calls }).to_string();
    let Ok(ClientFrame::Batch { calls, .. }) = decode_text(&frame) else {
        panic!("expected a batch");
    };
    assert_eq!(calls.len(), 1);
    let err = calls[0].clone().unwrap_err();
    assert_eq!(err.rpc_id, Some(s("")));
    let answer = rpc_batch(&[(s(""), Err(RpcErrorBody::from(&err)))]);
    assert_eq!(
        answer,
        r#"{"topic":"__rpc","event":"__batch","data":{"batch":[{"id":"","ok":false,"code":"INVALID_REQUEST","error":"Batch exceeds maximum of 50 calls"}]}}"#
    );
}

// ------------------------------------------------------------ decode: control

#[test]
fn decode_hello() {
    assert_eq!(
        decode_text(r#"{"type":"hello","caps":["batch"]}"#),
        Ok(ClientFrame::Hello {
            caps: vec!["batch".into()]
        })
    );
    assert_eq!(
        decode_text(r#"{"type":"hello","caps":["batch",7,null,"x"]}"#),
        Ok(ClientFrame::Hello {
            caps: vec!["batch".into(), "x".into()]
        })
    );
    assert_eq!(
        decode_text(r#"{"type":"hello"}"#),
        Ok(ClientFrame::Hello { caps: vec![] })
    );
    assert_eq!(
        decode_text(r#"{"type":"hello","caps":"batch"}"#)
            .unwrap_err()
            .code,
        "INVALID_REQUEST"
    );
}

#[test]
fn decode_resume() {
    let mut seqs = BTreeMap::new();
    seqs.insert("chat".to_owned(), 17);
    seqs.insert("room:1".to_owned(), 3);
    assert_eq!(
        decode_text(r#"{"type":"resume","sessionId":"abc","lastSeenSeqs":{"chat":17,"room:1":3}}"#),
        Ok(ClientFrame::Resume {
            session_id: "abc".into(),
            last_seen_seqs: seqs
        })
    );
    for bad in [
        r#"{"type":"resume","lastSeenSeqs":{}}"#,
        r#"{"type":"resume","sessionId":"abc"}"#,
        r#"{"type":"resume","sessionId":"abc","lastSeenSeqs":{"chat":-1}}"#,
        r#"{"type":"resume","sessionId":"abc","lastSeenSeqs":{"chat":1.5}}"#,
    ] {
        assert_eq!(
            decode_text(bad).unwrap_err().code,
            "INVALID_REQUEST",
            "{bad}"
        );
    }
}

#[test]
fn decode_subscribe() {
    assert_eq!(
        decode_text(r#"{"type":"subscribe","topic":"chat","ref":1}"#),
        Ok(ClientFrame::Subscribe {
            topic: "chat".into(),
            reference: Some(Ref::Num(1))
        })
    );
    assert_eq!(
        decode_text(r#"{"type":"subscribe","topic":"chat","ref":"uuid-1"}"#),
        Ok(ClientFrame::Subscribe {
            topic: "chat".into(),
            reference: Some(s("uuid-1"))
        })
    );
    // 0.3-style: no ref → no ack.
    assert_eq!(
        decode_text(r#"{"type":"subscribe","topic":"chat"}"#),
        Ok(ClientFrame::Subscribe {
            topic: "chat".into(),
            reference: None
        })
    );
    // Invalid and reserved topics decode: the server denies them per topic.
    assert_eq!(
        decode_text(r#"{"type":"subscribe","topic":"__rpc","ref":4}"#),
        Ok(ClientFrame::Subscribe {
            topic: "__rpc".into(),
            reference: Some(Ref::Num(4))
        })
    );
    assert_eq!(
        decode_text(r#"{"type":"subscribe","topic":"","ref":5}"#),
        Ok(ClientFrame::Subscribe {
            topic: "".into(),
            reference: Some(Ref::Num(5))
        })
    );
    for bad in [
        r#"{"type":"subscribe"}"#,
        r#"{"type":"subscribe","topic":7,"ref":1}"#,
        r#"{"type":"subscribe","topic":"chat","ref":1.5}"#,
        r#"{"type":"subscribe","topic":"chat","ref":true}"#,
    ] {
        assert_eq!(
            decode_text(bad).unwrap_err().code,
            "INVALID_REQUEST",
            "{bad}"
        );
    }
}

#[test]
fn decode_subscribe_batch() {
    assert_eq!(
        decode_text(r#"{"type":"subscribe-batch","topics":["a","b","__x"],"ref":2}"#),
        Ok(ClientFrame::SubscribeBatch {
            topics: vec!["a".into(), "b".into(), "__x".into()],
            reference: Some(Ref::Num(2))
        })
    );
    assert_eq!(
        decode_text(r#"{"type":"subscribe-batch","topics":[]}"#),
        Ok(ClientFrame::SubscribeBatch {
            topics: vec![],
            reference: None
        })
    );
    let topics: Vec<String> = (0..256).map(|i| format!("{i}")).collect();
    let frame = format!(
        r#"{{"type":"subscribe-batch","topics":{},"ref":3}}"#,
        serde_json::to_string(&topics).unwrap()
    );
    assert!(frame.len() < MAX_CONTROL_FRAME_BYTES);
    assert!(matches!(
        decode_text(&frame),
        Ok(ClientFrame::SubscribeBatch { topics, .. }) if topics.len() == 256
    ));
    let topics: Vec<String> = (0..257).map(|i| format!("{i}")).collect();
    let frame = format!(
        r#"{{"type":"subscribe-batch","topics":{},"ref":3}}"#,
        serde_json::to_string(&topics).unwrap()
    );
    assert_eq!(decode_text(&frame).unwrap_err().code, "PAYLOAD_TOO_LARGE");
    assert_eq!(
        decode_text(r#"{"type":"subscribe-batch","topics":["a",1]}"#)
            .unwrap_err()
            .code,
        "INVALID_REQUEST"
    );
}

#[test]
fn decode_unsubscribe_and_reply() {
    assert_eq!(
        decode_text(r#"{"type":"unsubscribe","topic":"chat"}"#),
        Ok(ClientFrame::Unsubscribe {
            topic: "chat".into()
        })
    );
    assert_eq!(
        decode_text(r#"{"type":"reply","ref":7,"data":{"ok":1}}"#),
        Ok(ClientFrame::Reply {
            reference: Ref::Num(7),
            result: Ok(r#"{"ok":1}"#.into())
        })
    );
    assert_eq!(
        decode_text(r#"{"type":"reply","ref":7}"#),
        Ok(ClientFrame::Reply {
            reference: Ref::Num(7),
            result: Ok("null".into())
        })
    );
    assert_eq!(
        decode_text(r#"{"type":"reply","ref":"r","error":"nope"}"#),
        Ok(ClientFrame::Reply {
            reference: s("r"),
            result: Err("nope".into())
        })
    );
    assert_eq!(
        decode_text(r#"{"type":"reply","data":1}"#)
            .unwrap_err()
            .code,
        "INVALID_REQUEST"
    );
}

#[test]
fn decode_control_edge_cases() {
    // Unknown types are ignored.
    for ignored in [
        r#"{"type":"typing","topic":"canvas"}"#,
        r#"{"type":5}"#,
        r#"{"type":null}"#,
    ] {
        assert_eq!(decode_text(ignored), Ok(ClientFrame::Ignored), "{ignored}");
    }
    // Invalid JSON after `{"type"` is an error.
    assert_eq!(
        decode_text(r#"{"type":"subscribe","topic":"#)
            .unwrap_err()
            .code,
        "INVALID_REQUEST"
    );
    // Control frames of 8192 bytes or more are refused.
    let big = format!(r#"{{"type":"hello","caps":["{}"]}}"#, "x".repeat(8192));
    assert_eq!(decode_text(&big).unwrap_err().code, "PAYLOAD_TOO_LARGE");
    let pad = 8191 - r#"{"type":"hello","caps":[""]}"#.len();
    let just_under = format!(r#"{{"type":"hello","caps":["{}"]}}"#, "x".repeat(pad));
    assert_eq!(just_under.len(), 8191);
    assert!(matches!(
        decode_text(&just_under),
        Ok(ClientFrame::Hello { .. })
    ));
    // Whitespace before "type" makes it a user message, as in the adapter.
    assert_eq!(
        decode_text(r#"{ "type":"subscribe","topic":"chat"}"#),
        Ok(ClientFrame::Ignored)
    );
    // Too deep.
    let deep = format!(
        r#"{{"type":"hello","x":{}{}}}"#,
        "[".repeat(64),
        "]".repeat(64)
    );
    assert_eq!(decode_text(&deep).unwrap_err().code, "INVALID_REQUEST");
}

#[test]
fn decode_user_messages() {
    for ignored in [
        r#"{"topic":"chat","event":"x","data":1}"#,
        r#"[1,2,3]"#,
        r#""hi""#,
        "42",
        r#"{"room":"a"}"#,
        r#"{ "rpc":"chat/send","id":"1"}"#,
    ] {
        assert_eq!(decode_text(ignored), Ok(ClientFrame::Ignored), "{ignored}");
    }
    for bad in ["", "hello world", "{", "{\"topic\":", "[1,2"] {
        let err = decode_text(bad).unwrap_err();
        assert_eq!(err.code, "INVALID_REQUEST", "{bad}");
        assert_eq!(err.rpc_id, None);
    }
    let deep = "[".repeat(100_000);
    assert_eq!(decode_text(&deep).unwrap_err().code, "INVALID_REQUEST");
    // A 1 MiB user message is still just ignored (the server enforces the size limit).
    let huge = format!("\"{}\"", "x".repeat(MAX_FRAME_BYTES - 2));
    assert_eq!(decode_text(&huge), Ok(ClientFrame::Ignored));
}

// ------------------------------------------------------------ decode: RPC

#[test]
fn decode_rpc_calls() {
    assert_eq!(
        decode_text(r#"{"rpc":"chat/sendMessage","id":"k3f90","args":["hi"]}"#),
        Ok(ClientFrame::Rpc(call(
            "chat/sendMessage",
            Some(s("k3f90")),
            r#"["hi"]"#
        )))
    );
    assert_eq!(
        decode_text(r#"{"rpc":"chat/count","id":12}"#),
        Ok(ClientFrame::Rpc(call(
            "chat/count",
            Some(Ref::Num(12)),
            "[]"
        )))
    );
    // Fire-and-forget.
    assert_eq!(
        decode_text(r#"{"rpc":"cursors/move","args":[1,2]}"#),
        Ok(ClientFrame::Rpc(call("cursors/move", None, "[1,2]")))
    );
    let mut with_key = call("chat/send", Some(s("k3f91")), r#"[ "a" , {"b":[1]} ]"#);
    with_key.idempotency_key = Some("abc".into());
    assert_eq!(
        decode_text(
            r#"{"rpc":"chat/send","id":"k3f91","args":[ "a" , {"b":[1]} ],"idempotencyKey":"abc"}"#
        ),
        Ok(ClientFrame::Rpc(with_key))
    );
    let mut stream = call("chat/messages", Some(s("k3f92")), "[]");
    stream.stream = true;
    assert_eq!(
        decode_text(
            r#"{"rpc":"chat/messages","id":"k3f92","args":[],"stream":true,"seq":12,"version":3,"schemaVersion":2}"#
        ),
        Ok(ClientFrame::Rpc(stream))
    );
}

#[test]
fn decode_rpc_errors_carry_the_id() {
    let cases = [
        (r#"{"rpc":"chat","id":"a"}"#, "Invalid path"),
        (r#"{"rpc":"chat/se nd","id":"a"}"#, "Invalid path"),
        (r#"{"rpc":5,"id":"a"}"#, "Invalid path"),
        (r#"{"rpc":null,"id":"a"}"#, "Invalid path"),
        (
            r#"{"rpc":"chat/send","id":"a","args":{"x":1}}"#,
            "args must be an array",
        ),
        (
            r#"{"rpc":"chat/send","id":"a","args":null}"#,
            "args must be an array",
        ),
        (
            r#"{"rpc":"chat/send","id":"a","args":"[]"}"#,
            "args must be an array",
        ),
        (
            r#"{"rpc":"chat/send","id":"a","stream":"yes"}"#,
            "stream must be a boolean",
        ),
        (
            r#"{"rpc":"chat/send","id":"a","idempotencyKey":5}"#,
            "idempotencyKey must be a string",
        ),
    ];
    for (frame, message) in cases {
        let err = decode_text(frame).unwrap_err();
        assert_eq!(err.code, "INVALID_REQUEST", "{frame}");
        assert_eq!(err.message, message, "{frame}");
        assert_eq!(err.rpc_id, Some(s("a")), "{frame}");
    }
    let key = "k".repeat(257);
    let frame = format!(r#"{{"rpc":"chat/send","id":"a","idempotencyKey":"{key}"}}"#);
    assert_eq!(decode_text(&frame).unwrap_err().rpc_id, Some(s("a")));
    let frame = format!(
        r#"{{"rpc":"chat/send","id":"a","idempotencyKey":"{}"}}"#,
        &key[1..]
    );
    assert!(
        matches!(decode_text(&frame), Ok(ClientFrame::Rpc(c)) if c.idempotency_key.as_deref() == Some(&key[1..]))
    );
    // Too deep, but the id is still found so the client gets an answer.
    let deep = format!(
        r#"{{"rpc":"m/f","id":"a","args":{}{}}}"#,
        "[".repeat(70),
        "]".repeat(70)
    );
    let err = decode_text(&deep).unwrap_err();
    assert_eq!((err.code, err.rpc_id), ("INVALID_REQUEST", Some(s("a"))));
    // Absurdly deep: refused without recursion (no stack overflow).
    let abyss = format!(r#"{{"rpc":"m/f","id":"a","args":{}"#, "[".repeat(1_000_000));
    assert_eq!(decode_text(&abyss).unwrap_err().code, "INVALID_REQUEST");
    let abyss = format!(
        r#"{{"rpc":"m/f","id":"a","args":{}{}}}"#,
        "[".repeat(500_000),
        "]".repeat(500_000)
    );
    assert_eq!(decode_text(&abyss).unwrap_err().code, "INVALID_REQUEST");
    // Exactly 64 levels is fine (the frame object is level 1).
    let ok = format!(
        r#"{{"rpc":"m/f","id":"a","args":{}{}}}"#,
        "[".repeat(63),
        "]".repeat(63)
    );
    assert!(matches!(decode_text(&ok), Ok(ClientFrame::Rpc(_))));
}

#[test]
fn decode_rpc_errors_without_id() {
    for frame in [
        r#"{"rpc":"chat","args":[]}"#,
        r#"{"rpc":"chat/send","args":1}"#,
        r#"{"rpc":"chat/send","id":{"x":1}}"#,
        r#"{"rpc":"chat/send","id":1.5}"#,
        r#"{"rpc":"chat/send","id":"a""#,
        r#"{"rpc":"chat/send","id":"a","id":"b"}"#,
    ] {
        let err = decode_text(frame).unwrap_err();
        assert_eq!(err.code, "INVALID_REQUEST", "{frame}");
        assert_eq!(err.rpc_id, None, "{frame}");
    }
    let long_id = format!(r#"{{"rpc":"chat/send","id":"{}"}}"#, "i".repeat(257));
    assert_eq!(decode_text(&long_id).unwrap_err().rpc_id, None);
}

#[test]
fn decode_batches() {
    let frame = r#"{"batch":[{"rpc":"a/b","id":"1","args":[1]},{"rpc":"bad","id":"2"},{"rpc":"a/c"},7,{"rpc":"a/d","id":3,"stream":true}],"sequential":true}"#;
    let Ok(ClientFrame::Batch { calls, sequential }) = decode_text(frame) else {
        panic!("expected a batch");
    };
    assert!(sequential);
    assert_eq!(calls.len(), 5);
    assert_eq!(calls[0], Ok(call("a/b", Some(s("1")), "[1]")));
    let e1 = calls[1].clone().unwrap_err();
    assert_eq!(
        (e1.message.as_str(), e1.rpc_id),
        ("Invalid path", Some(s("2")))
    );
    let e2 = calls[2].clone().unwrap_err();
    assert_eq!(
        (e2.message.as_str(), e2.rpc_id),
        ("Each batch entry requires rpc and id", Some(s("")))
    );
    assert_eq!(calls[3].clone().unwrap_err().rpc_id, Some(s("")));
    let mut streamed = call("a/d", Some(Ref::Num(3)), "[]");
    streamed.stream = true;
    assert_eq!(calls[4], Ok(streamed));

    assert_eq!(
        decode_text(r#"{"batch":[]}"#),
        Ok(ClientFrame::Batch {
            calls: vec![],
            sequential: false
        })
    );
    let fifty: Vec<Value> = (0..50).map(|i| json!({"rpc":"m/f","id":i})).collect();
    let frame = json!({ "batch": fifty }).to_string();
    assert!(
        matches!(decode_text(&frame), Ok(ClientFrame::Batch { calls, .. }) if calls.len() == 50 && calls.iter().all(Result::is_ok))
    );
    for bad in [
        r#"{"batch":{}}"#,
        r#"{"batch":null}"#,
        r#"{"batch":[],"sequential":1}"#,
        r#"{"batch":[{"rpc":"a/b","id":"1"}"#,
    ] {
        let err = decode_text(bad).unwrap_err();
        assert_eq!((err.code, err.rpc_id), ("INVALID_REQUEST", None), "{bad}");
    }
}

// ------------------------------------------------------------ decode: binary

fn binary_rpc(header: &str, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(header.len()).unwrap();
    let mut frame = vec![0x00];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(header.as_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[test]
fn decode_binary_frames() {
    let err =
        decode_binary(&binary_rpc(r#"{"rpc":"files/put","id":"b1"}"#, b"\x01\x02")).unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str(), err.rpc_id),
        (
            "INVALID_REQUEST",
            "binary RPC is not supported",
            Some(s("b1"))
        )
    );
    // Without an id, with a bad header, or a truncated header: ignored.
    for frame in [
        binary_rpc(r#"{"rpc":"files/put"}"#, b""),
        binary_rpc("not json", b""),
        vec![0x00, 0x00, 0x10, b'{'],
        vec![0x00, 0x00, 0x00, 0x00],
        vec![0x01, 0x03, 0, 0, 0, 1, 0, 0, 0, 0],
        vec![0x02, 0x10, 0, 0, 0, 1],
        b"plain bytes".to_vec(),
        vec![],
    ] {
        assert_eq!(decode_binary(&frame), Ok(ClientFrame::Ignored), "{frame:?}");
    }
    assert_eq!(
        decode_binary(&vec![0u8; MAX_FRAME_BYTES]),
        Ok(ClientFrame::Ignored)
    );
}

// ------------------------------------------------------------ properties

/// Arbitrary JSON values (finite numbers, short strings, shallow nesting).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        // Dyadic fractions: exact in binary, so text round trips are exact.
        (-1_000_000i32..1_000_000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z\"\\\\]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn reference() -> impl Strategy<Value = Ref> {
    prop_oneof![
        any::<i64>().prop_map(Ref::Num),
        ".{0,16}".prop_map(Ref::Str),
    ]
}

fn rpc_call() -> impl Strategy<Value = RpcCall> {
    (
        "[a-zA-Z0-9_-]{1,8}(/[a-zA-Z0-9_-]{1,8}){1,3}",
        prop::option::of(reference()),
        prop::collection::vec(json_value(), 0..4),
        prop::option::of(".{0,20}"),
        any::<bool>(),
    )
        .prop_map(|(path, id, args, idempotency_key, stream)| RpcCall {
            path,
            id,
            args_json: serde_json::to_string(&args).unwrap(),
            idempotency_key,
            stream,
        })
}

/// The call as a client would send it (key `rpc` first, as the fast path needs).
fn call_to_json(c: &RpcCall, omit_empty_args: bool) -> String {
    let mut out = format!(r#"{{"rpc":{}"#, serde_json::to_string(&c.path).unwrap());
    if let Some(id) = &c.id {
        out.push_str(&format!(r#","id":{}"#, serde_json::to_string(id).unwrap()));
    }
    if !(omit_empty_args && c.args_json == "[]") {
        out.push_str(&format!(r#","args":{}"#, c.args_json));
    }
    if let Some(key) = &c.idempotency_key {
        out.push_str(&format!(
            r#","idempotencyKey":{}"#,
            serde_json::to_string(key).unwrap()
        ));
    }
    if c.stream {
        out.push_str(r#","stream":true"#);
    }
    out.push('}');
    out
}

fn valid_topic() -> impl Strategy<Value = String> {
    // Printable ASCII without `"` (0x22) and `\` (0x5C); `__` is filtered out.
    "[ !#-\\[\\]-~]{1,64}".prop_filter("valid topic", |t| validate_topic(t).is_ok())
}

fn valid_event() -> impl Strategy<Value = String> {
    "[^\"\\\\\\x00-\\x1f]{1,24}".prop_filter("valid event", |e| validate_event(e).is_ok())
}

// 256 cases each by default (the whole module runs in about a second in
// debug); fuzz longer with e.g. `PROPTEST_CASES=100000`.
proptest! {

    #[test]
    fn decode_text_never_panics(frame in ".{0,200}") {
        let _ = decode_text(&frame);
    }

    #[test]
    fn decode_text_never_panics_on_known_prefixes(
        prefix in prop_oneof![Just("{\"type\""), Just("{\"rpc\""), Just("{\"batch\""), Just("")],
        rest in "[\\[\\]{}\":,a-z0-9 \\\\-]{0,120}",
    ) {
        let frame = format!("{prefix}{rest}");
        let _ = decode_text(&frame);
    }

    #[test]
    fn decode_text_never_panics_on_mutated_frames(
        base in prop_oneof![
            Just(r#"{"type":"subscribe-batch","topics":["a","b"],"ref":2}"#),
            Just(r#"{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":17}}"#),
            Just(r#"{"type":"reply","ref":7,"data":{"x":[1]}}"#),
            Just(r#"{"rpc":"chat/send","id":"k3f91","args":["a",{"b":1}],"idempotencyKey":"abc"}"#),
            Just(r#"{"batch":[{"rpc":"a/b","id":"1","args":[]},{"rpc":"a/c","id":2}],"sequential":true}"#),
        ],
        cut in 0usize..120,
        insert in ".{0,4}",
    ) {
        let cut = cut.min(base.len());
        let frame = format!("{}{}{}", &base[..cut], insert, &base[cut..]);
        let _ = decode_text(&frame);
        let _ = decode_text(&base[..cut]);
    }

    #[test]
    fn decode_binary_never_panics(
        first in prop_oneof![Just(0u8), Just(1u8), Just(2u8), any::<u8>()],
        len in any::<u16>(),
        rest in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut frame = vec![first];
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&rest);
        let _ = decode_binary(&frame);
        let _ = decode_binary(&rest);
    }

    #[test]
    fn rpc_call_round_trips(c in rpc_call(), omit in any::<bool>()) {
        let frame = call_to_json(&c, omit);
        prop_assert_eq!(decode_text(&frame), Ok(ClientFrame::Rpc(c)));
    }

    #[test]
    fn rpc_batch_round_trips(
        calls in prop::collection::vec(rpc_call(), 0..6),
        sequential in any::<bool>(),
    ) {
        let mut calls = calls;
        for (i, c) in calls.iter_mut().enumerate() {
            c.id.get_or_insert(Ref::Num(i as i64));
        }
        let entries: Vec<String> = calls.iter().map(|c| call_to_json(c, false)).collect();
        let frame = format!(r#"{{"batch":[{}],"sequential":{sequential}}}"#, entries.join(","));
        let expected = ClientFrame::Batch { calls: calls.into_iter().map(Ok).collect(), sequential };
        prop_assert_eq!(decode_text(&frame), Ok(expected));
    }

    #[test]
    fn subscribe_round_trips(topic in ".{0,40}", r in prop::option::of(reference())) {
        // serde_json sorts object keys, so build the frame by hand: `type` first.
        let mut frame = format!(r#"{{"type":"subscribe","topic":{}"#, serde_json::to_string(&topic).unwrap());
        if let Some(r) = &r {
            frame.push_str(&format!(r#","ref":{}"#, serde_json::to_string(r).unwrap()));
        }
        frame.push('}');
        prop_assert!(frame.starts_with(r#"{"type""#), "frame {}", frame);
        prop_assert_eq!(decode_text(&frame), Ok(ClientFrame::Subscribe { topic, reference: r }));
    }

    #[test]
    fn envelope_is_valid_json(
        topic in valid_topic(),
        event in valid_event(),
        data in json_value(),
        seq in prop::option::of(any::<u64>()),
    ) {
        let data_json = data.to_string();
        let frame = envelope(&topic, &event, &data_json, seq);
        let parsed: Value = serde_json::from_str(&frame).unwrap();
        prop_assert_eq!(&parsed["topic"], &Value::String(topic.clone()));
        prop_assert_eq!(&parsed["event"], &Value::String(event.clone()));
        prop_assert_eq!(&parsed["data"], &data);
        match seq {
            Some(n) => prop_assert_eq!(parsed["seq"].as_u64(), Some(n)),
            None => prop_assert!(parsed.get("seq").is_none()),
        }
        // Key order is fixed: topic, event, data, seq.
        let expected_prefix = format!(r#"{{"topic":"{topic}","event":"{event}","data":"#);
        prop_assert!(frame.starts_with(&expected_prefix));
    }

    #[test]
    fn encoders_always_emit_valid_json(
        text in ".{0,40}",
        r in reference(),
        data in json_value(),
        code in "[A-Z_]{1,12}",
    ) {
        let data_json = data.to_string();
        let err = RpcErrorBody {
            issues: Some(vec![ValidationIssue { path: text.clone(), message: text.clone() }]),
            retry_after_ms: Some(5),
            ..RpcErrorBody::new(code.clone(), text.clone())
        };
        let frames = [
            welcome(&text),
            subscribed(&text, &r),
            subscribe_denied(&text, &r, &text),
            envelope(&text, &text, &data_json, Some(1)),
            rpc_ok(&r, &data_json),
            rpc_error(&r, &err),
            rpc_batch(&[(r.clone(), Ok(data_json.clone())), (r.clone(), Err(err.clone()))]),
        ];
        for frame in &frames {
            prop_assert!(serde_json::from_str::<Value>(frame).is_ok(), "{}", frame);
        }
        let ok: Value = serde_json::from_str(&rpc_ok(&r, &data_json)).unwrap();
        prop_assert_eq!(&ok["event"], &Value::String(r.to_string()));
        prop_assert_eq!(&ok["data"]["id"], &serde_json::to_value(&r).unwrap());
        prop_assert_eq!(&ok["data"]["data"], &data);
        let denied: Value = serde_json::from_str(&subscribe_denied(&text, &r, &code)).unwrap();
        prop_assert_eq!(&denied["topic"], &Value::String(text.clone()));
        prop_assert_eq!(&denied["reason"], &Value::String(code.clone()));
    }
}

// ------------------------------------------------------------ docs/protocol.md

/// The server frames the doc shows, built with the encoders.
fn documented_server_frames() -> Vec<String> {
    use crate::backend::groups::Role;
    let validation = RpcErrorBody {
        issues: Some(vec![ValidationIssue {
            path: "args[1]".into(),
            message: "text must not be empty".into(),
        }]),
        ..RpcErrorBody::new("VALIDATION", "Invalid arguments")
    };
    let limited = RpcErrorBody {
        retry_after_ms: Some(1200),
        ..RpcErrorBody::new("RATE_LIMITED", "Too many requests")
    };
    vec![
        welcome("0b0c2a52-59a6-4a8e-9b8e-6f0b1c2d3e4f"),
        resumed().to_owned(),
        subscribed("chat", &Ref::Num(1)),
        subscribed("room:lobby", &Ref::Num(1)),
        subscribe_denied("chat", &Ref::Num(1), "FORBIDDEN"),
        subscribe_denied("__rpc", &Ref::Num(1), "INVALID_TOPIC"),
        envelope(
            "room:lobby",
            "message",
            r#"{"id":"m1","user":"ann","text":"hi"}"#,
            Some(17),
        ),
        envelope("chat", "created", "null", None),
        rpc_ok(&s("k3f90"), r#"{"id":"m1"}"#),
        rpc_ok(&Ref::Num(5), "null"),
        rpc_error(&s("k3f91"), &RpcErrorBody::new("NOT_FOUND", "Not found")),
        rpc_error(&s("k3f92"), &validation),
        rpc_error(&s("k3f93"), &limited),
        rpc_error(&s("k3f94"), &RpcErrorBody::internal()),
        rpc_batch(&[
            (s("a1"), Ok("1".into())),
            (
                s("a2"),
                Err(RpcErrorBody::new("INVALID_REQUEST", "Invalid path")),
            ),
        ]),
        rpc_batch(&[(
            s(""),
            Err(RpcErrorBody::new(
                "INVALID_REQUEST",
                "Batch exceeds maximum of 50 calls",
            )),
        )]),
        protocol_error(&ProtocolError::invalid("args must be an array")),
        protocol_error(&ProtocolError::new(
            "PAYLOAD_TOO_LARGE",
            "control frames must be under 8192 bytes",
        )),
        envelope(
            "__presence:room:lobby",
            "presence_state",
            r#"{"ann":{"name":"ann"},"bob":{"name":"bob"}}"#,
            None,
        ),
        envelope(
            "__presence:room:lobby",
            "presence_diff",
            r#"{"joins":{"carol":{"name":"carol"}},"leaves":{}}"#,
            Some(7),
        ),
        envelope(
            "__presence:room:lobby",
            "presence_diff",
            r#"{"joins":{},"leaves":{"ann":{"name":"ann"}}}"#,
            Some(8),
        ),
        envelope(
            "__cursor:canvas",
            "snapshot",
            r#"[{"data":{"x":120,"y":48},"key":"0b0c2a52-59a6-4a8e-9b8e-6f0b1c2d3e4f","user":"ann"}]"#,
            None,
        ),
        envelope(
            "__cursor:canvas",
            "update",
            r#"{"data":{"x":121,"y":50},"key":"0b0c2a52-59a6-4a8e-9b8e-6f0b1c2d3e4f","user":"ann"}"#,
            Some(12),
        ),
        envelope(
            "__cursor:canvas",
            "remove",
            r#"{"key":"0b0c2a52-59a6-4a8e-9b8e-6f0b1c2d3e4f"}"#,
            Some(13),
        ),
        envelope(
            "__presence:room:lobby",
            "heartbeat",
            r#"["ann","bob"]"#,
            None,
        ),
        envelope(
            "__group:lobby",
            "members",
            &crate::groups::members_json([Role::Admin, Role::Viewer]),
            None,
        ),
        envelope(
            "__group:lobby",
            "join",
            &crate::groups::role_count_json(Role::Viewer, 2),
            Some(3),
        ),
        envelope(
            "__group:lobby",
            "leave",
            &crate::groups::role_count_json(Role::Viewer, 1),
            Some(4),
        ),
        envelope("__group:lobby", "move", r#"{"to":"e4"}"#, Some(5)),
        envelope("__group:lobby", "close", "null", None),
        replay_truncated("chat"),
        replay_msg("chat", Some(&Ref::Num(1)), 43, "created", r#"{"id":"m1"}"#),
        replay_end("chat", Some(&Ref::Num(1)), true),
        replay_denied("chat", "FORBIDDEN", Some(&Ref::Num(1))),
    ]
}

/// Every example frame in `docs/protocol.md` is either a client frame the
/// decoder accepts (and acts on), or exactly what an encoder produces.
#[test]
fn docs_examples_match_the_codec() {
    let doc = include_str!("../../../docs/protocol.md");
    let produced = documented_server_frames();
    let mut in_block = false;
    let mut seen = 0;
    for line in doc.lines() {
        let line = line.trim();
        if line.starts_with("```") {
            in_block = line == "```json";
            continue;
        }
        if !in_block || line.is_empty() {
            continue;
        }
        seen += 1;
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let client_types = [
            "hello",
            "resume",
            "subscribe",
            "subscribe-batch",
            "unsubscribe",
            "reply",
            "replay",
            "cursor",
            "cursor-snapshot",
        ];
        let client = value["type"]
            .as_str()
            .is_some_and(|t| client_types.contains(&t))
            || line.starts_with(r#"{"rpc""#)
            || line.starts_with(r#"{"batch""#);
        if client {
            let frame = decode_text(line);
            assert!(
                matches!(&frame, Ok(f) if *f != ClientFrame::Ignored),
                "{line} decoded to {frame:?}"
            );
        } else {
            assert!(
                produced.iter().any(|p| p == line),
                "no encoder produces: {line}"
            );
        }
    }
    assert!(seen >= 30, "only {seen} examples found");
}

#[test]
fn replay_frames_decode() {
    assert_eq!(
        decode_text(r#"{"type":"replay","topic":"chat","since":42,"reqId":1}"#),
        Ok(ClientFrame::Replay {
            topic: "chat".into(),
            since: 42,
            req_id: Some(Ref::Num(1)),
        })
    );
    assert_eq!(
        decode_text(r#"{"type":"replay","topic":"chat","reqId":"r1"}"#),
        Ok(ClientFrame::Replay {
            topic: "chat".into(),
            since: 0,
            req_id: Some(Ref::Str("r1".into())),
        }),
        "since defaults to 0"
    );
    for bad in [
        r#"{"type":"replay","since":1}"#,
        r#"{"type":"replay","topic":"chat","since":-1}"#,
        r#"{"type":"replay","topic":"chat","since":"1"}"#,
        r#"{"type":"replay","topic":"chat","reqId":{}}"#,
    ] {
        assert_eq!(
            decode_text(bad).unwrap_err().code,
            "INVALID_REQUEST",
            "{bad}"
        );
    }
}

#[test]
fn replay_answers_have_the_seed_shapes() {
    let r = Ref::Num(7);
    assert_eq!(
        replay_truncated("chat"),
        r#"{"topic":"__replay:chat","event":"truncated","data":null}"#
    );
    assert_eq!(
        replay_msg("chat", Some(&r), 3, "created", r#"{"a":1}"#),
        r#"{"topic":"__replay:chat","event":"msg","data":{"reqId":7,"seq":3,"event":"created","data":{"a":1}}}"#
    );
    assert_eq!(
        replay_msg("chat", None, 3, "e", "null"),
        r#"{"topic":"__replay:chat","event":"msg","data":{"seq":3,"event":"e","data":null}}"#
    );
    assert_eq!(
        replay_end("chat", Some(&r), true),
        r#"{"topic":"__replay:chat","event":"end","data":{"reqId":7,"truncated":true}}"#
    );
    assert_eq!(
        replay_end("chat", Some(&r), false),
        r#"{"topic":"__replay:chat","event":"end","data":{"reqId":7}}"#
    );
    assert_eq!(
        replay_end("chat", None, true),
        r#"{"topic":"__replay:chat","event":"end","data":{"truncated":true}}"#
    );
    assert_eq!(
        replay_end("chat", None, false),
        r#"{"topic":"__replay:chat","event":"end","data":null}"#
    );
    assert_eq!(
        replay_denied("chat", "FORBIDDEN", Some(&Ref::Str("x".into()))),
        r#"{"topic":"__replay:chat","event":"denied","data":{"code":"FORBIDDEN","reqId":"x"}}"#
    );
    for frame in [
        replay_msg("a\"b", Some(&r), 1, "e", "1"),
        replay_denied("t", "A\"B", None),
    ] {
        serde_json::from_str::<serde_json::Value>(&frame).unwrap();
    }
}

#[test]
fn cursor_frames_decode() {
    assert_eq!(
        decode_text(r#"{"type":"cursor","topic":"canvas","data":{"x":1,"y":2}}"#),
        Ok(ClientFrame::Cursor {
            topic: "canvas".into(),
            data: r#"{"x":1,"y":2}"#.into(),
        })
    );
    assert_eq!(
        decode_text(r#"{"type":"cursor","topic":"canvas","position":[3,4]}"#),
        Ok(ClientFrame::Cursor {
            topic: "canvas".into(),
            data: "[3,4]".into(),
        })
    );
    assert_eq!(
        decode_text(r#"{"type":"cursor-snapshot","topic":"canvas"}"#),
        Ok(ClientFrame::CursorSnapshot {
            topic: "canvas".into()
        })
    );
    for bad in [
        r#"{"type":"cursor","data":1}"#,
        r#"{"type":"cursor-snapshot","topic":5}"#,
    ] {
        assert_eq!(
            decode_text(bad).unwrap_err().code,
            "INVALID_REQUEST",
            "{bad}"
        );
    }
}
