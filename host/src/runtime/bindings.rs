//! Host bindings generated from `wit/plugin.wit` (async imports and exports).
//! Only [`crate::runtime`] and [`crate::imports`] use these types.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
});
