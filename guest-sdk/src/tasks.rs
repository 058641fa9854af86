//! Named, idempotent, fenced tasks (hosts with `[postgres]`; the seeds'
//! `createTaskRunner`): [`start`] records a task once per `(name,
//! idempotency key)`; some host of the fleet runs it through the plugin's
//! [`Plugin::on_task`](crate::Plugin::on_task) (for the names in
//! [`Plugin::TASKS`](crate::Plugin::TASKS)); [`wait`] (or [`run`], start
//! and wait) gets its result.
//!
//! - **Once per key.** Starting the same name and key again, from any host,
//!   returns the same task: running, or settled with its result (kept a
//!   week by default).
//! - **Fenced.** One runner at a time owns a task; each attempt has a
//!   fencing token ([`Task::fence`], strictly increasing per task) and a
//!   result commits only if its attempt still owns the task.
//! - **Taken over.** A task whose host died (its heartbeat stopped) runs
//!   again on another host with the next attempt, after the fence TTL.
//! - **Retried.** A failed attempt (an error, a trap, a timeout) runs again
//!   with exponential backoff until the task had its `max_attempts`
//!   (default 3); then it is failed.
//!
//! So an attempt may run more than once in the worst case (a host that
//! stalls past the fence TTL is cut off, but what it did before stays):
//! make handlers idempotent, e.g. with [`Task::idempotency_key`] and
//! [`Task::fence`].
//!
//! ```no_run
//! use std::time::Duration;
//! use tenantry_sdk::tasks::{self, Task};
//! use tenantry_sdk::{Ctx, LiveError, Plugin, Router};
//! use tenantry_sdk::serde_json::{Value, json};
//!
//! fn checkout(ctx: &Ctx, (order,): (String,)) -> Result<Value, LiveError> {
//!     // Charged once per order, however often the client retries.
//!     Ok(tasks::run("charge", &order, &json!({"order": order}), Duration::from_secs(3))?)
//! }
//!
//! struct Shop;
//! impl Plugin for Shop {
//!     fn router() -> Router {
//!         Router::new().live("shop/checkout", checkout)
//!     }
//!     const TASKS: &'static [&'static str] = &["charge"];
//!     fn on_task(task: &Task) -> Result<Value, LiveError> {
//!         let input: Value = task.input()?;
//!         Ok(json!({"charged": input["order"], "attempt": task.attempt}))
//!     }
//! }
//! ```
//!
//! Natively (unit tests) the stand-in keeps tasks in memory: see
//! [`crate::testing::settle_task`].

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, LiveError};

/// Error code of [`TaskError::UnknownTask`] as a [`LiveError`].
pub const UNKNOWN_TASK: &str = "UNKNOWN_TASK";
/// Error code of [`TaskError::InFlight`] as a [`LiveError`].
pub const TASK_IN_FLIGHT: &str = "TASK_IN_FLIGHT";
/// Error code of [`TaskError::Failed`] as a [`LiveError`].
pub const TASK_FAILED: &str = "TASK_FAILED";

/// One attempt of a task, as [`Plugin::on_task`](crate::Plugin::on_task)
/// gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Its id (unique in the tenant).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its idempotency key.
    pub idempotency_key: String,
    /// Its input as JSON text; decode it with [`Task::input`].
    pub input_json: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The attempts it may have.
    pub max_attempts: u32,
    /// This attempt's fencing token (strictly increasing per task).
    pub fence: u64,
    /// The request that started it, if it said.
    pub request_id: Option<String>,
}

impl Task {
    /// The input decoded as `T` (a `VALIDATION` error if it does not fit).
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, LiveError> {
        serde_json::from_str(&self.input_json).map_err(|e| {
            LiveError::validation(vec![crate::ValidationIssue::new("input", e.to_string())])
        })
    }

    /// Whether this is the task's last attempt (a failure fails it).
    pub fn last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting for a runner.
    Pending,
    /// A runner owns it.
    Running,
    /// Done, with its result.
    Committed,
    /// Out of attempts.
    Failed,
}

/// A task as [`start`] and [`get`] return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its idempotency key.
    pub idempotency_key: String,
    /// Its state.
    pub state: TaskState,
    /// Attempts made.
    pub attempt: u32,
    /// Attempts it may have.
    pub max_attempts: u32,
    /// Its result as JSON text, once committed.
    pub result_json: Option<String>,
    /// The last failed attempt's error.
    pub error: Option<String>,
    /// When it was started, ms since the Unix epoch.
    pub created_at_ms: u64,
}

impl TaskInfo {
    /// The result decoded as `T`, once committed (`None` before).
    pub fn result<T: DeserializeOwned>(&self) -> Option<Result<T, TaskError>> {
        self.result_json.as_deref().map(decode)
    }
}

