//! Host-side cost of invoking a plugin: `fixture/echo` in a fresh sandbox
//! (Store + instantiate from InstancePre + call + drop) per call, and a call
//! that crosses one host import (`fixture/kv_incr`); and `echo` on a warm,
//! reused instance (`instance_reuse`).
//!
//! Run: `taskset -c 0 cargo bench -p tenantry --bench invoke`

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tenantry::backend::memory;
use tenantry::hub::Hub;
use tenantry::plan::Plan;
use tenantry::quota::TenantQuota;
use tenantry::runtime::{CallContext, Runtime, RuntimeConfig};
use tenantry::tenant::TenantId;

fn ctx() -> CallContext {
    CallContext {
        user: None,
        connection_id: "bench".into(),
        request_id: "1".into(),
        outbound: None,
    }
}

fn invoke(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let wasm =
        std::fs::read(tenantry::bundled::plugin_path("fixture")).expect("fixture.wasm is built");
    let runtime = rt.block_on(async {
        Runtime::new(RuntimeConfig::default(), memory::backends(Hub::new())).expect("runtime")
    });
    let load = |plan: Plan| {
        rt.block_on(async {
            runtime
                .load_plugin(
                    TenantId::parse("bench").expect("id"),
                    TenantQuota::new(plan, 1),
                    &wasm,
                )
                .await
                .expect("plugin loads")
        })
    };
    let starter = Plan::built_in("starter").expect("built-in plan");
    let plugin = load(starter.clone());
    let reused = load(Plan {
        instance_reuse: u64::MAX,
        max_concurrent_calls: u64::MAX,
        ..starter.clone()
    });
    let args = format!("[\"{}\"]", "x".repeat(100));

    for (name, plugin) in [
        ("echo_fresh_instance", &plugin),
        ("echo_reused_instance", &reused),
    ] {
        c.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let plugin = Arc::clone(plugin);
                let args = args.clone();
                async move {
                    plugin
                        .call(ctx(), "fixture/echo", &args)
                        .await
                        .expect("echo")
                }
            })
        });
    }
    c.bench_function("kv_incr_fresh_instance", |b| {
        b.to_async(&rt).iter(|| {
            let plugin = Arc::clone(&plugin);
            async move {
                plugin
                    .call(ctx(), "fixture/kv_incr", "[\"n\",1]")
                    .await
                    .expect("incr")
            }
        })
    });
}

criterion_group!(benches, invoke);
criterion_main!(benches);
