//! What a handler knows about its call: [`Ctx`], [`User`], and the
//! [`ConnectRequest`] given to `authenticate`.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::host;
use crate::kv::Kv;

/// Who is on the other end of a connection, as decided by
/// [`crate::Plugin::authenticate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Stable user id chosen by the plugin (e.g. a JWT `sub`).
    pub id: String,
    /// Extra attributes, a JSON object (`{}` when there are none).
    pub attributes: serde_json::Value,
}

impl User {
    /// A user with this id and no attributes.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            attributes: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// The same user with these attributes (should be a JSON object, e.g.
    /// `serde_json::json!({"role": "admin"})`).
    pub fn with_attributes(mut self, attributes: serde_json::Value) -> Self {
        self.attributes = attributes;
        self
    }
}

/// The HTTP upgrade request of a new WebSocket connection, as given to
/// [`crate::Plugin::authenticate`] (svelte-adapter-uws's `upgrade()` hook).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Request headers, names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Cookies parsed from the `cookie` header.
    pub cookies: Vec<(String, String)>,
    /// Query-string parameters, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// The peer address as the host sees it (`ip:port`).
    pub remote_address: String,
    /// The request path, e.g. `/t/acme/ws`.
    pub path: String,
}

fn first<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl ConnectRequest {
    /// The first header called `name` (matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first cookie called `name`.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        first(&self.cookies, name)
    }

    /// The first query parameter called `name` (already percent-decoded).
    pub fn query(&self, name: &str) -> Option<&str> {
        first(&self.query, name)
    }
}

/// Facts about the call being served, and the tenant's host services.
///
/// Every service is already scoped to the tenant that owns the plugin: topics
/// and keys are the tenant's own, and no call can reach another tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Ctx {
    user: Option<User>,
    connection_id: String,
    request_id: String,
}

impl Ctx {
    /// A context as the host would build it. Plugins get theirs from the
    /// host; this is for unit tests of handlers.
    pub fn new(
        user: Option<User>,
        connection_id: impl Into<String>,
        request_id: impl Into<String>,
    ) -> Self {
        Self {
            user,
            connection_id: connection_id.into(),
            request_id: request_id.into(),
        }
    }

    /// The connection's user, or `None` for an anonymous connection.
    pub fn user(&self) -> Option<&User> {
        self.user.as_ref()
    }

    /// The user's id, or `None` for an anonymous connection.
    pub fn user_id(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.id.as_str())
    }

    /// Host-assigned id of the WebSocket connection (the session id).
    pub fn connection_id(&self) -> &str {
        &self.connection_id
    }

    /// Host-assigned id of this request, unique per host process.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Publish `event` with `data` (serialized to JSON) to every subscriber
    /// of `topic` in this tenant. Same as [`crate::publish`].
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        event: &str,
        data: &T,
    ) -> Result<(), Error> {
        publish(topic, event, data)
    }

    /// The tenant's key-value store. Same as [`crate::kv()`].
    pub fn kv(&self) -> Kv {
        Kv::new()
    }
}

/// Publish `event` with `data` (serialized to JSON) to every subscriber of
/// `topic` in this tenant.
///
/// `topic` follows the wire rules (1-256 printable ASCII, no `"` or `\`, not
/// starting with `__`); a bad topic is [`Error::Invalid`]. Usable from any
/// hook; handlers usually call [`Ctx::publish`].
pub fn publish<T: Serialize + ?Sized>(topic: &str, event: &str, data: &T) -> Result<(), Error> {
    let json = serde_json::to_string(data).map_err(|e| Error::Encode(e.to_string()))?;
    host::publish(topic, event, &json)
}

/// The tenant's key-value store, usable from any hook (in handlers,
/// [`Ctx::kv`] reads better).
pub fn kv() -> Kv {
    Kv::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn connect_request_lookups() {
        let req = ConnectRequest {
            headers: pairs(&[("authorization", "Bearer t"), ("x-a", "1")]),
            cookies: pairs(&[("session", "abc")]),
            query: pairs(&[("user", "ann"), ("user", "bob")]),
            remote_address: "127.0.0.1:5000".into(),
            path: "/ws".into(),
        };
        assert_eq!(req.header("Authorization"), Some("Bearer t"));
        assert_eq!(req.cookie("session"), Some("abc"));
        assert_eq!(req.query("user"), Some("ann"));
        assert_eq!(req.query("nope"), None);
    }

    #[test]
    fn ctx_accessors() {
        let ctx = Ctx::new(Some(User::new("ann")), "c1", "r1");
        assert_eq!(ctx.user_id(), Some("ann"));
        assert_eq!(ctx.user().map(|u| u.attributes.is_object()), Some(true));
        assert_eq!(ctx.connection_id(), "c1");
        assert_eq!(ctx.request_id(), "r1");
        assert_eq!(Ctx::new(None, "c", "r").user(), None);
    }
}