/// Why a task call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// No task of that name: the active plugin does not run it
    /// (`UnknownTaskError`).
    #[error("no task of that name")]
    UnknownTask,
    /// The task is still pending or running (`TaskInFlightError`).
    #[error("the task is still in flight")]
    InFlight,
    /// The task failed, with its last attempt's error.
    #[error("the task failed: {0}")]
    Failed(String),
    /// No task with that id.
    #[error("no such task")]
    NotFound,
    /// A host failure (bad arguments, too many open tasks, no Postgres...).
    #[error(transparent)]
    Host(Error),
}

impl From<TaskError> for LiveError {
    /// `UNKNOWN_TASK`, `TASK_IN_FLIGHT` (retry later), `TASK_FAILED` with
    /// the task's error, `NOT_FOUND`, or the host error's usual mapping.
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::UnknownTask => LiveError::new(UNKNOWN_TASK, "No such task"),
            TaskError::InFlight => LiveError::new(TASK_IN_FLIGHT, "The task is still running"),
            TaskError::Failed(message) => LiveError::new(TASK_FAILED, message),
            TaskError::NotFound => LiveError::not_found("No such task"),
            TaskError::Host(e) => e.into(),
        }
    }
}

fn decode<T: DeserializeOwned>(json: &str) -> Result<T, TaskError> {
    serde_json::from_str(json).map_err(|e| TaskError::Host(Error::Decode(e.to_string())))
}

/// How [`start_with`] starts a task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Attempts before it fails (1-100; `None`: the host's default, 3).
    pub max_attempts: Option<u32>,
    /// The request that starts it (e.g. [`Ctx::request_id`](crate::Ctx::request_id)).
    pub request_id: Option<String>,
}

/// Start task `name` with idempotency key `key` and `input`, unless a task
/// of that name and key exists: that task then, as it is.
pub fn start(name: &str, key: &str, input: &impl Serialize) -> Result<TaskInfo, TaskError> {
    start_with(name, key, input, Options::default())
}

/// [`start`] with options.
pub fn start_with(
    name: &str,
    key: &str,
    input: &impl Serialize,
    options: Options,
) -> Result<TaskInfo, TaskError> {
    let json =
        serde_json::to_string(input).map_err(|e| TaskError::Host(Error::Encode(e.to_string())))?;
    imp::start(name, key, &json, options)
}

/// Wait up to `timeout` (the host caps it below the call's wall-clock
/// bound) for task `id` to settle: its result, decoded as `T`.
pub fn wait<T: DeserializeOwned>(id: &str, timeout: Duration) -> Result<T, TaskError> {
    decode(&imp::wait(id, timeout)?)
}

/// Task `id` as it is now; `None` if there is no such task.
pub fn get(id: &str) -> Result<Option<TaskInfo>, TaskError> {
    imp::get(id)
}

/// Start task `name` with `key` and `input` (or find it) and wait up to
/// `timeout` for its result (the seeds' `run`).
pub fn run<T: DeserializeOwned>(
    name: &str,
    key: &str,
    input: &impl Serialize,
    timeout: Duration,
) -> Result<T, TaskError> {
    let task = start(name, key, input)?;
    match task.state {
        TaskState::Committed => decode(task.result_json.as_deref().unwrap_or("null")),
        TaskState::Failed => Err(TaskError::Failed(task.error.unwrap_or_default())),
        TaskState::Pending | TaskState::Running => wait(&task.id, timeout),
    }
}

#[cfg(target_arch = "wasm32")]
pub(crate) mod imp {
    use std::time::Duration;

    use super::{Options, TaskError, TaskInfo, TaskState};
    use crate::bindings::tenantry::plugin::tasks as wit;

    fn error(e: wit::TaskError) -> TaskError {
        match e {
            wit::TaskError::UnknownTask => TaskError::UnknownTask,
            wit::TaskError::InFlight => TaskError::InFlight,
            wit::TaskError::Failed(m) => TaskError::Failed(m),
            wit::TaskError::NotFound => TaskError::NotFound,
            wit::TaskError::Host(h) => TaskError::Host(crate::jobs::imp::convert(h)),
        }
    }

    fn info(t: wit::TaskInfo) -> TaskInfo {
        TaskInfo {
            id: t.id,
            name: t.name,
            idempotency_key: t.idempotency_key,
            state: match t.state {
                wit::TaskState::Pending => TaskState::Pending,
                wit::TaskState::Running => TaskState::Running,
                wit::TaskState::Committed => TaskState::Committed,
                wit::TaskState::Failed => TaskState::Failed,
            },
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            result_json: t.result,
            error: t.error,
            created_at_ms: t.created_at_ms,
        }
    }

    pub fn start(
        name: &str,
        key: &str,
        input: &str,
        options: Options,
    ) -> Result<TaskInfo, TaskError> {
        let options = wit::StartOptions {
            max_attempts: options.max_attempts,
            request_id: options.request_id,
        };
        wit::start(name, key, input, &options)
            .map(info)
            .map_err(error)
    }

    pub fn wait(id: &str, timeout: Duration) -> Result<String, TaskError> {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        wit::wait(id, ms).map_err(error)
    }

