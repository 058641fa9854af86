//! Host bindings generated from `wit/plugin.wit` (async imports and exports).
//! Only [`crate::runtime`] and [`crate::imports`] use these types.
//!
//! The host links and checks plugins against world `plugin-core` (the
//! imports and the required `handler` export). The optional exports of
//! world `plugin` come from a second generation, [`optional`], that reuses
//! the first one's interfaces; they are looked up per plugin by name.

wasmtime::component::bindgen!({
    world: "plugin-core",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
});

/// The optional exports of world `plugin` (the `presence-events` and
/// `notify-events` hooks).
pub mod optional {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        imports: { default: async },
        exports: { default: async },
        with: {
            "tenantry:plugin/types": super::tenantry::plugin::types,
            "tenantry:plugin/pubsub": super::tenantry::plugin::pubsub,
            "tenantry:plugin/kv": super::tenantry::plugin::kv,
            "tenantry:plugin/replay": super::tenantry::plugin::replay,
            "tenantry:plugin/ratelimit": super::tenantry::plugin::ratelimit,
            "tenantry:plugin/lock": super::tenantry::plugin::lock,
            "tenantry:plugin/idempotency": super::tenantry::plugin::idempotency,
            "tenantry:plugin/presence": super::tenantry::plugin::presence,
            "tenantry:plugin/groups": super::tenantry::plugin::groups,
            "tenantry:plugin/sql": super::tenantry::plugin::sql,
            "tenantry:plugin/log": super::tenantry::plugin::log,
            "tenantry:plugin/jobs": super::tenantry::plugin::jobs,
            "tenantry:plugin/schedule": super::tenantry::plugin::schedule,
            "tenantry:plugin/notify": super::tenantry::plugin::notify,
            "tenantry:plugin/tasks": super::tenantry::plugin::tasks,
        },
    });
}
