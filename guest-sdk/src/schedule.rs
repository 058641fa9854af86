//! Recurring jobs (hosts with `[postgres]`): a schedule enqueues a job on
//! a queue at every occurrence of a cron expression (UTC), fired by exactly
//! one host of the fleet. The job reaches
//! [`Plugin::on_job`](crate::Plugin::on_job) like any other (list the queue
//! in [`Plugin::JOB_QUEUES`](crate::Plugin::JOB_QUEUES)).
//!
//! Expressions have five fields (`minute hour day-of-month month
//! day-of-week`, e.g. `0 9 * * mon-fri`) or six with seconds first
//! (`*/10 * * * * *`). Ids are the tenant's own (1-128 of letters, digits,
//! `_`, `-`, `.` and `:`): setting an id again replaces that schedule. A
//! tenant holds at most 100 schedules.
//!
//! ```no_run
//! use tenantry_sdk::schedule;
//! # fn f() -> Result<(), tenantry_sdk::Error> {
//! schedule::set("daily_report", "0 6 * * *", "reports", &tenantry_sdk::serde_json::json!({"kind": "daily"}))?;
//! # Ok(()) }
//! ```

use serde::Serialize;

use crate::error::Error;

/// One schedule, as [`list`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Its id.
    pub id: String,
    /// Its cron expression.
    pub cron: String,
    /// The queue its jobs go to.
    pub queue: String,
    /// Their payload (JSON text).
    pub payload_json: String,
    /// The next occurrence, ms since the Unix epoch.
    pub next_at_ms: u64,
}

/// Create or replace schedule `id`: a job on `queue` with `payload` at
/// every occurrence of `cron`. Returns the next occurrence (ms since the
/// epoch). `Invalid` for a bad id, expression (or one that never fires),
/// queue or payload.
pub fn set(id: &str, cron: &str, queue: &str, payload: &impl Serialize) -> Result<u64, Error> {
    let json = serde_json::to_string(payload).map_err(|e| Error::Encode(e.to_string()))?;
    imp::set(id, cron, queue, &json)
}

/// Remove schedule `id`; `true` if it existed.
pub fn remove(id: &str) -> Result<bool, Error> {
    imp::remove(id)
}

/// The tenant's schedules, by id.
pub fn list() -> Result<Vec<Schedule>, Error> {
    imp::list()
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Schedule;
    use crate::bindings::tenantry::plugin::schedule as wit;
    use crate::error::Error;
    use crate::jobs::imp::convert;

    pub fn set(id: &str, cron: &str, queue: &str, payload: &str) -> Result<u64, Error> {
        wit::set(id, cron, queue, payload).map_err(convert)
    }

    pub fn remove(id: &str) -> Result<bool, Error> {
        wit::remove(id).map_err(convert)
    }

    pub fn list() -> Result<Vec<Schedule>, Error> {
        Ok(wit::list()
            .map_err(convert)?
            .into_iter()
            .map(|s| Schedule {
                id: s.id,
                cron: s.cron,
                queue: s.queue,
                payload_json: s.payload,
                next_at_ms: s.next_at_ms,
            })
            .collect())
    }
}

/// The native stand-in: schedules kept in a map (no cron evaluation:
/// `next_at_ms` is 0).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod imp {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::Schedule;
    use crate::error::Error;

    thread_local! {
        pub static SCHEDULES: RefCell<BTreeMap<String, Schedule>> = const { RefCell::new(BTreeMap::new()) };
    }

    pub fn set(id: &str, cron: &str, queue: &str, payload: &str) -> Result<u64, Error> {
        let fields = cron.split_whitespace().count();
        if id.is_empty() || id.len() > 128 || !(5..=6).contains(&fields) {
            return Err(Error::Invalid);
        }
        SCHEDULES.with_borrow_mut(|s| {
            s.insert(
                id.to_owned(),
                Schedule {
                    id: id.to_owned(),
                    cron: cron.to_owned(),
                    queue: queue.to_owned(),
                    payload_json: payload.to_owned(),
                    next_at_ms: 0,
                },
            );
        });
        Ok(0)
    }

    pub fn remove(id: &str) -> Result<bool, Error> {
        Ok(SCHEDULES.with_borrow_mut(|s| s.remove(id).is_some()))
    }

    pub fn list() -> Result<Vec<Schedule>, Error> {
        Ok(SCHEDULES.with_borrow(|s| s.values().cloned().collect()))
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn stand_in_keeps_schedules_by_id() {
        crate::testing::reset();
        set("daily_report", "0 6 * * *", "reports", &1).unwrap();
        set("daily_report", "0 7 * * *", "reports", &2).unwrap();
        assert_eq!(set("x", "* *", "q", &1), Err(Error::Invalid));
        let all = list().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].cron, "0 7 * * *");
        assert!(remove("daily_report").unwrap());
        assert!(list().unwrap().is_empty());
    }
}
