//! The client wire format: svelte-adapter-uws 0.5.1 frames with
//! svelte-realtime 0.5.12 RPC, as a pure codec (no I/O).
//!
//! - [`decode_text`] / [`decode_binary`] turn one inbound WebSocket frame
//!   into a [`ClientFrame`] or a [`ProtocolError`].
//! - The encoders ([`welcome`], [`subscribed`], [`subscribe_denied`],
//!   [`envelope`], [`rpc_ok`], [`rpc_error`], [`rpc_batch`],
//!   [`protocol_error`], [`resumed`]) build outbound text frames byte for
//!   byte as the JavaScript servers do.
//! - [`validate_topic`] / [`validate_event`] are the name rules, shared with
//!   plugin publishes.
//!
//! `docs/protocol.md` at the repository root describes every frame, limit
//! and error; the tests below pin each frame shape it lists.

mod decode;
mod encode;
mod error;
mod frames;
mod validate;

#[cfg(test)]
mod tests;

pub use decode::{decode_binary, decode_text};
pub use encode::{
    BATCH_EVENT, ERROR_TOPIC, REPLAY_TOPIC_PREFIX, RPC_TOPIC, envelope, protocol_error,
    replay_denied, replay_end, replay_msg, replay_truncated, resumed, rpc_batch, rpc_error, rpc_ok,
    subscribe_denied, subscribed, welcome,
};
pub use error::{INTERNAL_ERROR_MESSAGE, ProtocolError, RpcErrorBody, codes};
pub use frames::{ClientFrame, Ref, RpcCall};
pub use validate::{
    MAX_EVENT_BYTES, MAX_IDEMPOTENCY_KEY_BYTES, MAX_PATH_BYTES, MAX_REF_BYTES, MAX_TOPIC_BYTES,
    validate_event, validate_topic,
};

/// Largest inbound text or binary frame; a larger one makes the server close
/// the connection with 1009.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// The reserved topic of the host's own notices to clients (`degraded` /
/// `recovered` when the host loses and regains Redis): the one `__` topic a
/// client may subscribe to, and one no plugin can publish on.
pub const SYSTEM_TOPIC: &str = "__realtime";
/// `{"type"` control frames must be under this many bytes.
pub const MAX_CONTROL_FRAME_BYTES: usize = 8192;
/// Most calls in one `{"batch":[...]}` frame.
pub const MAX_RPC_BATCH: usize = 50;
/// Most topics in one `subscribe-batch` frame.
pub const MAX_SUBSCRIBE_BATCH: usize = 256;
/// Deepest JSON nesting accepted in an inbound frame (the frame's own object counts as 1).
pub const MAX_JSON_DEPTH: usize = 64;
