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
use tenantry::runtime::{CallContext, Runtime, RuntimeConfig};
use tenantry::tenant::TenantId;

fn ctx() -> CallContext {
    CallContext {
        user: None,
        connection_id: "bench".into(),
        request_id: "1".into(),
    }
}

fn invoke(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let wasm =
        std::fs::read(tenantry::bundled::plugin_path("fixture")).expect("fixture.wasm is built");
    let load = |config: RuntimeConfig| {
        rt.block_on(async {
            let runtime = Runtime::new(config, memory::backends(Hub::new())).expect("runtime");
            runtime
                .load_plugin(TenantId::parse("bench").expect("id"), &wasm)
                .await
                .expect("plugin loads")
        })
    };
    let plugin = load(RuntimeConfig::default());
    let reused = load(RuntimeConfig {
        max_reuse: u32::MAX,
        ..RuntimeConfig::default()
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
