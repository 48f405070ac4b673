//! The one place `bindgen!` runs; everything else uses these types. The WIT lives in `/wit`.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "plugin",
    // Calls run on a fiber so that WASI's stream functions (a `println!` in a plugin) are async host
    // calls instead of a nested `block_on` inside the proxy's tokio runtime.
    exports: { default: async },
    // `verify-password` suspends the guest's fiber while a host thread hashes (see `password.rs`).
    imports: { "wasmgate:plugin/host.verify-password": async },
});

pub use wasmgate::plugin::host::{Level, PasswordVerdict};
pub use wasmgate::plugin::types::{
    DecisionCache, Header, HeaderOp, HookSet, HttpVersion, IpAddress, Method, Registration,
    Request, RequestAction, RequestInfo, RequestPart, ResponseHead, Scheme, TlsInfo,
};
