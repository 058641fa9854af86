//! Upload validation: is this `.wasm` a Tenantry plugin this host runs?
//!
//! [`Runtime::check_plugin`](super::Runtime::check_plugin) runs the steps in
//! order and stops at the first that fails, with the error the admin API
//! sends as `INVALID_PLUGIN` (`docs/admin-api.md`): the magic number, the
//! component layer, compilation (bounded in time), the exports (the
//! `tenantry:plugin/handler@0.1.x` interface and its functions), the imports
//! (an allow list), then linking against the host. This module holds the
//! checks that need no runtime; the method in `runtime/mod.rs` drives them.

use serde::Serialize;
use wasmtime::Engine;
use wasmtime::component::InstancePre;
use wasmtime::component::types::{self, ComponentItem};

use super::wit::types::{CallContext, ConnectRequest, LiveError, User};

/// The world every plugin this host serves targets.
pub(super) const WORLD: &str = "tenantry:plugin/plugin@0.1.0";

/// The WIT package of the plugin contract, without a version.
const PACKAGE: &str = "tenantry:plugin";

/// The interface a plugin must export, at the version the host was built with.
pub(super) const HANDLER: &str = "tenantry:plugin/handler@0.1.0";

/// `(major, minor)` of the plugin contract this host serves: any patch
/// release of `tenantry:plugin@0.1` links (semver for 0.x versions).
const CONTRACT: (u64, u64) = (0, 1);

/// The functions the `handler` export must have.
const HANDLER_FUNCS: &[&str] = &["authenticate", "call", "authorize-subscribe"];

/// The `tenantry:plugin` interfaces the host provides to plugins.
const HOST_INTERFACES: &[&str] = &[
    "types",
    "pubsub",
    "kv",
    "replay",
    "ratelimit",
    "lock",
    "idempotency",
    "presence",
    "groups",
    "sql",
    "log",
    "jobs",
    "schedule",
    "notify",
    "tasks",
];

/// `(major, minor)` of the WASI preview 2 interfaces the host links
/// (wasmtime-wasi; any 0.2.x import links to them).
const WASI_P2: (u64, u64) = (0, 2);

/// The WASI p2 interfaces a plugin may import: what Rust's std for
/// `wasm32-wasip2` needs, none of which reaches outside the sandbox.
///
/// Measured (the components built by `host/build.rs` with Rust 1.95, the
/// imports printed by `bundled_plugins_import_only_the_allow_list`):
/// - `chat`, `fixture`, `hostile` import, besides `tenantry:plugin/*`:
///   `wasi:io/{poll,error,streams}`, `wasi:cli/{environment,exit,stdin,
///   stdout,stderr}` and `wasi:cli/terminal-{input,output,stdin,stdout,
///   stderr}`, all `@0.2.6` (std's runtime: stdio, args/env, exit).
/// - a plugin using `Instant`, `SystemTime` or `thread::sleep` adds
///   `wasi:clocks/{monotonic-clock,wall-clock}`; one using `HashMap` adds
///   `wasi:random/insecure-seed` (measured with a throwaway plugin); code
///   asking for random bytes (e.g. the `getrandom` crate) uses
///   `wasi:random/random`. All of these are allowed, with `insecure`.
/// - std does NOT force `wasi:filesystem/*`: it appears only when the
///   plugin uses `std::fs` (see `plugins/sneaky`), so it is refused (the
///   host gives plugins no preopened directory anyway).
///
/// Never allowed: `wasi:sockets/*` (network), `wasi:http/*` (outgoing
/// requests), `wasi:filesystem/*` and anything else not listed here.
const WASI_ALLOWED: &[&str] = &[
    "wasi:io/poll",
    "wasi:io/error",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
];

/// What [`Runtime::check_plugin`](super::Runtime::check_plugin) learnt about
/// an accepted plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginInfo {
    /// The world the plugin targets: `tenantry:plugin/plugin@0.1.0`.
    pub world: String,
    /// SHA-256 of the uploaded bytes, lower-case hex (its first 12 digits
    /// are the plugin version id).
    pub sha256: String,
}

