//! Background jobs (hosts with `[postgres]`; the seeds' `createJobQueue`):
//! [`enqueue`] puts a job on a queue of the tenant; some host of the fleet
//! later calls the plugin's [`Plugin::on_job`](crate::Plugin::on_job) with
//! it, for the queues listed in
//! [`Plugin::JOB_QUEUES`](crate::Plugin::JOB_QUEUES).
//!
//! Delivery is at least once: a job whose handler fails (an error, a trap,
//! a timeout) is retried with exponential backoff until it has had its
//! `max_attempts` (default 5), then it is *dead* until the operator
//! retries it; a job whose host died mid-run runs again after the
//! visibility timeout. Make handlers idempotent ([`Job::id`] and
//! [`Job::attempt`] help). Queue names match `^[a-zA-Z][a-zA-Z0-9_-]{0,63}$`;
//! payloads are JSON (at most 256 KiB by default).
//!
//! ```no_run
//! use tenantry_sdk::jobs::{self, Job};
//! use tenantry_sdk::{Ctx, LiveError, Plugin, Router};
//!
//! fn signup(_ctx: &Ctx, (email,): (String,)) -> Result<String, LiveError> {
//!     Ok(jobs::enqueue("welcome-mail", &email)?)
//! }
//!
//! struct App;
//! impl Plugin for App {
//!     fn router() -> Router {
//!         Router::new().live("users/signup", signup)
//!     }
//!     const JOB_QUEUES: &'static [&'static str] = &["welcome-mail"];
//!     fn on_job(job: &Job) -> Result<(), LiveError> {
//!         let email: String = job.payload()?;
//!         tenantry_sdk::log::info(&format!("mailing {email} (attempt {})", job.attempt));
//!         Ok(())
//!     }
//! }
//! ```
//!
//! Natively (unit tests) the stand-in records what was enqueued: see
//! [`crate::testing::take_enqueued`].

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, LiveError};

/// One job, as [`Plugin::on_job`](crate::Plugin::on_job) gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Its id (unique in the tenant).
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// Its payload as JSON text; decode it with [`Job::payload`].
    pub payload_json: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The attempts it may have.
    pub max_attempts: u32,
    /// When it was enqueued, ms since the Unix epoch.
    pub enqueued_at_ms: u64,
}

impl Job {
    /// The payload decoded as `T` (a `VALIDATION` error if it does not fit).
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, LiveError> {
        serde_json::from_str(&self.payload_json).map_err(|e| {
            LiveError::validation(vec![crate::ValidationIssue::new("payload", e.to_string())])
        })
    }

    /// Whether this is the job's last attempt (a failure makes it dead).
    pub fn last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

/// How [`enqueue_with`] enqueues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Run no earlier than this from now.
    pub delay: Option<Duration>,
    /// Attempts before the job is dead (1-100; `None`: the host's default, 5).
    pub max_attempts: Option<u32>,
}

/// Enqueue a job with `payload` (any `Serialize`) on `queue`; its id.
pub fn enqueue(queue: &str, payload: &impl Serialize) -> Result<String, Error> {
    enqueue_with(queue, payload, Options::default())
}

/// [`enqueue`] with a delay or a number of attempts.
pub fn enqueue_with(
    queue: &str,
    payload: &impl Serialize,
    options: Options,
) -> Result<String, Error> {
    let json = serde_json::to_string(payload).map_err(|e| Error::Encode(e.to_string()))?;
    imp::enqueue(queue, &json, options)
}

#[cfg(target_arch = "wasm32")]
pub(crate) mod imp {
    use super::Options;
    use crate::bindings::tenantry::plugin::jobs as wit;
    use crate::bindings::tenantry::plugin::types::HostError;
    use crate::error::Error;

    pub fn enqueue(queue: &str, payload: &str, options: Options) -> Result<String, Error> {
        let options = wit::EnqueueOptions {
            delay_ms: options
                .delay
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            max_attempts: options.max_attempts,
        };
        wit::enqueue(queue, payload, options).map_err(convert)
    }

    /// A WIT host error as the SDK's [`Error`].
    pub fn convert(e: HostError) -> Error {
        match e {
            HostError::AccessDenied => Error::AccessDenied,
            HostError::QuotaExceeded => Error::QuotaExceeded,
            HostError::Timeout => Error::Timeout,
            HostError::Unavailable => Error::Unavailable,
            HostError::TooLarge => Error::TooLarge,
            HostError::Invalid => Error::Invalid,
            HostError::RateLimited(retry_after_ms) => Error::RateLimited { retry_after_ms },
            HostError::Other(message) => Error::Other(message),
        }
    }
}

/// The native stand-in: records every enqueue.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod imp {
    use std::cell::RefCell;

    use super::Options;
    use crate::error::Error;

    /// One recorded enqueue.
    #[derive(Default)]
    pub struct StandIn {
        pub next_id: u64,
        pub enqueued: Vec<(String, serde_json::Value, Options)>,
    }

    thread_local! {
        pub static JOBS: RefCell<StandIn> = RefCell::new(StandIn::default());
    }

    pub fn enqueue(queue: &str, payload: &str, options: Options) -> Result<String, Error> {
        let valid = queue.len() <= 64
            && queue
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic())
            && queue
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid || options.max_attempts.is_some_and(|n| n == 0 || n > 100) {
            return Err(Error::Invalid);
        }
        let value = serde_json::from_str(payload).map_err(|_| Error::Invalid)?;
        JOBS.with_borrow_mut(|s| {
            s.next_id += 1;
            s.enqueued.push((queue.to_owned(), value, options));
            Ok(s.next_id.to_string())
        })
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn enqueue_records_and_checks() {
        crate::testing::reset();
        assert_eq!(
            enqueue("mail", &serde_json::json!({"to": "a"})).unwrap(),
            "1"
        );
        let opts = Options {
            delay: Some(Duration::from_secs(1)),
            max_attempts: Some(3),
        };
        assert_eq!(enqueue_with("mail", &2, opts).unwrap(), "2");
        assert_eq!(enqueue("1bad", &1), Err(Error::Invalid));
        let got = crate::testing::take_enqueued();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "mail");
        assert_eq!(got[0].1["to"], "a");
        assert_eq!(got[1].2, opts);
    }

    #[test]
    fn job_payload_decodes() {
        let job = Job {
            id: "7".into(),
            queue: "q".into(),
            payload_json: r#"{"n":3}"#.into(),
            attempt: 2,
            max_attempts: 2,
            enqueued_at_ms: 0,
        };
        let v: serde_json::Value = job.payload().unwrap();
        assert_eq!(v["n"], 3);
        assert!(job.last_attempt());
        assert_eq!(job.payload::<String>().unwrap_err().code, "VALIDATION");
    }
}