    pub fn get(id: &str) -> Result<Option<TaskInfo>, TaskError> {
        wit::get(id).map(|t| t.map(info)).map_err(error)
    }
}

/// The native stand-in: tasks in memory, one per `(name, key)`, pending
/// until a test settles them ([`crate::testing::settle_task`]).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod imp {
    use std::cell::RefCell;
    use std::time::Duration;

    use super::{Options, TaskError, TaskInfo, TaskState};
    use crate::error::Error;

    /// The stand-in's tasks.
    #[derive(Default)]
    pub struct StandIn {
        pub tasks: Vec<TaskInfo>,
    }

    thread_local! {
        pub static TASKS: RefCell<StandIn> = RefCell::new(StandIn::default());
    }

    pub fn start(
        name: &str,
        key: &str,
        input: &str,
        options: Options,
    ) -> Result<TaskInfo, TaskError> {
        let valid = name.len() <= 64
            && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid
            || key.is_empty()
            || key.len() > 256
            || options.max_attempts.is_some_and(|n| n == 0 || n > 100)
            || serde_json::from_str::<serde_json::Value>(input).is_err()
        {
            return Err(TaskError::Host(Error::Invalid));
        }
        TASKS.with_borrow_mut(|s| {
            if let Some(t) = s
                .tasks
                .iter()
                .find(|t| t.name == name && t.idempotency_key == key)
            {
                return Ok(t.clone());
            }
            let task = TaskInfo {
                id: (s.tasks.len() + 1).to_string(),
                name: name.to_owned(),
                idempotency_key: key.to_owned(),
                state: TaskState::Pending,
                attempt: 0,
                max_attempts: options.max_attempts.unwrap_or(3),
                result_json: None,
                error: None,
                created_at_ms: 0,
            };
            s.tasks.push(task.clone());
            Ok(task)
        })
    }

    pub fn wait(id: &str, _timeout: Duration) -> Result<String, TaskError> {
        let task = get(id)?.ok_or(TaskError::NotFound)?;
        match task.state {
            TaskState::Committed => Ok(task.result_json.unwrap_or_else(|| "null".into())),
            TaskState::Failed => Err(TaskError::Failed(task.error.unwrap_or_default())),
            TaskState::Pending | TaskState::Running => Err(TaskError::InFlight),
        }
    }

    pub fn get(id: &str) -> Result<Option<TaskInfo>, TaskError> {
        Ok(TASKS.with_borrow(|s| s.tasks.iter().find(|t| t.id == id).cloned()))
    }

    /// Settle task `id`: committed with `result` (JSON) or failed with the error.
    pub fn settle(id: &str, outcome: Result<String, String>) -> bool {
        TASKS.with_borrow_mut(|s| {
            let Some(t) = s.tasks.iter_mut().find(|t| t.id == id) else {
                return false;
            };
            match outcome {
                Ok(result) => {
                    t.state = TaskState::Committed;
                    t.result_json = Some(result);
                }
                Err(error) => {
                    t.state = TaskState::Failed;
                    t.error = Some(error);
                }
            }
            true
        })
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn one_task_per_key_and_settled_results() {
        crate::testing::reset();
        let t = start("charge", "o1", &serde_json::json!({"n": 1})).unwrap();
        assert_eq!(t.state, TaskState::Pending);
        assert_eq!(start("charge", "o1", &2).unwrap().id, t.id);
        assert_ne!(start("charge", "o2", &2).unwrap().id, t.id);
        assert_eq!(
            run::<u32>("charge", "o1", &1, Duration::from_millis(1)),
            Err(TaskError::InFlight)
        );
        assert!(crate::testing::settle_task(&t.id, Ok("7".into())));
        assert_eq!(run::<u32>("charge", "o1", &1, Duration::ZERO), Ok(7));
        assert_eq!(wait::<u32>(&t.id, Duration::ZERO), Ok(7));
        assert_eq!(get(&t.id).unwrap().unwrap().result::<u32>(), Some(Ok(7)));
        assert_eq!(wait::<u32>("99", Duration::ZERO), Err(TaskError::NotFound));
        assert!(matches!(
            start("1bad", "k", &1),
            Err(TaskError::Host(Error::Invalid))
        ));
        let live: LiveError = TaskError::Failed("boom".into()).into();
        assert_eq!(
            (live.code.as_str(), live.message.as_str()),
            (TASK_FAILED, "boom")
        );
    }

    #[test]
    fn task_input_decodes() {
        let task = Task {
            id: "7".into(),
            name: "t".into(),
            idempotency_key: "k".into(),
            input_json: r#"{"n":3}"#.into(),
            attempt: 2,
            max_attempts: 2,
            fence: 4,
            request_id: None,
        };
        let v: serde_json::Value = task.input().unwrap();
        assert_eq!(v["n"], 3);
        assert!(task.last_attempt());
        assert_eq!(task.input::<String>().unwrap_err().code, "VALIDATION");
    }
}