/// Why an upload is not a plugin this host runs. [`reason`](Self::reason)
/// and [`details`](Self::details) are the `INVALID_PLUGIN` error's fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginRejection {
    /// The bytes do not start with the WebAssembly magic number `\0asm`
    /// (this includes precompiled `.cwasm` code, which is never accepted).
    #[error("not WebAssembly: the upload does not start with the \\0asm magic number")]
    NotWasm,
    /// A core wasm module, not a component.
    #[error(
        "a core WebAssembly module, not a component: build for wasm32-wasip2 \
         (or run `wasm-tools component new`)"
    )]
    CoreModule,
    /// The component does not export `tenantry:plugin/handler@0.1.x` with
    /// the functions the host calls.
    #[error("not a tenantry:plugin@0.1 plugin: {}", .details.join("; "))]
    WrongWorld {
        /// Each thing that is missing or wrong, e.g. `function call is missing`.
        details: Vec<String>,
    },
    /// The component imports interfaces the host does not provide to plugins.
    #[error(
        "imports interfaces the host does not provide to plugins: {}",
        .details.join(", ")
    )]
    RefusedImports {
        /// The refused import names, e.g. `wasi:sockets/tcp@0.2.0`.
        details: Vec<String>,
    },
    /// The compiler (or the linker) rejected the component.
    #[error("the host cannot compile or link it: {0}")]
    CompileFailed(String),
    /// Compiling took longer than the configured budget.
    #[error("compiling took longer than {after_ms} ms")]
    CompileTimeout {
        /// The budget that was exceeded, in milliseconds (`compile_timeout_ms`).
        after_ms: u64,
    },
}

impl PluginRejection {
    /// The `reason` of the `INVALID_PLUGIN` error: `not_wasm`,
    /// `core_module`, `wrong_world`, `refused_imports`, `compile_failed` or
    /// `compile_timeout`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotWasm => "not_wasm",
            Self::CoreModule => "core_module",
            Self::WrongWorld { .. } => "wrong_world",
            Self::RefusedImports { .. } => "refused_imports",
            Self::CompileFailed(_) => "compile_failed",
            Self::CompileTimeout { .. } => "compile_timeout",
        }
    }

    /// The particulars for the error's `details`: what is missing (wrong
    /// world), the refused import names, or the compiler's message. Empty
    /// when the reason says it all.
    pub fn details(&self) -> Vec<String> {
        match self {
            Self::NotWasm | Self::CoreModule => Vec::new(),
            Self::WrongWorld { details } | Self::RefusedImports { details } => details.clone(),
            Self::CompileFailed(message) => vec![message.clone()],
            Self::CompileTimeout { after_ms } => {
                vec![format!("the compile budget is {after_ms} ms")]
            }
        }
    }

    /// A [`CompileFailed`](Self::CompileFailed) with `message` on one line.
    pub(super) fn compile_failed(message: impl AsRef<str>) -> Self {
        let one_line: Vec<&str> = message.as_ref().lines().map(str::trim).collect();
        Self::CompileFailed(one_line.join(" "))
    }
}

/// Refuse what is not a component before compiling: no `\0asm` magic is
/// [`NotWasm`](PluginRejection::NotWasm), layer 0 (a core module, version
/// field 1) is [`CoreModule`](PluginRejection::CoreModule). A truncated or
/// unknown header is left for the compiler to describe.
pub(super) fn check_header(wasm: &[u8]) -> Result<(), PluginRejection> {
    if !wasm.starts_with(b"\0asm") {
        return Err(PluginRejection::NotWasm);
    }
    // After the magic: a u16 version and a u16 layer, little-endian; core
    // modules are layer 0 (version 1), components layer 1.
    match wasm.get(4..8) {
        Some([_, _, 0, 0]) => Err(PluginRejection::CoreModule),
        _ => Ok(()),
    }
}

