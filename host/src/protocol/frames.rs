//! The decoded client frames.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};

use super::error::ProtocolError;

/// A client-chosen correlation value echoed back verbatim (number or string):
/// the `ref` of subscribe frames and the `id` of RPC calls.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ref {
    /// An integer, e.g. the adapter client's subscribe refs `1`, `2`, ...
    Num(i64),
    /// A string, e.g. svelte-realtime's RPC ids `"k3f90"`.
    Str(String),
}

impl Serialize for Ref {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Ref::Num(n) => serializer.serialize_i64(*n),
            Ref::Str(s) => serializer.serialize_str(s),
        }
    }
}

/// The text form: the number in decimal, or the string itself. This is the
/// `event` of an `__rpc` answer.
impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Num(n) => write!(f, "{n}"),
            Ref::Str(s) => f.write_str(s),
        }
    }
}

/// One decoded client → server frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    /// `{"type":"hello","caps":[...]}`: the client's capabilities (non-string entries dropped).
    Hello {
        /// Capability names, e.g. `["batch"]`.
        caps: Vec<String>,
    },
    /// `{"type":"resume","sessionId","lastSeenSeqs"}`: sent after a reconnect.
    Resume {
        /// The session id of the previous connection (from its `welcome`).
        session_id: String,
        /// The highest `seq` the client saw, per topic.
        last_seen_seqs: BTreeMap<String, u64>,
    },
    /// `{"type":"replay","topic","since","reqId"?}` (the seeds' replay
    /// client): send the buffered events of `topic` after `since` on
    /// `__replay:{topic}`. The topic is NOT validated (as for `Subscribe`).
    Replay {
        /// The topic as sent.
        topic: String,
        /// The last seq the client saw (0: everything buffered).
        since: u64,
        /// Echoed in the answer frames; `None` when absent.
        req_id: Option<Ref>,
    },
    /// `{"type":"cursor","topic","data"|"position"}` (the seeds' cursor
    /// client): the connection's pointer on `topic` moved.
    Cursor {
        /// The topic as sent (not validated).
        topic: String,
        /// The position, JSON text (`null` when absent).
        data: String,
    },
    /// `{"type":"cursor-snapshot","topic"}`: attach to `topic`'s cursors
    /// and get every live one.
    CursorSnapshot {
        /// The topic as sent (not validated).
        topic: String,
    },
    /// `{"type":"subscribe","topic","ref"?}`. The topic is NOT validated: the
    /// server calls [`super::validate_topic`] and answers `subscribe-denied`
    /// with reason `INVALID_TOPIC`.
    Subscribe {
        /// The topic as sent.
        topic: String,
        /// The ack ref; `None` (0.3/0.4 clients) means: send no ack at all.
        reference: Option<Ref>,
    },
    /// `{"type":"subscribe-batch","topics":[...],"ref"?}`: at most
    /// [`super::MAX_SUBSCRIBE_BATCH`] topics, each acked separately with the
    /// shared ref. Topics are NOT validated (as for `Subscribe`).
    SubscribeBatch {
        /// The topics as sent, in order.
        topics: Vec<String>,
        /// The ack ref shared by every per-topic ack; `None` means no acks.
        reference: Option<Ref>,
    },
    /// `{"type":"unsubscribe","topic"}`: never acked.
    Unsubscribe {
        /// The topic as sent (not validated; unknown topics are a no-op).
        topic: String,
    },
    /// `{"type":"reply","ref","data"|"error"}`: the answer to a server request.
    Reply {
        /// The ref of the server request being answered.
        reference: Ref,
        /// `Ok(data as JSON text)` (`null` when absent) or `Err(error message)`.
        result: Result<String, String>,
    },
    /// `{"rpc":"mod/fn","id"?,"args"?,...}`: one RPC call.
    Rpc(RpcCall),
    /// `{"batch":[...],"sequential"?}`: several RPC calls answered together
    /// with one `__batch` frame, results in the same order.
    ///
    /// Each entry is decoded on its own: a malformed entry is an `Err` whose
    /// `rpc_id` is always `Some` (the entry's id, or `""` when it has none, as
    /// svelte-realtime answers), so the server can put every result in the
    /// answer. A batch of more than [`super::MAX_RPC_BATCH`] calls decodes as
    /// a single `Err` entry with id `""` (`Batch exceeds maximum of 50 calls`),
    /// exactly what svelte-realtime answers.
    Batch {
        /// The calls, in order.
        calls: Vec<Result<RpcCall, ProtocolError>>,
        /// `true`: run one after another; `false`: the calls may run concurrently.
        sequential: bool,
    },
    /// Well-formed frame the host does not act on (unknown `type`, custom user messages, binary): ignored.
    Ignored,
}

/// One decoded RPC call (svelte-realtime `live()` call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcCall {
    /// The handler path, `module/fn` (checked against
    /// `^[a-zA-Z0-9_-]+(?:/[a-zA-Z0-9_-]+)+$`, at most 256 bytes).
    pub path: String,
    /// Correlation id; `None` = fire-and-forget (no answer is sent). Always
    /// `Some` inside a batch.
    pub id: Option<Ref>,
    /// The arguments: validated JSON array text, `[]` when absent.
    pub args_json: String,
    /// `idempotencyKey`, at most 256 bytes.
    pub idempotency_key: Option<String>,
    /// `stream: true` (a svelte-realtime stream subscribe; not supported yet).
    pub stream: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_serializes_as_number_or_string() {
        assert_eq!(serde_json::to_string(&Ref::Num(-7)).unwrap(), "-7");
        assert_eq!(
            serde_json::to_string(&Ref::Str("a\"b".into())).unwrap(),
            r#""a\"b""#
        );
        assert_eq!(Ref::Num(12).to_string(), "12");
        assert_eq!(Ref::Str("k3f90".into()).to_string(), "k3f90");
    }
}
