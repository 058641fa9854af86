//! `chat`: the demo tenant's plugin. Tutorials and tests rely on exactly this
//! behaviour.
//!
//! * `authenticate`: the user id is the query parameter `?user=NAME` (a demo:
//!   it is trusted as is), else `guest-N` with N from a per-tenant counter.
//! * Subscribe gate: topics `room:*` and `activity:*` are allowed, any other
//!   is `FORBIDDEN`. Subscribing to a room makes the user present in it with
//!   data `{"name": user}` (clients see it on `__presence:room:*`).
//! * Presence events (`on_presence`): when a user comes online in room `R`
//!   (its first connection there) or goes offline (its last one left, or
//!   its host died), the plugin publishes event `online` / `offline` with
//!   data `{"user": id}` on topic `activity:R` — debounced by the host, so a
//!   quick reconnect announces nothing.
//! * `chat/send` `[room, text]`: publishes event `message` with data
//!   `{id, user, text}` on topic `room:{room}` and returns `{id}`. The id comes
//!   from a per-tenant counter. Empty text, or text over 2000 characters, is
//!   `VALIDATION`.
//! * `chat/history` `[room]`: the last 50 messages of the room, oldest first.
//! * `chat/count` `[]`: a per-tenant counter, incremented by each call.

use serde::{Deserialize, Serialize};
use tenantry_sdk::presence::PresenceEvent;
use tenantry_sdk::{
    ConnectRequest, Ctx, LiveError, Plugin, Router, User, ValidationIssue, export_plugin,
};

/// The longest message text accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 2000;
/// How many messages `chat/history` keeps per room.
pub const HISTORY_LEN: usize = 50;
/// The longest room name: `room:` + name must stay a valid topic (≤ 256).
const MAX_ROOM_CHARS: usize = 256 - "room:".len();

/// KV key of the message id counter.
const NEXT_ID_KEY: &str = "chat:next-id";
/// KV key of the `chat/count` counter.
const COUNT_KEY: &str = "chat:count";
/// KV key of the guest number counter.
const GUEST_KEY: &str = "chat:guests";

/// One chat message, as published and as kept in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Per-tenant message id, 1, 2, 3...
    pub id: i64,
    /// The sender's user id.
    pub user: String,
    /// The text.
    pub text: String,
}

/// What `chat/send` returns.
#[derive(Debug, Serialize)]
pub struct Sent {
    /// The new message's id.
    pub id: i64,
}

fn history_key(room: &str) -> String {
    format!("chat:history:{room}")
}

/// A room name that makes a valid wire topic `room:{room}`.
fn check_room(room: &str) -> Result<(), LiveError> {
    let problem = if room.is_empty() {
        Some("room must not be empty".to_owned())
    } else if room.len() > MAX_ROOM_CHARS {
        Some(format!("room must be at most {MAX_ROOM_CHARS} characters"))
    } else if !room
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        Some("room must be printable ASCII without quotes or backslashes".to_owned())
    } else {
        None
    };
    match problem {
        Some(message) => Err(LiveError::validation(vec![ValidationIssue::new(
            "args[0]", message,
        )])),
        None => Ok(()),
    }
}

fn check_text(text: &str) -> Result<(), LiveError> {
    let message = if text.trim().is_empty() {
        "text must not be empty".to_owned()
    } else if text.chars().count() > MAX_TEXT_CHARS {
        format!("text must be at most {MAX_TEXT_CHARS} characters")
    } else {
        return Ok(());
    };
    Err(LiveError::validation(vec![ValidationIssue::new(
        "args[1]", message,
    )]))
}

/// `chat/send` `[room, text]`.
fn send(ctx: &Ctx, (room, text): (String, String)) -> Result<Sent, LiveError> {
    check_room(&room)?;
    check_text(&text)?;
    let kv = ctx.kv();
    let id = kv.incr(NEXT_ID_KEY, 1)?;
    let message = Message {
        id,
        user: ctx.user_id().unwrap_or("anonymous").to_owned(),
        text,
    };
    // Keep the history before publishing, so a client that reacts to the
    // event by reading the history finds the message there.
    let key = history_key(&room);
    let mut history: Vec<Message> = kv.get(&key)?.unwrap_or_default();
    history.push(message.clone());
    let excess = history.len().saturating_sub(HISTORY_LEN);
    history.drain(..excess);
    kv.set(&key, &history, None)?;
    ctx.publish(&format!("room:{room}"), "message", &message)?;
    Ok(Sent { id })
}