/// Check that `component` exports `tenantry:plugin/handler@0.1.x` as an
/// instance with every function in [`HANDLER_FUNCS`]; else `WrongWorld`
/// listing each missing piece. (Function signatures are checked when the
/// host binds the exports.)
pub(super) fn check_exports(
    engine: &Engine,
    component: &types::Component,
) -> Result<(), PluginRejection> {
    let mut details = Vec::new();
    let handler = component
        .exports(engine)
        .find(|(name, _)| is_handler(name, Some(CONTRACT)));
    match handler {
        None => {
            details.push(format!("export {HANDLER} is missing"));
            for (name, _) in component.exports(engine) {
                if is_handler(name, None) || name.starts_with(&format!("{PACKAGE}/")) {
                    details.push(format!(
                        "it exports {name}, but this host serves {PACKAGE}@{}.{}.x",
                        CONTRACT.0, CONTRACT.1
                    ));
                }
            }
        }
        Some((name, item)) => match item.ty {
            ComponentItem::ComponentInstance(instance) => {
                for func in HANDLER_FUNCS {
                    match instance.get_export(engine, func).map(|e| e.ty) {
                        Some(ComponentItem::ComponentFunc(_)) => {}
                        Some(_) => details.push(format!("{func} in {name} is not a function")),
                        None => details.push(format!("function {func} is missing")),
                    }
                }
            }
            _ => details.push(format!("export {name} is not an interface instance")),
        },
    }
    if details.is_empty() {
        Ok(())
    } else {
        Err(PluginRejection::WrongWorld { details })
    }
}

/// Check the signatures of the handler's functions against the host's
/// bindings, as instantiation would (the generated bindings only check an
/// exported interface's types when an instance is created, too late for an
/// upload). `pre` is the component linked by the host; [`check_exports`]
/// has passed. A mismatch is `WrongWorld`, one detail per function.
pub(super) fn check_handler_types<T>(
    engine: &Engine,
    pre: &InstancePre<T>,
) -> Result<(), PluginRejection> {
    let component = pre.component().component_type();
    let linked = pre.instance_type();
    let handler = component
        .exports(engine)
        .find(|(name, _)| is_handler(name, Some(CONTRACT)));
    let Some((name, item)) = handler else {
        return Err(PluginRejection::WrongWorld {
            details: vec![format!("export {HANDLER} is missing")],
        });
    };
    let ComponentItem::ComponentInstance(instance) = item.ty else {
        return Err(PluginRejection::WrongWorld {
            details: vec![format!("export {name} is not an interface instance")],
        });
    };
    let mut details = Vec::new();
    for func in HANDLER_FUNCS {
        let Some(ComponentItem::ComponentFunc(ty)) =
            instance.get_export(engine, func).map(|e| e.ty)
        else {
            details.push(format!("function {func} is missing"));
            continue;
        };
        // The same check (doc-hidden wasmtime API, used by the bindings)
        // the generated `load` makes with these parameter and result types.
        let checked = match *func {
            "authenticate" => {
                ty.typecheck::<(ConnectRequest,), (Result<Option<User>, LiveError>,)>(&linked)
            }
            "call" => {
                ty.typecheck::<(CallContext, String, String), (Result<String, LiveError>,)>(&linked)
            }
            _ => ty.typecheck::<(CallContext, String), (Result<(), LiveError>,)>(&linked),
        };
        if let Err(e) = checked {
            details.push(format!("function {func} has the wrong type: {e:#}"));
        }
    }
    if details.is_empty() {
        Ok(())
    } else {
        Err(PluginRejection::WrongWorld { details })
    }
}

/// Whether `name` is the handler interface, at `version` (`(major, minor)`,
/// any patch) or, with `None`, at any version.
fn is_handler(name: &str, version: Option<(u64, u64)>) -> bool {
    let (interface, v) = name.split_once('@').unwrap_or((name, ""));
    interface == format!("{PACKAGE}/handler") && version.is_none_or(|want| compatible(v, want))
}

/// Check every import of `component` against the allow list: the host's
/// `tenantry:plugin` interfaces at 0.1.x and the WASI p2 interfaces in
/// [`WASI_ALLOWED`] at 0.2.x. Anything else is `RefusedImports`, naming
/// each refused import.
pub(super) fn check_imports(
    engine: &Engine,
    component: &types::Component,
) -> Result<(), PluginRejection> {
    let refused: Vec<String> = component
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| !import_allowed(name))
        .map(str::to_owned)
        .collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(PluginRejection::RefusedImports { details: refused })
    }
}

