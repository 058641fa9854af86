//! Plans: the bundle of limits that bounds everything one tenant can consume
//! (CPU, memory, connections, message rates, payload sizes, KV, logs).
//!
//! Four plans are built in — `free`, `starter`, `professional`,
//! `enterprise`, as in the multi-tenant patterns the product follows — and
//! `starter` is the default. The operator can change any value of a built-in
//! plan, define new plans on top of one (`base`), and override single values
//! per tenant. `docs/limits.md` lists every limit with its default per plan
//! and the error it produces.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The plan of tenants that name none, unless the config says otherwise.
pub const DEFAULT_PLAN: &str = "starter";

/// The built-in plan names, smallest first.
pub const BUILT_IN: [&str; 4] = ["free", "starter", "professional", "enterprise"];

/// Declares [`Plan`] (every limit, all required) and [`PlanOverrides`] (the
/// same keys, all optional, as written in the config file) from one list, so
/// the two can never disagree.
macro_rules! plan_fields {
    ($( $(#[doc = $doc:literal])* $name:ident ),* $(,)?) => {
        /// Every per-tenant limit. Values are counts, bytes, milliseconds or
        /// rates per second as their names say; see `docs/limits.md`.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Plan {
            $( $(#[doc = $doc])* pub $name: u64, )*
        }

        /// Values that replace those of a plan: a `[plans.NAME]` table or a
        /// tenant's `limits` table. Unknown keys are refused.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct PlanOverrides {
            /// For a new plan: the plan it starts from (default `starter`).
            /// Not allowed on built-in plans or tenants.
            #[serde(skip_serializing_if = "Option::is_none")]
            pub base: Option<String>,
            $( $(#[doc = $doc])*
            #[serde(skip_serializing_if = "Option::is_none")]
            pub $name: Option<u64>, )*
        }

        impl Plan {
            /// This plan with every value set in `o` replaced.
            pub fn with(&self, o: &PlanOverrides) -> Plan {
                Plan { $( $name: o.$name.unwrap_or(self.$name), )* }
            }

            /// `(name, value)` of every limit, in declaration order.
            pub fn entries(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), self.$name), )* ]
            }
        }
    };
}

