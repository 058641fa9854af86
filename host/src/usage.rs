//! What each tenant used on this host: the numbers a plan check or a bill
//! needs (calls, CPU time, bytes in and out, SQL time), as totals since the
//! host started and per minute for the last hour.
//!
//! Exact per tenant (no label bounds, unlike the metrics), kept on the
//! tenant's [`TenantQuota`](crate::quota::TenantQuota) and served by
//! `GET /admin/tenants/{id}/usage`. Per host: a fleet's usage is the sum
//! over its hosts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

/// Minutes kept for windows.
pub const WINDOW_MINUTES: usize = 60;

/// Counts of one kind of use, over some period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// RPC calls answered (successful or not).
    pub calls: u64,
    /// RPC calls answered with an error.
    pub errors: u64,
    /// Guest CPU time of plugin calls, in microseconds.
    pub cpu_us: u64,
    /// WebSocket message bytes received from clients.
    pub bytes_in: u64,
    /// WebSocket message bytes sent to clients.
    pub bytes_out: u64,
    /// Time spent in SQL statements, in microseconds.
    pub sql_us: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.calls += o.calls;
        self.errors += o.errors;
        self.cpu_us += o.cpu_us;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.sql_us += o.sql_us;
    }
}

#[derive(Clone, Copy, Default)]
struct Minute {
    /// Minutes since the Unix epoch this slot counts.
    at: u64,
    counts: Counts,
}

/// One tenant's use (see the module docs).
pub struct TenantUsage {
    calls: AtomicU64,
    errors: AtomicU64,
    cpu_us: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    sql_us: AtomicU64,
    minutes: Mutex<[Minute; WINDOW_MINUTES]>,
}

impl std::fmt::Debug for TenantUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantUsage")
            .field("totals", &self.totals())
            .finish_non_exhaustive()
    }
}

impl Default for TenantUsage {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            cpu_us: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            sql_us: AtomicU64::new(0),
            minutes: Mutex::new([Minute::default(); WINDOW_MINUTES]),
        }
    }
}

fn now_minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl TenantUsage {
    /// Add `c` to the totals and to the current minute.
    fn add(&self, c: Counts) {
        let at = now_minute();
        self.add_at(at, c);
    }

    fn add_at(&self, at: u64, c: Counts) {
        for (total, v) in [
            (&self.calls, c.calls),
            (&self.errors, c.errors),
            (&self.cpu_us, c.cpu_us),
            (&self.bytes_in, c.bytes_in),
            (&self.bytes_out, c.bytes_out),
            (&self.sql_us, c.sql_us),
        ] {
            if v > 0 {
                total.fetch_add(v, Ordering::Relaxed);
            }
        }
        let mut minutes = self.minutes.lock();
        let slot = &mut minutes[(at % WINDOW_MINUTES as u64) as usize];
        if slot.at != at {
            *slot = Minute {
                at,
                counts: Counts::default(),
            };
        }
        slot.counts.add(&c);
    }

    /// Count an answered RPC call (`ok`: not an error).
    pub fn call(&self, ok: bool) {
        self.add(Counts {
            calls: 1,
            errors: u64::from(!ok),
            ..Counts::default()
        });
    }

    /// Count guest CPU time.
    pub fn cpu(&self, d: Duration) {
        self.add(Counts {
            cpu_us: micros(d),
            ..Counts::default()
        });
    }

    /// Count bytes received from a client.
    pub fn bytes_in(&self, n: u64) {
        self.add(Counts {
            bytes_in: n,
            ..Counts::default()
        });
    }

    /// Count bytes sent to a client.
    pub fn bytes_out(&self, n: u64) {
        self.add(Counts {
            bytes_out: n,
            ..Counts::default()
        });
    }

    /// Count time spent in SQL.
    pub fn sql(&self, d: Duration) {
        self.add(Counts {
            sql_us: micros(d),
            ..Counts::default()
        });
    }

    /// Everything since the host started.
    pub fn totals(&self) -> Counts {
        Counts {
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            cpu_us: self.cpu_us.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            sql_us: self.sql_us.load(Ordering::Relaxed),
        }
    }

    /// The last `minutes` minutes (1 to [`WINDOW_MINUTES`], the current
    /// minute included).
    pub fn window(&self, minutes: usize) -> Counts {
        self.window_at(now_minute(), minutes)
    }

    fn window_at(&self, now: u64, minutes: usize) -> Counts {
        let minutes = minutes.clamp(1, WINDOW_MINUTES) as u64;
        let from = now.saturating_sub(minutes - 1);
        let mut sum = Counts::default();
        for slot in self.minutes.lock().iter() {
            if slot.at >= from && slot.at <= now {
                sum.add(&slot.counts);
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_windows() {
        let u = TenantUsage::default();
        let c = |calls| Counts {
            calls,
            ..Counts::default()
        };
        u.add_at(1000, c(1));
        u.add_at(1001, c(2));
        u.add_at(1059, c(4));
        assert_eq!(u.totals().calls, 7);
        assert_eq!(u.window_at(1059, 1).calls, 4);
        assert_eq!(u.window_at(1059, 59).calls, 6, "1001..=1059");
        assert_eq!(u.window_at(1059, 60).calls, 7);
        // An hour later the slot of minute 1000 is reused, not added to.
        u.add_at(1060, c(8));
        assert_eq!(u.window_at(1060, 60).calls, 14, "1001..=1060");
        assert_eq!(u.totals().calls, 15);
        assert_eq!(u.window_at(1200, 60).calls, 0, "all older than the window");
    }

    #[test]
    fn each_kind_is_counted() {
        let u = TenantUsage::default();
        u.call(true);
        u.call(false);
        u.cpu(Duration::from_micros(1500));
        u.bytes_in(10);
        u.bytes_out(20);
        u.sql(Duration::from_millis(3));
        let want = Counts {
            calls: 2,
            errors: 1,
            cpu_us: 1500,
            bytes_in: 10,
            bytes_out: 20,
            sql_us: 3000,
        };
        assert_eq!(u.totals(), want);
        assert_eq!(u.window(1), want);
    }
}