/// Whether a plugin may import the interface `name` (`ns:pkg/iface@x.y.z`).
fn import_allowed(name: &str) -> bool {
    let Some((interface, version)) = name.split_once('@') else {
        return false;
    };
    if let Some(own) = interface.strip_prefix(&format!("{PACKAGE}/")) {
        return HOST_INTERFACES.contains(&own) && compatible(version, CONTRACT);
    }
    WASI_ALLOWED.contains(&interface) && compatible(version, WASI_P2)
}

/// Whether `version` (`x.y.z`, optionally `+build`; no pre-release) is on
/// the semver track `(major, minor)` of a 0.x package.
fn compatible(version: &str, (major, minor): (u64, u64)) -> bool {
    let version = version.split_once('+').map_or(version, |(v, _)| v);
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(Some(a)), Some(Some(b)), Some(Some(_)), None) if a == major && b == minor
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use sha2::{Digest, Sha256};
    use wasmtime::component::Component;

    use super::*;
    use crate::backend::memory;
    use crate::hub::Hub;
    use crate::runtime::{Runtime, RuntimeConfig};

    /// Generous: the real plugins compile in well under a second.
    const BUDGET: Duration = Duration::from_secs(60);

    fn runtime(cache_dir: Option<PathBuf>) -> Arc<Runtime> {
        let config = RuntimeConfig {
            cache_dir,
            max_instances: 8,
            ..RuntimeConfig::default()
        };
        Runtime::new(config, memory::backends(Hub::new())).unwrap()
    }

    fn plugin(name: &str) -> Vec<u8> {
        std::fs::read(crate::bundled::plugin_path(name)).unwrap()
    }

    fn component(wat: &str) -> Vec<u8> {
        wat::parse_str(wat).unwrap()
    }

    /// A component exporting `handler@0.1.0` with all three functions (of
    /// the wrong type: `func()`), plus `imports` (component text).
    fn handler_component(imports: &str) -> Vec<u8> {
        component(&format!(
            r#"(component
                {imports}
                (core module $m (func (export "f")))
                (core instance $i (instantiate $m))
                (func $f (canon lift (core func $i "f")))
                (instance $h
                    (export "authenticate" (func $f))
                    (export "call" (func $f))
                    (export "authorize-subscribe" (func $f)))
                (export "tenantry:plugin/handler@0.1.0" (instance $h)))"#
        ))
    }

    async fn check(rt: &Arc<Runtime>, wasm: &[u8]) -> Result<PluginInfo, PluginRejection> {
        rt.check_plugin(wasm, BUDGET).await
    }

    #[tokio::test]
    async fn the_bundled_plugins_pass() {
        let rt = runtime(None);
        for name in ["chat", "fixture", "hostile"] {
            let wasm = plugin(name);
            let info = check(&rt, &wasm)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(info.world, "tenantry:plugin/plugin@0.1.0");
            assert_eq!(info.sha256, hex::encode(Sha256::digest(&wasm)));
        }
    }

    #[test]
    fn bundled_plugins_import_only_the_allow_list() {
        let engine = wasmtime::Engine::default();
        for name in ["chat", "fixture", "hostile"] {
            let c = Component::new(&engine, plugin(name)).unwrap();
            let ty = c.component_type();
            let imports: Vec<&str> = ty.imports(&engine).map(|(n, _)| n).collect();
            println!("{name} imports {imports:?}");
            assert!(check_imports(&engine, &ty).is_ok(), "{name}: {imports:?}");
        }
    }

    #[tokio::test]
    async fn not_wasm() {
        let rt = runtime(None);
        // Deterministic noise that does not start with the magic.
        let mut x: u32 = 0x9e37_79b9;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x.to_le_bytes()[0]
            })
            .collect();
        assert!(!noise.starts_with(b"\0asm"));
        let text = b"<html><body>502 Bad Gateway</body></html>".to_vec();
        for bad in [Vec::new(), noise, text] {
            let e = check(&rt, &bad).await.unwrap_err();
            assert_eq!(e, PluginRejection::NotWasm);
            assert_eq!(e.reason(), "not_wasm");
        }
    }

    #[tokio::test]
    async fn precompiled_code_is_not_wasm() {
        let rt = runtime(None);
        let cwasm = Component::new(&rt.engine, plugin("fixture"))
            .unwrap()
            .serialize()
            .unwrap();
        assert_eq!(
            check(&rt, &cwasm).await.unwrap_err(),
            PluginRejection::NotWasm
        );
    }

    #[tokio::test]
    async fn core_modules() {
        let rt = runtime(None);
        let module = wat::parse_str(
            r#"(module
                (memory (export "memory") 1)
                (func (export "call") (param i32 i32) (result i32) local.get 0))"#,
        )
        .unwrap();
        for bad in [module, b"\0asm\x01\0\0\0".to_vec()] {
            let e = check(&rt, &bad).await.unwrap_err();
            assert_eq!(e, PluginRejection::CoreModule);
            assert_eq!(e.reason(), "core_module");
            assert!(e.to_string().contains("wasm32-wasip2"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_component_exporting_nothing_is_the_wrong_world() {
        let rt = runtime(None);
        let e = check(&rt, &component("(component)")).await.unwrap_err();
        assert_eq!(e.reason(), "wrong_world");
        assert_eq!(
            e.details(),
            ["export tenantry:plugin/handler@0.1.0 is missing"]
        );
    }

    #[tokio::test]
    async fn another_contract_version_is_named() {
        let rt = runtime(None);
        let wasm = component(
            r#"(component
                (instance $h)
                (export "tenantry:plugin/handler@0.2.0" (instance $h)))"#,
        );
        let e = check(&rt, &wasm).await.unwrap_err();
        assert_eq!(e.reason(), "wrong_world");
        assert_eq!(
            e.details(),
            [
                "export tenantry:plugin/handler@0.1.0 is missing",
                "it exports tenantry:plugin/handler@0.2.0, but this host serves \
                 tenantry:plugin@0.1.x",
            ]
        );
    }

    #[tokio::test]
    async fn missing_handler_functions_are_listed() {
        let rt = runtime(None);
        let wasm = component(
            r#"(component
                (core module $m (func (export "f")))
                (core instance $i (instantiate $m))
                (func $f (canon lift (core func $i "f")))
                (instance $h (export "authenticate" (func $f)))
                (export "tenantry:plugin/handler@0.1.0" (instance $h)))"#,
        );
        let e = check(&rt, &wasm).await.unwrap_err();
        assert_eq!(e.reason(), "wrong_world");
        assert_eq!(
            e.details(),
            [
                "function call is missing",
                "function authorize-subscribe is missing"
            ]
        );
    }

    #[tokio::test]
    async fn handler_functions_of_the_wrong_type_are_the_wrong_world() {
        let rt = runtime(None);
        let e = check(&rt, &handler_component("")).await.unwrap_err();
        assert_eq!(e.reason(), "wrong_world");
        let details = e.details();
        assert_eq!(details.len(), 3, "{details:?}");
        for (detail, func) in details.iter().zip(HANDLER_FUNCS) {
            assert!(
                detail.starts_with(&format!("function {func} has the wrong type: ")),
                "{details:?}"
            );
        }
    }

    #[tokio::test]
    async fn sockets_http_and_unknown_imports_are_refused() {
        let rt = runtime(None);
        let wasm = handler_component(
            r#"(import "wasi:sockets/tcp@0.2.3" (instance))
               (import "wasi:http/outgoing-handler@0.2.0" (instance))
               (import "evil:x/y" (instance))
               (import "tenantry:plugin/kv@0.2.0" (instance))
               (import "wasi:cli/environment@0.2.0" (instance))"#,
        );
        let e = check(&rt, &wasm).await.unwrap_err();
        assert_eq!(e.reason(), "refused_imports");
        assert_eq!(
            e.details(),
            [
                "wasi:sockets/tcp@0.2.3",
                "wasi:http/outgoing-handler@0.2.0",
                "evil:x/y",
                "tenantry:plugin/kv@0.2.0",
            ]
        );
        assert!(e.to_string().contains("evil:x/y"), "{e}");
    }

    #[tokio::test]
    async fn a_real_plugin_using_the_network_and_files_is_refused() {
        let rt = runtime(None);
        let e = check(&rt, &plugin("sneaky")).await.unwrap_err();
        assert_eq!(e.reason(), "refused_imports", "{e}");
        let refused = e.details();
        for wanted in [
            "wasi:sockets/tcp@0.2.6",
            "wasi:sockets/tcp-create-socket@0.2.6",
            "wasi:sockets/udp@0.2.6",
            "wasi:sockets/ip-name-lookup@0.2.6",
            "wasi:sockets/network@0.2.6",
            "wasi:filesystem/types@0.2.6",
            "wasi:filesystem/preopens@0.2.6",
        ] {
            assert!(refused.iter().any(|r| r == wanted), "{wanted}: {refused:?}");
        }
        // Only those: its clocks, stdio and tenantry imports are fine.
        assert!(
            refused
                .iter()
                .all(|r| r.starts_with("wasi:sockets/") || r.starts_with("wasi:filesystem/")),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn broken_components_fail_to_compile() {
        let rt = runtime(None);
        let chat = plugin("chat");
        let truncated = chat[..chat.len() / 2].to_vec();
        let mut bad_section = component("(component)");
        bad_section.extend_from_slice(&[0x7f, 0x05, 1, 2, 3]);
        for bad in [truncated, bad_section, b"\0asm".to_vec()] {
            let e = check(&rt, &bad).await.unwrap_err();
            assert_eq!(e.reason(), "compile_failed", "{e}");
            assert!(!e.details()[0].is_empty());
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[tokio::test]
    async fn imports_the_host_cannot_link_fail_to_compile() {
        let rt = runtime(None);
        // An allowed name, but not the host's type for it.
        let wasm = handler_component(
            r#"(import "tenantry:plugin/log@0.1.0" (instance
                   (export "log" (func (param "x" u32)))))"#,
        );
        let e = check(&rt, &wasm).await.unwrap_err();
        assert_eq!(e.reason(), "compile_failed", "{e}");
        assert!(e.details()[0].contains("tenantry:plugin/log"), "{e}");
    }

    #[tokio::test]
    async fn a_slow_compile_times_out() {
        let rt = runtime(None);
        let e = rt
            .check_plugin(&plugin("chat"), Duration::from_millis(1))
            .await
            .unwrap_err();
        assert_eq!(e, PluginRejection::CompileTimeout { after_ms: 1 });
        assert_eq!(e.reason(), "compile_timeout");
        // The compile slot comes back once the abandoned compile ends.
        check(&rt, &plugin("chat")).await.unwrap();
        assert_eq!(
            rt.compile_slots.available_permits(),
            crate::runtime::compile_slots()
        );
    }

    #[tokio::test]
    async fn an_accepted_plugin_is_in_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(Some(dir.path().to_owned()));
        let wasm = plugin("fixture");
        check(&rt, &wasm).await.unwrap();
        let compiled = rt.compile(Arc::from(wasm.as_slice()), None).await.unwrap();
        assert!(compiled.from_cache, "load_plugin would hit the cache");
        // A rejected upload leaves nothing behind.
        let dir2 = tempfile::tempdir().unwrap();
        let rt2 = runtime(Some(dir2.path().to_owned()));
        check(&rt2, &handler_component("")).await.unwrap_err();
        assert_eq!(std::fs::read_dir(dir2.path()).map_or(0, |d| d.count()), 0);
    }

    #[test]
    fn version_tracks() {
        assert!(compatible("0.1.0", (0, 1)));
        assert!(compatible("0.1.7", (0, 1)));
        assert!(compatible("0.1.7+abc", (0, 1)));
        assert!(!compatible("0.1.0-rc1", (0, 1)));
        assert!(!compatible("0.2.0", (0, 1)));
        assert!(!compatible("1.1.0", (0, 1)));
        assert!(!compatible("0.1", (0, 1)));
        assert!(!compatible("", (0, 1)));
        assert!(import_allowed("tenantry:plugin/kv@0.1.3"));
        assert!(!import_allowed("tenantry:plugin/handler@0.1.0"));
        assert!(!import_allowed("wasi:sockets/tcp@0.2.0"));
        assert!(!import_allowed("wasi:cli/environment"));
    }
}
