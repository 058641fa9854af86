//! The example plugins built with the host.
//!
//! `host/build.rs` builds the `plugins/` workspace for `wasm32-wasip2`
//! (release) on every host build that needs it. The demo tenant's `chat`
//! plugin is compiled into the binary ([`CHAT_WASM`]), so `tenantry serve`
//! works with no file around; the other plugins (such as `fixture`, for tests
//! and load tools) are found on disk with [`plugin_path`].

use std::path::{Path, PathBuf};

/// The directory holding the built `.wasm` files
/// (`plugins/target/wasm32-wasip2/release`), set by the build script.
const GUEST_DIR: &str = env!("TENANTRY_GUEST_DIR");

/// The `chat` plugin (crate `plugins/chat`), embedded in the binary: the
/// demo tenant's plugin.
pub static CHAT_WASM: &[u8] = include_bytes!(concat!(env!("TENANTRY_GUEST_DIR"), "/chat.wasm"));

/// Names of the plugins compiled into the binary, for [`embedded`].
pub const EMBEDDED: &[&str] = &["chat"];

/// The bytes of a plugin compiled into the binary (`"chat"`), or `None` if
/// no plugin of that name is embedded.
pub fn embedded(name: &str) -> Option<&'static [u8]> {
    match name {
        "chat" => Some(CHAT_WASM),
        _ => None,
    }
}

/// The directory where the build script put the built plugins. It is an
/// absolute path on the machine that built the host: meant for tests and
/// tools run from the source tree.
pub fn plugin_dir() -> &'static Path {
    Path::new(GUEST_DIR)
}

/// The built `.wasm` of the example plugin `name` (`"chat"`, `"fixture"`),
/// as cargo names it (`-` in a crate name becomes `_`). The file exists for
/// every member of the `plugins/` workspace after a host build.
pub fn plugin_path(name: &str) -> PathBuf {
    plugin_dir().join(format!("{}.wasm", name.replace('-', "_")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::component::Component;
    use wasmtime::component::types::ComponentItem;
    use wasmtime::{Config, Engine};

    /// The interface every plugin must export.
    const HANDLER: &str = "tenantry:plugin/handler@0.1.0";

    /// The functions of the component's `handler` export, sorted.
    fn exports_handler(engine: &Engine, wasm: &[u8]) -> Vec<String> {
        let component = Component::new(engine, wasm).unwrap();
        let ty = component.component_type();
        let (_, handler) = ty
            .exports(engine)
            .find(|(name, _)| *name == HANDLER)
            .unwrap_or_else(|| panic!("component does not export {HANDLER}"));
        let ComponentItem::ComponentInstance(instance) = handler.ty else {
            panic!("{HANDLER} is not an instance export");
        };
        let mut funcs: Vec<String> = instance
            .exports(engine)
            .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentFunc(_)))
            .map(|(n, _)| n.to_owned())
            .collect();
        funcs.sort();
        funcs
    }

    #[test]
    fn embedded_chat_is_the_built_file() {
        assert!(CHAT_WASM.starts_with(b"\0asm"));
        let on_disk = std::fs::read(plugin_path("chat")).unwrap();
        assert_eq!(on_disk.as_slice(), CHAT_WASM);
        assert_eq!(embedded("chat"), Some(CHAT_WASM));
        assert_eq!(embedded("fixture"), None);
    }

    #[test]
    fn bundled_plugins_are_components_exporting_the_handler() {
        let engine = Engine::new(&Config::new()).unwrap();
        // Unused imports are dropped when the component is made: chat does not log.
        for (name, wants) in [
            ("chat", &["pubsub", "kv"][..]),
            ("fixture", &["pubsub", "kv", "log"][..]),
        ] {
            let wasm = std::fs::read(plugin_path(name)).unwrap();
            assert_eq!(
                exports_handler(&engine, &wasm),
                ["authenticate", "authorize-subscribe", "call"],
                "{name}"
            );
            // Only the Tenantry imports and the WASI p2 glue Rust's std needs.
            let component = Component::new(&engine, &wasm).unwrap();
            let imports: Vec<String> = component
                .component_type()
                .imports(&engine)
                .map(|(n, _)| n.to_owned())
                .collect();
            for import in &imports {
                assert!(
                    import.starts_with("tenantry:plugin/") || import.starts_with("wasi:"),
                    "{name} imports {import}"
                );
            }
            for wanted in wants {
                let full = format!("tenantry:plugin/{wanted}@0.1.0");
                assert!(imports.contains(&full), "{name} lacks {full}: {imports:?}");
            }
        }
    }
}
