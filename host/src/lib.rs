//! Tenantry: a multi-tenant realtime host.
//!
//! One process owns the WebSocket server and every backend; each tenant's
//! logic runs as a sandboxed WASM component (its *plugin*) that reaches the
//! backends only through tenant-scoped host imports. See `ARCHITECTURE.md`
//! and `docs/` at the repository root.
//!
//! Module map (one concern each):
//! - [`config`]: operator configuration (`tenantry.toml`, env, defaults).
//! - [`catalog`]: the durable registry of tenants, keys and plugin versions (memory or disk).
//! - [`control`]: every change to tenants and plugins, catalog first, then live.
//! - [`admin`]: the admin HTTP API (its own listener); [`admin_client`]: the CLI side of it.
//! - [`tenant`]: tenant ids, the registry of deployed tenants, resolution.
//! - [`runtime`]: the wasmtime engine, compiled-component cache, per-call sandbox.
//! - [`imports`]: the host side of each WIT import, scoped to the caller's tenant.
//! - [`backend`]: the extensions (pub/sub bus, KV) behind traits; `memory` is the embedded default.
//! - [`hub`]: local subscriptions and fan-out to this process's connections.
//! - [`protocol`]: the client wire format (svelte-adapter-uws 0.5 + svelte-realtime RPC).
//! - [`server`]: axum routes (WebSocket, health) and the connection state machine.
//! - [`bundled`]: the plugins compiled into the binary (the demo tenant's `chat`).
//! - [`cli`]: the `tenantry` command line.
//! - [`notify`]: the LISTEN/NOTIFY bridge (tenant outbox rows → `on-notify` → publish).

pub mod admin;
pub mod admin_client;
pub mod backend;
pub mod bundled;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod control;
pub mod cron;
pub mod cursors;
pub mod groups;
pub mod health;
pub mod hub;
pub mod imports;
pub mod jobs;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod plan;
pub mod presence;
pub mod presence_events;
pub mod protocol;
pub mod quota;
pub mod runtime;
pub mod server;
pub mod signal;
pub mod tasks;
pub mod tenant;
pub mod usage;
