//! Host-side cost of the observability work done for every RPC call, apart
//! from the plugin call itself: the `call` span (created and entered under
//! the host's own log subscriber), the Prometheus updates (`rpc`,
//! `call_finished`, bytes in and out) and the per-tenant usage counters.
//!
//! Run: `taskset -c 0 cargo bench -p tenantry --bench instrumentation`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tenantry::metrics::{self, CallStats};
use tenantry::plan::Plan;
use tenantry::quota::TenantQuota;
use tenantry::tenant::TenantId;

fn instrumentation(c: &mut Criterion) {
    // The host's default subscriber: fmt at `info`, here writing to a sink.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .try_init();
    let tenant = TenantId::parse("bench").expect("id");
    let quota = TenantQuota::new(Plan::built_in("starter").expect("built-in plan"), 1);
    let stats = CallStats {
        instantiation: Some(Duration::from_micros(9)),
        cpu: Duration::from_micros(3),
        memory_bytes: 1 << 20,
        fuel: None,
    };

    c.bench_function("metrics_per_rpc", |b| {
        b.iter(|| {
            metrics::bytes_received(&tenant, 120);
            metrics::call_finished(&tenant, black_box(&stats));
            metrics::rpc(&tenant, "OK", Duration::from_micros(20));
            metrics::bytes_sent(&tenant, 140);
        })
    });
    c.bench_function("usage_per_rpc", |b| {
        b.iter(|| {
            quota.usage.bytes_in(120);
            quota.usage.cpu(Duration::from_micros(3));
            quota.usage.call(true);
            quota.usage.bytes_out(140);
        })
    });
    c.bench_function("call_span", |b| {
        let request_id = "42".to_owned();
        b.iter(|| {
            let span = tracing::info_span!("call", path = "fixture/echo", request_id = %request_id);
            // A fresh-instance call is polled about three times.
            for _ in 0..3 {
                let _entered = span.enter();
                black_box(&span);
            }
        })
    });
}

criterion_group!(benches, instrumentation);
criterion_main!(benches);