/// `chat/history` `[room]`.
fn history(ctx: &Ctx, (room,): (String,)) -> Result<Vec<Message>, LiveError> {
    check_room(&room)?;
    Ok(ctx.kv().get(&history_key(&room))?.unwrap_or_default())
}

/// `chat/count` `[]`.
fn count(ctx: &Ctx, (): ()) -> Result<i64, LiveError> {
    Ok(ctx.kv().incr(COUNT_KEY, 1)?)
}

/// The demo chat plugin.
pub struct Chat;

impl Plugin for Chat {
    fn router() -> Router {
        Router::new()
            .live("chat/send", send)
            .live("chat/history", history)
            .live("chat/count", count)
    }

    fn authenticate(request: &ConnectRequest) -> Result<Option<User>, LiveError> {
        match request.query("user") {
            Some(name) if !name.is_empty() => Ok(Some(User::new(name))),
            _ => {
                let n = tenantry_sdk::kv().incr(GUEST_KEY, 1)?;
                Ok(Some(User::new(format!("guest-{n}"))))
            }
        }
    }

    fn authorize_subscribe(ctx: &Ctx, topic: &str) -> Result<(), LiveError> {
        if topic.starts_with("activity:") {
            return Ok(());
        }
        if topic.starts_with("room:") {
            // Who is in the room: the user's name only (the seeds' `select`).
            tenantry_sdk::presence::join(
                topic,
                &tenantry_sdk::serde_json::json!({ "name": ctx.user_id() }),
            )?;
            Ok(())
        } else {
            Err(LiveError::forbidden(
                "chat only allows subscribing to room:* and activity:* topics",
            ))
        }
    }

    const PRESENCE_EVENTS: bool = true;

    fn on_presence(events: &[PresenceEvent]) -> Result<(), LiveError> {
        for event in events {
            let (topic, user, what) = match event {
                PresenceEvent::UserOnline { topic, user } => (topic, user, "online"),
                PresenceEvent::UserOffline { topic, user } => (topic, user, "offline"),
                PresenceEvent::TopicOccupied { .. } | PresenceEvent::TopicVacated { .. } => {
                    continue;
                }
            };
            if let Some(room) = topic.strip_prefix("room:") {
                tenantry_sdk::publish(
                    &format!("activity:{room}"),
                    what,
                    &tenantry_sdk::serde_json::json!({ "user": user }),
                )?;
            }
        }
        Ok(())
    }
}

export_plugin!(Chat);

#[cfg(test)]
mod tests {
    use super::*;
    use tenantry_sdk::testing;

    fn call(user: &str, path: &str, args: &str) -> Result<String, LiveError> {
        Chat::router().call(&testing::ctx(Some(user)), path, args)
    }

    fn request(query: &[(&str, &str)]) -> ConnectRequest {
        ConnectRequest {
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ConnectRequest::default()
        }
    }