plan_fields! {
    /// CPU time one plugin call may run (epoch deadline), ms. Over: `TIMEOUT`.
    call_deadline_ms,
    /// Fuel (≈ wasm instructions) one call may burn; 0 = not metered. Over: `TIMEOUT`.
    fuel_per_call,
    /// Linear memory + tables of one plugin instance, MiB. Over: `RESOURCE_EXHAUSTED`.
    memory_limit_mb,
    /// Largest result one call may return, bytes. Over: `PAYLOAD_TOO_LARGE`.
    max_result_bytes,
    /// Calls one instance serves before it is retired; 0 or 1 = fresh instance per call.
    instance_reuse,
    /// Warm instances kept per plugin when `instance_reuse` > 1.
    max_warm_instances,
    /// A warm instance unused this long (ms) is dropped.
    instance_idle_ms,
    /// Plugin calls of the tenant running at once (all connections). Over: `OVERLOADED`.
    max_concurrent_calls,
    /// Open WebSocket connections of the tenant. Over: close 4429.
    max_connections,
    /// Sustained new connections per second for the tenant. Over: close 4429.
    connects_per_sec,
    /// New connections the tenant may open in a burst above the rate.
    connect_burst,
    /// RPCs in flight on one connection. Over: `OVERLOADED`.
    max_inflight_calls_per_connection,
    /// Topics one connection may hold. Over: `subscribe-denied` `RATE_LIMITED`.
    max_subscriptions_per_connection,
    /// Largest inbound WebSocket message, bytes. Over: close 1009.
    max_frame_bytes,
    /// Sustained inbound messages per second on one connection. Over: `RATE_LIMITED`, then close 4429.
    connection_messages_per_sec,
    /// Messages one connection may send in a burst above its rate.
    connection_message_burst,
    /// Sustained inbound messages per second over all the tenant's connections. Over: `RATE_LIMITED`.
    tenant_messages_per_sec,
    /// Messages the tenant may receive in a burst above its rate.
    tenant_message_burst,
    /// Largest payload one publish may carry, bytes. Over: `PAYLOAD_TOO_LARGE`.
    max_publish_bytes,
    /// Sustained publishes per second by the tenant's plugin. Over: `RATE_LIMITED`.
    publishes_per_sec,
    /// Publishes the tenant may make in a burst above its rate.
    publish_burst,
    /// Keys the tenant may hold in KV. Over: `RESOURCE_EXHAUSTED`.
    kv_max_keys,
    /// Bytes (keys + values) the tenant may hold in KV. Over: `RESOURCE_EXHAUSTED`.
    kv_max_bytes,
    /// Plugin log lines (log import, stdout, stderr) kept per second; more are dropped.
    log_lines_per_sec,
    /// Log lines kept in a burst above the rate.
    log_line_burst,
    /// Run time of one `sql` import call (all its statements), ms; also the
    /// role's `statement_timeout`. Over: `TIMEOUT`.
    sql_statement_timeout_ms,
    /// Rows one `sql` call may return. Over: `PAYLOAD_TOO_LARGE`.
    sql_max_rows,
    /// Bytes of JSON one `sql` call may return. Over: `PAYLOAD_TOO_LARGE`.
    sql_max_result_bytes,
    /// Postgres connections the tenant's role may hold (its pool size and
    /// the role's `CONNECTION LIMIT`). Over: the call waits, then `SERVICE_UNAVAILABLE`.
    sql_max_connections,
    /// Bytes of SQL text plus parameters in one `sql` call. Over: `PAYLOAD_TOO_LARGE`.
    sql_max_statement_bytes,
    /// Temporary-file space one statement of the tenant may use (sorts and
    /// hashes spilled to disk), MiB; the role's `temp_file_limit`, which
    /// only a superuser can change. Over: `PAYLOAD_TOO_LARGE`.
    sql_max_temp_file_mb,
    /// Faulted calls per second the tenant's plugin may have on a host: a
    /// call that ran out of time, memory or stack, trapped, or returned a
    /// result over `max_result_bytes`. Past the burst, the tenant's calls are
    /// refused before they start (`RATE_LIMITED` with `retryAfter`) until
    /// the budget refills, so a broken or hostile plugin cannot spend the
    /// host's CPU on faults.
    faulted_calls_per_sec,
    /// Faulted calls allowed at once before `faulted_calls_per_sec` applies.
    faulted_call_burst,
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

impl Plan {
    /// A built-in plan by name.
    pub fn built_in(name: &str) -> Option<Plan> {
        // Columns: free, starter, professional, enterprise.
        let pick =
            |v: [u64; 4]| -> Option<u64> { BUILT_IN.iter().position(|n| *n == name).map(|i| v[i]) };
        Some(Plan {
            call_deadline_ms: pick([20, 50, 100, 200])?,
            fuel_per_call: 0,
            memory_limit_mb: pick([8, 16, 32, 64])?,
            max_result_bytes: pick([256 * KIB, MIB, MIB, 4 * MIB])?,
            instance_reuse: 0,
            max_warm_instances: 4,
            instance_idle_ms: 30_000,
            max_concurrent_calls: pick([8, 32, 128, 512])?,
            max_connections: pick([100, 1_000, 10_000, 100_000])?,
            connects_per_sec: pick([10, 100, 1_000, 10_000])?,
            connect_burst: pick([20, 200, 2_000, 20_000])?,
            max_inflight_calls_per_connection: pick([8, 32, 64, 128])?,
            max_subscriptions_per_connection: pick([100, 1_000, 10_000, 10_000])?,
            max_frame_bytes: pick([64 * KIB, MIB, MIB, 4 * MIB])?,
            connection_messages_per_sec: pick([20, 100, 500, 2_000])?,
            connection_message_burst: pick([40, 200, 1_000, 4_000])?,
            tenant_messages_per_sec: pick([200, 2_000, 20_000, 200_000])?,
            tenant_message_burst: pick([400, 4_000, 40_000, 400_000])?,
            max_publish_bytes: pick([64 * KIB, 256 * KIB, MIB, MIB])?,
            publishes_per_sec: pick([50, 500, 5_000, 50_000])?,
            publish_burst: pick([100, 1_000, 10_000, 100_000])?,
            kv_max_keys: pick([1_000, 10_000, 100_000, 1_000_000])?,
            kv_max_bytes: pick([MIB, 16 * MIB, 64 * MIB, 256 * MIB])?,
            log_lines_per_sec: pick([10, 50, 200, 1_000])?,
            log_line_burst: pick([20, 100, 400, 2_000])?,
            sql_statement_timeout_ms: pick([1_000, 3_000, 10_000, 30_000])?,
            sql_max_rows: pick([1_000, 10_000, 50_000, 100_000])?,
            sql_max_result_bytes: pick([MIB, 4 * MIB, 8 * MIB, 16 * MIB])?,
            sql_max_connections: pick([2, 4, 8, 16])?,
            sql_max_statement_bytes: pick([64 * KIB, 256 * KIB, MIB, MIB])?,
            sql_max_temp_file_mb: pick([64, 256, 1_024, 4_096])?,
            faulted_calls_per_sec: pick([5, 20, 100, 500])?,
            faulted_call_burst: pick([10, 40, 200, 1_000])?,
        })
    }

    /// The CPU deadline of one call.
    pub fn call_deadline(&self) -> Duration {
        Duration::from_millis(self.call_deadline_ms)
    }

    /// The memory cap of one instance, in bytes.
    pub fn memory_limit_bytes(&self) -> usize {
        usize::try_from(self.memory_limit_mb.saturating_mul(MIB)).unwrap_or(usize::MAX)
    }

    /// The run-time bound of one `sql` import call.
    pub fn sql_statement_timeout(&self) -> Duration {
        Duration::from_millis(self.sql_statement_timeout_ms)
    }

    /// How long a warm instance may sit unused.
    pub fn instance_idle(&self) -> Duration {
        Duration::from_millis(self.instance_idle_ms)
    }

    /// Check that every value is usable; the message names the bad key.
    pub fn validate(&self) -> Result<(), String> {
        const MAY_BE_ZERO: [&str; 2] = ["fuel_per_call", "instance_reuse"];
        for (name, value) in self.entries() {
            if value == 0 && !MAY_BE_ZERO.contains(&name) {
                return Err(format!("{name} must be greater than 0"));
            }
        }
        // 32-bit wasm cannot address more; the pool reserves this per slot.
        if self.memory_limit_mb > 4096 {
            return Err("memory_limit_mb must be at most 4096".into());
        }
        // tokio's semaphore caps permits far below u64.
        if self.max_inflight_calls_per_connection > 1 << 20 {
            return Err("max_inflight_calls_per_connection must be at most 1048576".into());
        }
        // The role's CONNECTION LIMIT and the pool size are i32 / usize.
        if self.sql_max_connections > 10_000 {
            return Err("sql_max_connections must be at most 10000".into());
        }
        // temp_file_limit is an int of kB.
        if self.sql_max_temp_file_mb > (i32::MAX as u64) / 1024 {
            return Err("sql_max_temp_file_mb must be at most 2097151".into());
        }
        if self.sql_statement_timeout_ms > i32::MAX as u64 {
            return Err("sql_statement_timeout_ms must be at most 2147483647".into());
        }
        if self.max_frame_bytes > 64 * MIB {
            return Err("max_frame_bytes must be at most 67108864 (64 MiB)".into());
        }
        Ok(())
    }
}

/// Build the plan table: the built-ins, changed by `overrides` of the same
/// name, plus new plans (which start from their `base`, default
/// [`DEFAULT_PLAN`]). Every plan is validated.
pub fn resolve_plans(
    overrides: &BTreeMap<String, PlanOverrides>,
) -> Result<BTreeMap<String, Plan>, String> {
    let mut plans = BTreeMap::new();
    for name in BUILT_IN {
        let Some(mut plan) = Plan::built_in(name) else {
            continue;
        };
        if let Some(o) = overrides.get(name) {
            if o.base.is_some() {
                return Err(format!(
                    "plans.{name}: `base` is only for new plans; {name} is built in"
                ));
            }
            plan = plan.with(o);
        }
        plans.insert(name.to_owned(), plan);
    }
    for (name, o) in overrides {
        if plans.contains_key(name) && BUILT_IN.contains(&name.as_str()) {
            continue;
        }
        let base_name = o.base.as_deref().unwrap_or(DEFAULT_PLAN);
        let base = plans.get(base_name).ok_or_else(|| {
            format!("plans.{name}: base plan {base_name:?} is not a built-in plan")
        })?;
        let plan = base.with(o);
        plans.insert(name.clone(), plan);
    }
    for (name, plan) in &plans {
        plan.validate().map_err(|e| format!("plans.{name}: {e}"))?;
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_plans_grow_and_starter_has_the_documented_defaults() {
        let plans = resolve_plans(&BTreeMap::new()).unwrap();
        assert_eq!(plans.len(), 4);
        let starter = &plans[DEFAULT_PLAN];
        assert_eq!(starter.call_deadline(), Duration::from_millis(50));
        assert_eq!(starter.memory_limit_bytes(), 16 << 20);
        assert_eq!(starter.fuel_per_call, 0);
        assert_eq!(starter.instance_reuse, 0);
        for pair in BUILT_IN.windows(2) {
            let (small, big) = (&plans[pair[0]], &plans[pair[1]]);
            for ((name, a), (_, b)) in small.entries().into_iter().zip(big.entries()) {
                assert!(a <= b, "{name}: {} {a} > {} {b}", pair[0], pair[1]);
            }
        }
        assert!(Plan::built_in("gold").is_none());
    }

    #[test]
    fn overrides_change_built_ins_and_define_new_plans() {
        let toml = r#"
            [free]
            max_connections = 5
            [bench]
            base = "enterprise"
            connection_messages_per_sec = 1000000
            [tiny]
            memory_limit_mb = 2
        "#;
        let o: BTreeMap<String, PlanOverrides> = toml::from_str(toml).unwrap();
        let plans = resolve_plans(&o).unwrap();
        assert_eq!(plans["free"].max_connections, 5);
        assert_eq!(
            plans["free"].call_deadline_ms, 20,
            "unset values keep the plan's"
        );
        assert_eq!(plans["bench"].connection_messages_per_sec, 1_000_000);
        assert_eq!(plans["bench"].max_connections, 100_000, "from enterprise");
        assert_eq!(plans["tiny"].memory_limit_mb, 2);
        assert_eq!(plans["tiny"].max_connections, 1_000, "from starter");
    }

    #[test]
    fn bad_plans_are_refused_with_the_key_named() {
        let parse = |t: &str| -> Result<BTreeMap<String, Plan>, String> {
            let o: BTreeMap<String, PlanOverrides> =
                toml::from_str(t).map_err(|e| e.to_string())?;
            resolve_plans(&o)
        };
        let e = parse("[free]\nmax_conections = 1").unwrap_err();
        assert!(e.contains("max_conections"), "{e}");
        let e = parse("[free]\nmax_connections = 0").unwrap_err();
        assert!(
            e.contains("plans.free: max_connections must be greater than 0"),
            "{e}"
        );
        let e = parse("[free]\nbase = \"starter\"").unwrap_err();
        assert!(e.contains("built in"), "{e}");
        let e = parse("[x]\nbase = \"gold\"").unwrap_err();
        assert!(e.contains("\"gold\""), "{e}");
        let e = parse("[x]\nmemory_limit_mb = 5000").unwrap_err();
        assert!(e.contains("memory_limit_mb"), "{e}");
        assert!(parse("[x]\nfuel_per_call = 0\ninstance_reuse = 0").is_ok());
    }

    /// `docs/limits.md` lists every limit with the built-in values; keep
    /// the two in step.
    #[test]
    fn the_limits_doc_matches_the_built_in_plans() {
        let doc = include_str!("../../docs/limits.md");
        let parse = |key: &str, cell: &str| -> u64 {
            let cell = cell.trim().replace(',', "");
            let (n, unit) = cell.split_once(' ').unwrap_or((&cell, ""));
            if n == "off" {
                return 0;
            }
            let n: u64 = n.parse().unwrap_or_else(|_| panic!("{key}: {cell:?}"));
            match unit {
                "KiB" => n * KIB,
                "MiB" if key != "memory_limit_mb" => n * MIB,
                _ => n,
            }
        };
        for (i, name) in BUILT_IN.iter().enumerate() {
            let plan = Plan::built_in(name).unwrap();
            for (key, value) in plan.entries() {
                let row = doc
                    .lines()
                    .find(|l| l.starts_with(&format!("| `{key}` |")))
                    .unwrap_or_else(|| panic!("docs/limits.md has no row for {key}"));
                let cell = row.split('|').nth(2 + i).unwrap();
                assert_eq!(parse(key, cell), value, "{key} on {name} in docs/limits.md");
            }
        }
    }
}
