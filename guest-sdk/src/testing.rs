//! Unit-test plugins natively (`cargo test` on your machine, no host needed).
//!
//! Outside WebAssembly the SDK's host services are an in-memory stand-in, one
//! per test thread: [`crate::Kv`] works (with TTLs and `incr`), `publish`
//! records what was published, [`crate::groups`] keeps its groups (the
//! calling connection is `test-connection`, as in [`ctx`]) and records what
//! was published to them, the log keeps its entries, and [`crate::sql`]
//! answers with the handler given to [`set_sql`]. These functions
//! look at and reset that state. They do not exist in a `wasm32` build.
//!
//! ```
//! use tenantry_sdk::{testing, Ctx, LiveError, Router};
//!
//! fn shout(ctx: &Ctx, (text,): (String,)) -> Result<(), LiveError> {
//!     ctx.publish("room:lobby", "shout", &text.to_uppercase())?;
//!     Ok(())
//! }
//!
//! testing::reset();
//! let router = Router::new().live("room/shout", shout);
//! let ctx = testing::ctx(Some("ann"));
//! router.call(&ctx, "room/shout", r#"["hi"]"#).unwrap();
//! let published = testing::take_published();
//! assert_eq!(published[0].topic, "room:lobby");
//! assert_eq!(published[0].data, "HI");
//! ```

use crate::ctx::{Ctx, User};
use crate::error::Error;
use crate::groups::{Joined, Role};
use crate::host::imp::STATE;
use crate::log::Level;
use crate::sql::{Outcome, SqlError, SqlValue};

/// One event published through the stand-in host.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The topic it went to.
    pub topic: String,
    /// The event name.
    pub event: String,
    /// The data, parsed back from JSON.
    pub data: serde_json::Value,
}

/// One event published to a broadcast group through the stand-in host
/// ([`crate::groups::publish`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPublished {
    /// The group it went to.
    pub group: String,
    /// The event name.
    pub event: String,
    /// The data, parsed back from JSON.
    pub data: serde_json::Value,
    /// The role it was sent to, or `None` for every member.
    pub role: Option<Role>,
}

/// Forget everything this thread's stand-in host holds: keys, published
/// events, groups, log entries, the SQL handler and the statements run.
pub fn reset() {
    STATE.with_borrow_mut(|s| *s = Default::default());
    crate::sql::imp::SQL.with_borrow_mut(|s| *s = Default::default());
    crate::jobs::imp::JOBS.with_borrow_mut(|s| *s = Default::default());
    crate::schedule::imp::SCHEDULES.with_borrow_mut(std::collections::BTreeMap::clear);
    crate::notify::imp::NOTIFY.with_borrow_mut(|s| *s = Default::default());
    crate::tasks::imp::TASKS.with_borrow_mut(|s| *s = Default::default());
}

/// Settle task `id` of this thread's stand-in ([`crate::tasks`]):
/// committed with `Ok(result JSON)`, or failed with `Err(error)`. `false`
/// if there is no such task.
pub fn settle_task(id: &str, outcome: Result<String, String>) -> bool {
    crate::tasks::imp::settle(id, outcome)
}

/// Take (and clear) the jobs enqueued so far on this thread through
/// [`crate::jobs::enqueue`]: `(queue, payload, options)`. Ids count from 1
/// per thread (after [`reset`]).
pub fn take_enqueued() -> Vec<(String, serde_json::Value, crate::jobs::Options)> {
    crate::jobs::imp::JOBS.with_borrow_mut(|s| std::mem::take(&mut s.enqueued))
}

/// Answer every [`crate::sql`] statement on this thread with `handler`
/// (the SQL text and parameters → the rows and affected count, or an
/// error). Without one, SQL fails `unavailable`, as on a host without
/// `[postgres]`. A [`crate::sql::transaction`] calls it once per statement
/// and stops at the first error (the stand-in rolls nothing back).
pub fn set_sql(handler: impl FnMut(&str, &[SqlValue]) -> Result<Outcome, SqlError> + 'static) {
    crate::sql::imp::SQL.with_borrow_mut(|s| s.handler = Some(Box::new(handler)));
}

/// Take (and clear) the SQL statements run so far on this thread, with
/// their parameters.
pub fn take_sql() -> Vec<(String, Vec<SqlValue>)> {
    crate::sql::imp::SQL.with_borrow_mut(|s| std::mem::take(&mut s.ran))
}

/// Take (and clear) the events published so far on this thread.
pub fn take_published() -> Vec<Published> {
    STATE.with_borrow_mut(|s| std::mem::take(&mut s.published))
}

/// Take (and clear) the presence joins (`Some(data)`) and leaves (`None`)
/// asked for so far on this thread, with their topics.
pub fn take_presence() -> Vec<(String, Option<serde_json::Value>)> {
    STATE.with_borrow_mut(|s| std::mem::take(&mut s.presence))
}

/// Take (and clear) the events published to groups so far on this thread.
pub fn take_group_published() -> Vec<GroupPublished> {
    STATE.with_borrow_mut(|s| std::mem::take(&mut s.group_published))
}

/// Make another connection, `connection_id`, a member of group `name` with
/// `role`, as [`crate::groups::join`] does for the calling connection
/// (`test-connection`): to test a plugin against a group others are in
/// (full groups, role-filtered publishes, member lists).
pub fn join_group_as(name: &str, connection_id: &str, role: Role) -> Result<Joined, Error> {
    crate::host::imp::groups_join_as(connection_id, name, role)
}

/// Take (and clear) the log entries written so far on this thread.
pub fn take_logs() -> Vec<(Level, String)> {
    STATE.with_borrow_mut(|s| std::mem::take(&mut s.logs))
}

/// A call context for a user with this id (or anonymous), with fixed
/// connection and request ids.
pub fn ctx(user: Option<&str>) -> Ctx {
    Ctx::new(user.map(User::new), "test-connection", "test-request")
}

/// The tables given to [`crate::notify::install_trigger`] on this thread,
/// in order, each once.
pub fn notify_triggers() -> Vec<String> {
    crate::notify::imp::NOTIFY.with_borrow(|s| s.triggers.clone())
}

/// Take (and clear) the payloads sent with [`crate::notify::send`] on
/// this thread.
pub fn take_notify_sent() -> Vec<serde_json::Value> {
    crate::notify::imp::NOTIFY.with_borrow_mut(|s| std::mem::take(&mut s.sent))
}
