//! The [`Router`]: `live()` handlers registered under `module/fn` paths.

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ctx::Ctx;
use crate::error::{LiveError, ValidationIssue};

/// A type-erased handler: context + decoded `args` array → JSON result.
type Handler = Box<dyn Fn(&Ctx, Value) -> Result<String, LiveError> + Send + Sync>;

/// The plugin's `live()` handlers, each under a svelte-realtime path such as
/// `"chat/send"`.
///
/// A handler is an ordinary function `fn(&Ctx, A) -> Result<R, LiveError>`
/// where `A` is deserialized from the call's JSON `args` array (a tuple such
/// as `(String, String)` for `["lobby", "hi"]`, `(T,)` for one argument, `()`
/// for `[]`, or a `#[derive(Deserialize)]` struct whose fields are read in
/// order) and `R` is serialized to JSON as the result.
///
/// [`Router::call`] answers an unknown path with `NOT_FOUND` and arguments
/// that do not fit `A` with `VALIDATION`, one issue naming the argument
/// (`args[1]`, `args[0].text`, or `args` for a wrong count).
///
/// ```
/// use tenantry_sdk::{Ctx, LiveError, Router};
///
/// fn add(_ctx: &Ctx, (a, b): (i64, i64)) -> Result<i64, LiveError> {
///     Ok(a + b)
/// }
///
/// let router = Router::new()
///     .live("math/add", add)
///     .live("math/zero", |_ctx: &Ctx, (): ()| Ok(0));
/// let ctx = Ctx::new(None, "conn-1", "req-1");
/// assert_eq!(router.call(&ctx, "math/add", "[2, 3]").unwrap(), "5");
/// assert_eq!(router.call(&ctx, "math/zero", "[]").unwrap(), "0");
/// assert_eq!(router.call(&ctx, "math/nope", "[]").unwrap_err().code, "NOT_FOUND");
/// assert_eq!(router.call(&ctx, "math/add", r#"[2, "x"]"#).unwrap_err().code, "VALIDATION");
/// ```
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
}

/// One registered handler. `key` is [`path_key`] of `path`: a fresh
/// instance builds the whole router for its one call, so registering and
/// looking up compare this number first and the strings only when it is
/// equal (no quadratic string comparisons as the plugin grows).
struct Route {
    key: u64,
    path: Cow<'static, str>,
    handler: Handler,
}

/// FNV-1a of `path`: cheap to compute for short paths, and different for
/// almost every pair of different paths.
fn path_key(path: &str) -> u64 {
    path.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("paths", &self.paths().collect::<Vec<_>>())
            .finish()
    }
}

/// Whether `path` matches svelte-realtime's `^[a-zA-Z0-9_-]+(/[a-zA-Z0-9_-]+)+$`.
pub fn is_valid_path(path: &str) -> bool {
    let mut segments = 1;
    let mut segment_empty = true;
    for b in path.bytes() {
        if b == b'/' {
            if segment_empty {
                return false;
            }
            segments += 1;
            segment_empty = true;
        } else if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            segment_empty = false;
        } else {
            return false;
        }
    }
    !segment_empty && segments >= 2
}

/// `args` followed by the serde path of the failing value, e.g. `args[0].text`.
fn issue_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::from("args");
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                out.push('.');
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                out.push('.');
                out.push_str(variant);
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}

/// Decode the `args` array into `A`, or a `VALIDATION` error naming the
/// failing argument. An empty array also decodes as `null`, so `()` (and
/// `Option<T>`) handlers accept `[]`.
pub(crate) fn decode_args<A: DeserializeOwned>(args: Value) -> Result<A, LiveError> {
    let empty = matches!(&args, Value::Array(items) if items.is_empty());
    match serde_path_to_error::deserialize::<_, A>(args) {
        Ok(value) => Ok(value),
        Err(err) => {
            if empty && let Ok(value) = serde_json::from_value::<A>(Value::Null) {
                return Ok(value);
            }
            let path = issue_path(err.path());
            let message = err.into_inner().to_string();
            Err(LiveError::validation(vec![ValidationIssue::new(
                path, message,
            )]))
        }
    }
}