    #[test]
    fn send_publishes_and_returns_id() {
        testing::reset();
        assert_eq!(
            call("ann", "chat/send", r#"["lobby","hello"]"#).unwrap(),
            r#"{"id":1}"#
        );
        assert_eq!(
            call("bob", "chat/send", r#"["lobby","hi"]"#).unwrap(),
            r#"{"id":2}"#
        );
        let published = testing::take_published();
        assert_eq!(published.len(), 2);
        assert_eq!(published[0].topic, "room:lobby");
        assert_eq!(published[0].event, "message");
        assert_eq!(
            published[0].data,
            tenantry_sdk::serde_json::json!({"id": 1, "user": "ann", "text": "hello"})
        );
    }

    #[test]
    fn history_keeps_last_50_oldest_first() {
        testing::reset();
        assert_eq!(call("ann", "chat/history", r#"["lobby"]"#).unwrap(), "[]");
        for i in 0..60 {
            call("ann", "chat/send", &format!(r#"["lobby","m{i}"]"#)).unwrap();
        }
        call("ann", "chat/send", r#"["other","x"]"#).unwrap();
        let out = call("ann", "chat/history", r#"["lobby"]"#).unwrap();
        let history: Vec<Message> = tenantry_sdk::serde_json::from_str(&out).unwrap();
        assert_eq!(history.len(), HISTORY_LEN);
        assert_eq!(history[0].text, "m10");
        assert_eq!(history[49].text, "m59");
        assert_eq!(history[49].id, 60);
    }

    #[test]
    fn count_increments() {
        testing::reset();
        assert_eq!(call("ann", "chat/count", "[]").unwrap(), "1");
        assert_eq!(call("bob", "chat/count", "[]").unwrap(), "2");
    }

    #[test]
    fn bad_text_is_validation() {
        testing::reset();
        for text in ["", "   ", &"x".repeat(MAX_TEXT_CHARS + 1)] {
            let args = tenantry_sdk::serde_json::json!(["lobby", text]).to_string();
            let err = call("ann", "chat/send", &args).unwrap_err();
            assert_eq!(err.code, "VALIDATION");
            assert_eq!(err.issues.unwrap()[0].path, "args[1]");
        }
        let ok = tenantry_sdk::serde_json::json!(["lobby", "é".repeat(MAX_TEXT_CHARS)]);
        assert!(call("ann", "chat/send", &ok.to_string()).is_ok());
        let err = call("ann", "chat/send", r#"["", "hi"]"#).unwrap_err();
        assert_eq!(err.issues.unwrap()[0].path, "args[0]");
        let err = call("ann", "chat/send", r#"["lobby"]"#).unwrap_err();
        assert_eq!(err.code, "VALIDATION");
        assert!(testing::take_published().len() == 1);
    }

    #[test]
    fn authenticate_uses_query_or_guest_counter() {
        testing::reset();
        let user = Chat::authenticate(&request(&[("user", "ann")])).unwrap();
        assert_eq!(user.map(|u| u.id), Some("ann".to_owned()));
        let g1 = Chat::authenticate(&request(&[])).unwrap().unwrap();
        let g2 = Chat::authenticate(&request(&[("user", "")]))
            .unwrap()
            .unwrap();
        assert_eq!((g1.id.as_str(), g2.id.as_str()), ("guest-1", "guest-2"));
    }

    #[test]
    fn gate_allows_rooms_only_and_joins_their_presence() {
        testing::reset();
        let ctx = testing::ctx(Some("ann"));
        assert!(Chat::authorize_subscribe(&ctx, "room:lobby").is_ok());
        assert_eq!(
            Chat::authorize_subscribe(&ctx, "lobby").unwrap_err().code,
            "FORBIDDEN"
        );
        assert_eq!(
            testing::take_presence(),
            [(
                "room:lobby".to_owned(),
                Some(tenantry_sdk::serde_json::json!({"name": "ann"}))
            )]
        );
    }

    #[test]
    fn activity_topics_are_open_and_hear_presence_events() {
        testing::reset();
        let ctx = testing::ctx(Some("ann"));
        assert!(Chat::authorize_subscribe(&ctx, "activity:lobby").is_ok());
        assert!(testing::take_presence().is_empty(), "no presence there");
        Chat::on_presence(&[
            PresenceEvent::UserOnline {
                topic: "room:lobby".into(),
                user: "ann".into(),
            },
            PresenceEvent::TopicOccupied {
                topic: "room:lobby".into(),
            },
            PresenceEvent::UserOffline {
                topic: "room:lobby".into(),
                user: "bob".into(),
            },
            PresenceEvent::UserOffline {
                topic: "elsewhere".into(),
                user: "cy".into(),
            },
        ])
        .unwrap();
        let published: Vec<(String, String, String)> = testing::take_published()
            .into_iter()
            .map(|p| {
                (
                    p.topic,
                    p.event,
                    p.data["user"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            published,
            [
                ("activity:lobby".into(), "online".into(), "ann".into()),
                ("activity:lobby".into(), "offline".into(), "bob".into()),
            ]
        );
    }

    #[test]
    fn unknown_path() {
        assert_eq!(
            call("ann", "chat/nope", "[]").unwrap_err().code,
            "NOT_FOUND"
        );
    }
}
