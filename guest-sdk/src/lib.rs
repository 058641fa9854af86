//! # tenantry-sdk: write Tenantry plugins in plain Rust
//!
//! A Tenantry plugin is a WebAssembly component that serves one tenant's
//! `live()` RPC calls, decides who may connect and which topics they may
//! subscribe to, and publishes events. This crate is all a plugin needs: the
//! WIT bindings are generated and exported for you.
//!
//! * Handlers are ordinary functions `fn(&Ctx, Args) -> Result<T, LiveError>`
//!   where `Args` is deserialized from the call's JSON `args` array (a tuple
//!   or a `Deserialize` struct) and `T` is any `Serialize` type. Register them
//!   under svelte-realtime paths (`"chat/send"`) on a [`Router`].
//! * An unknown path answers `NOT_FOUND`; arguments that do not fit answer
//!   `VALIDATION` with an issue naming the argument (`args[1]`).
//! * [`Ctx`] gives the caller ([`Ctx::user`]), the connection and request ids,
//!   [`Ctx::publish`], and [`Ctx::kv`], the tenant's key-value store.
//!   [`log`] writes to the host's log. [`presence`], [`groups`] (broadcast
//!   groups with roles), [`replay`], [`ratelimit`], [`lock`],
//!   [`idempotency`] and [`sql`] (the tenant's own Postgres schema) are the
//!   other host services; [`jobs`] (background jobs, run by
//!   [`Plugin::on_job`]), [`schedule`] (recurring jobs) and [`notify`] (the
//!   tenant's table changes to subscribers) need `[postgres]`.
//! * Host failures are [`Error`]; `?` turns them into a [`LiveError`] with the
//!   standard code (`RESOURCE_EXHAUSTED`, `SERVICE_UNAVAILABLE`, ...).
//! * The [`Plugin`] hooks: [`Plugin::authenticate`] (default: everyone
//!   anonymous) and [`Plugin::authorize_subscribe`] (default: deny every
//!   topic, the gate fails closed).
//!
//! ## A complete plugin
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "notes"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! tenantry-sdk = { path = "../tenantry/guest-sdk" }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use serde::Serialize;
//! use tenantry_sdk::{
//!     ConnectRequest, Ctx, LiveError, Plugin, Router, User, ValidationIssue, export_plugin,
//! };
//!
//! #[derive(Serialize)]
//! struct Note {
//!     id: i64,
//!     author: String,
//!     text: String,
//! }
//!
//! /// `notes/add` with args `[board, text]`: store, publish, return the id.
//! fn add(ctx: &Ctx, (board, text): (String, String)) -> Result<i64, LiveError> {
//!     let author = ctx.user_id().ok_or(LiveError::unauthenticated("log in first"))?;
//!     if text.trim().is_empty() {
//!         return Err(LiveError::validation(vec![ValidationIssue::new(
//!             "args[1]",
//!             "text must not be empty",
//!         )]));
//!     }
//!     let id = ctx.kv().incr("notes:next-id", 1)?; // a host error becomes a LiveError
//!     let note = Note { id, author: author.to_owned(), text };
//!     ctx.kv().set(&format!("note:{board}:{id}"), &note, None)?;
//!     ctx.publish(&format!("board:{board}"), "added", &note)?;
//!     tenantry_sdk::log::info(&format!("note {id} added to {board}"));
//!     Ok(id)
//! }
//!
//! /// `notes/count` with args `[]`.
//! fn count(ctx: &Ctx, (): ()) -> Result<i64, LiveError> {
//!     Ok(ctx.kv().get::<i64>("notes:next-id")?.unwrap_or(0))
//! }
//!
//! struct Notes;
//!
//! impl Plugin for Notes {
//!     fn router() -> Router {
//!         Router::new().live("notes/add", add).live("notes/count", count)
//!     }
//!
//!     fn authenticate(request: &ConnectRequest) -> Result<Option<User>, LiveError> {
//!         match request.query("user") {
//!             Some(name) => Ok(Some(User::new(name))),
//!             None => Err(LiveError::unauthenticated("add ?user=NAME")),
//!         }
//!     }
//!
//!     fn authorize_subscribe(_ctx: &Ctx, topic: &str) -> Result<(), LiveError> {
//!         if topic.starts_with("board:") {
//!             Ok(())
//!         } else {
//!             Err(LiveError::forbidden("only board:* topics"))
//!         }
//!     }
//! }
//!
//! export_plugin!(Notes);
//!
//! // Natively (`cargo test`), the host services are an in-memory stand-in:
//! # fn main() {
//! tenantry_sdk::testing::reset();
//! let ctx = tenantry_sdk::testing::ctx(Some("ann"));
//! let router = Notes::router();
//! assert_eq!(router.call(&ctx, "notes/add", r#"["b1", "hello"]"#).unwrap(), "1");
//! assert_eq!(router.call(&ctx, "notes/count", "[]").unwrap(), "1");
//! let err = router.call(&ctx, "notes/add", r#"["b1", " "]"#).unwrap_err();
//! assert_eq!(err.code, "VALIDATION");
//! assert_eq!(tenantry_sdk::testing::take_published()[0].topic, "board:b1");
//! # }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the plugin is
//! `target/wasm32-wasip2/release/notes.wasm`. `docs/writing-plugins.md` in the
//! Tenantry repository walks through deploying and calling it.

mod ctx;
mod error;
pub mod groups;
mod host;
pub mod idempotency;
pub mod jobs;
pub mod kv;
pub mod lock;
pub mod log;
pub mod notify;
mod plugin;
pub mod presence;
pub mod ratelimit;
pub mod replay;
mod router;
pub mod schedule;
pub mod sql;
pub mod tasks;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use ctx::{ConnectRequest, Ctx, User, kv, publish};
pub use error::{Error, LiveError, ValidationIssue, codes};
pub use kv::Kv;
pub use plugin::Plugin;
pub use router::{Router, is_valid_path};

/// Re-exported so plugins can use `tenantry_sdk::serde_json::json!` without
/// another dependency.
pub use serde_json;

/// The generated WIT bindings (`tenantry:plugin@0.1.0`, world `plugin`).
/// Internal: plugins use the types above.
#[doc(hidden)]
#[allow(missing_docs, clippy::all, unsafe_op_in_unsafe_fn)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        default_bindings_module: "tenantry_sdk::bindings",
    });
}

/// Internals used by [`export_plugin!`]; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::plugin::Adapter;
}

/// Export a [`Plugin`] as the component's `tenantry:plugin/handler`.
///
/// Invoke it once, at the root of the plugin crate (a `cdylib`), with the type
/// that implements [`Plugin`]:
///
/// ```ignore
/// tenantry_sdk::export_plugin!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            type TenantryPluginExport = $crate::__private::Adapter<$plugin>;
    $crate::__export_plugin_impl!(TenantryPluginExport with_types_in $crate::bindings);
        };
    };
}