impl Router {
    /// An empty router: every path is `NOT_FOUND`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `handler` under `path` (`module/fn`, e.g. `"chat/send"`).
    ///
    /// # Panics
    ///
    /// If `path` is not a valid svelte-realtime path
    /// (`^[a-zA-Z0-9_-]+(/[a-zA-Z0-9_-]+)+$`) or is already registered. Both
    /// are mistakes in the plugin's code, found by its first test.
    pub fn live<A, R, F>(mut self, path: impl Into<Cow<'static, str>>, handler: F) -> Self
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(&Ctx, A) -> Result<R, LiveError> + Send + Sync + 'static,
    {
        let path = path.into();
        assert!(
            is_valid_path(&path),
            "tenantry-sdk: `{path}` is not a valid live path (expected `module/fn`)"
        );
        let key = path_key(&path);
        assert!(
            !self.routes.iter().any(|r| r.key == key && r.path == path),
            "tenantry-sdk: live path `{path}` is registered twice"
        );
        let erased: Handler = Box::new(move |ctx, args| {
            let args = decode_args::<A>(args)?;
            let result = handler(ctx, args)?;
            serde_json::to_string(&result)
                .map_err(|_| LiveError::internal("Failed to encode the result"))
        });
        self.routes.push(Route {
            key,
            path,
            handler: erased,
        });
        self
    }

    /// The registered paths, in registration order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| r.path.as_ref())
    }

    /// Serve one call as the host does: `args_json` must be a JSON array.
    /// Returns the handler's result as JSON text.
    ///
    /// Errors: unknown `path` → `NOT_FOUND`; `args_json` not a JSON array →
    /// `INVALID_REQUEST`; arguments that do not decode → `VALIDATION`; else
    /// whatever the handler returned.
    pub fn call(&self, ctx: &Ctx, path: &str, args_json: &str) -> Result<String, LiveError> {
        let key = path_key(path);
        let Some(route) = self.routes.iter().find(|r| r.key == key && r.path == path) else {
            return Err(LiveError::not_found(format!("Unknown RPC path: {path}")));
        };
        let args: Value = serde_json::from_str(args_json)
            .map_err(|_| LiveError::invalid_request("args is not valid JSON"))?;
        if !args.is_array() {
            return Err(LiveError::invalid_request("args must be a JSON array"));
        }
        (route.handler)(ctx, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn ctx() -> Ctx {
        Ctx::new(None, "c", "r")
    }

    #[derive(Deserialize, Serialize)]
    struct Msg {
        room: String,
        text: String,
    }

    fn router() -> Router {
        Router::new()
            .live("t/echo", |_: &Ctx, (x,): (Value,)| Ok(x))
            .live("t/pair", |_: &Ctx, (a, b): (String, u32)| {
                Ok(format!("{a}{b}"))
            })
            .live("t/none", |_: &Ctx, (): ()| Ok(Value::Null))
            .live("t/struct", |_: &Ctx, m: Msg| Ok(m))
            .live("t/nested", |_: &Ctx, (m,): (Msg,)| Ok(m.text))
            .live("t/fail", |_: &Ctx, (): ()| -> Result<(), LiveError> {
                Err(LiveError::forbidden("nope"))
            })
    }

    fn issue(err: &LiveError) -> (&str, &str) {
        assert_eq!(err.code, "VALIDATION", "{err:?}");
        let issues = err.issues.as_ref().expect("issues");
        assert_eq!(issues.len(), 1);
        (issues[0].path.as_str(), issues[0].message.as_str())
    }

    #[test]
    fn dispatches_by_path() {
        let r = router();
        assert_eq!(
            r.call(&ctx(), "t/echo", r#"[{"a":[1,2]}]"#).unwrap(),
            r#"{"a":[1,2]}"#
        );
        assert_eq!(r.call(&ctx(), "t/pair", r#"["x", 7]"#).unwrap(), r#""x7""#);
        assert_eq!(r.call(&ctx(), "t/none", "[]").unwrap(), "null");
        assert_eq!(
            r.call(&ctx(), "t/struct", r#"["lobby","hi"]"#).unwrap(),
            r#"{"room":"lobby","text":"hi"}"#
        );
        assert_eq!(
            r.call(&ctx(), "t/fail", "[]").unwrap_err().code,
            "FORBIDDEN"
        );
    }

    #[test]
    fn unknown_path_is_not_found() {
        let err = router().call(&ctx(), "t/missing", "[]").unwrap_err();
        assert_eq!(err.code, "NOT_FOUND");
        assert!(err.message.contains("t/missing"));
    }

    #[test]
    fn non_array_args_are_invalid_request() {
        let r = router();
        assert_eq!(
            r.call(&ctx(), "t/none", "{}").unwrap_err().code,
            "INVALID_REQUEST"
        );
        assert_eq!(
            r.call(&ctx(), "t/none", "[").unwrap_err().code,
            "INVALID_REQUEST"
        );
    }

    #[test]
    fn wrong_type_names_the_argument() {
        let err = router()
            .call(&ctx(), "t/pair", r#"["x", "y"]"#)
            .unwrap_err();
        let (path, message) = issue(&err);
        assert_eq!(path, "args[1]");
        assert!(message.contains("expected u32"), "{message}");
    }

    #[test]
    fn nested_field_path() {
        let err = router()
            .call(&ctx(), "t/nested", r#"[{"room":"a","text":5}]"#)
            .unwrap_err();
        let (path, message) = issue(&err);
        assert_eq!(path, "args[0].text");
        assert!(message.contains("expected a string"), "{message}");
    }

    #[test]
    fn wrong_count_is_validation_on_args() {
        let r = router();
        let err = r.call(&ctx(), "t/pair", r#"["x"]"#).unwrap_err();
        let (path, message) = issue(&err);
        assert_eq!(path, "args");
        assert!(message.contains("invalid length"), "{message}");
        let err = r.call(&ctx(), "t/pair", r#"["x", 1, 2]"#).unwrap_err();
        assert_eq!(err.code, "VALIDATION");
        let err = r.call(&ctx(), "t/none", r#"[1]"#).unwrap_err();
        assert_eq!(err.code, "VALIDATION");
        let err = r.call(&ctx(), "t/echo", "[]").unwrap_err();
        assert_eq!(err.code, "VALIDATION");
    }

    #[test]
    fn path_validation() {
        assert!(is_valid_path("chat/send"));
        assert!(is_valid_path("a-b/c_d/e1"));
        for bad in [
            "chat",
            "/chat",
            "chat/",
            "chat//send",
            "chat/se nd",
            "",
            "ch.at/x",
            "a/b/",
            "/",
            "a/é",
        ] {
            assert!(!is_valid_path(bad), "{bad}");
        }
    }

    /// The specification `is_valid_path` implements, written the obvious way.
    fn matches_path_regex(path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').collect();
        segments.len() >= 2
            && segments.iter().all(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
    }

    proptest::proptest! {
        #[test]
        fn path_validation_matches_the_regex(path in "[a-c_/.é-]{0,12}") {
            proptest::prop_assert_eq!(is_valid_path(&path), matches_path_regex(&path));
        }
    }

    #[test]
    fn many_routes_each_dispatch_to_their_own_handler() {
        let mut r = Router::new();
        for i in 0..200u32 {
            r = r.live(format!("m/f{i}"), move |_: &Ctx, (): ()| Ok(i));
        }
        for i in [0u32, 7, 199] {
            assert_eq!(
                r.call(&ctx(), &format!("m/f{i}"), "[]").unwrap(),
                i.to_string()
            );
        }
        assert_eq!(
            r.call(&ctx(), "m/f200", "[]").unwrap_err().code,
            "NOT_FOUND"
        );
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn duplicate_path_panics() {
        let _ = Router::new()
            .live("a/b", |_: &Ctx, (): ()| Ok(()))
            .live("a/b", |_: &Ctx, (): ()| Ok(()));
    }

    #[test]
    #[should_panic(expected = "not a valid live path")]
    fn invalid_path_panics() {
        let _ = Router::new().live("nope", |_: &Ctx, (): ()| Ok(()));
    }

    #[test]
    fn paths_in_order() {
        let r = router();
        assert_eq!(r.paths().next(), Some("t/echo"));
        assert_eq!(r.paths().count(), 6);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Any JSON value (bounded depth and size).
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            // Short decimals: exact without serde_json's `float_roundtrip`
            // (which only plugin builds enable).
            (any::<i32>(), 0i32..7).prop_map(|(m, e)| Value::from(f64::from(m) / 10f64.powi(e))),
            ".{0,20}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn router() -> Router {
        Router::new()
            .live("p/echo", |_: &Ctx, (x,): (Value,)| Ok(x))
            .live("p/typed", |_: &Ctx, (a, b): (String, Option<Vec<u32>>)| {
                Ok((a, b))
            })
    }

    proptest! {
        /// One argument of any JSON value comes back unchanged.
        #[test]
        fn echo_round_trips(x in json()) {
            let args = Value::Array(vec![x.clone()]).to_string();
            let out = router().call(&Ctx::new(None, "c", "r"), "p/echo", &args).unwrap();
            prop_assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), x);
        }

        /// Any args array either decodes or is a VALIDATION error with one
        /// issue under `args`; never a panic or another code.
        #[test]
        fn typed_args_decode_or_validate(items in prop::collection::vec(json(), 0..4)) {
            let args = Value::Array(items).to_string();
            match router().call(&Ctx::new(None, "c", "r"), "p/typed", &args) {
                Ok(_) => {}
                Err(e) => {
                    prop_assert_eq!(e.code.as_str(), "VALIDATION");
                    let issues = e.issues.unwrap();
                    prop_assert_eq!(issues.len(), 1);
                    prop_assert!(issues[0].path.starts_with("args"));
                }
            }
        }

        /// Arbitrary text as args never panics: INVALID_REQUEST, VALIDATION or a result.
        #[test]
        fn arbitrary_args_text_never_panics(text in ".{0,64}") {
            if let Err(e) = router().call(&Ctx::new(None, "c", "r"), "p/typed", &text) {
                prop_assert!(e.code == "INVALID_REQUEST" || e.code == "VALIDATION", "{}", e.code);
            }
        }
    }
}
