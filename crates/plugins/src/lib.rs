//! Plugins: WebAssembly components, typed by the WIT package in `/wit`, that decide about requests.
//!
//! - `bindings`: the generated types (the only `bindgen!`).
//! - `engine`: the wasmtime engine, epoch ticker, compile cache.
//! - `state`: what a store holds; the host functions a plugin may call.
//! - `instance`: a loaded plugin and its pool of warm instances.
//! - `convert`: HTTP ↔ WIT, and the header guard.
//! - `chain`: one site's or route's plugins run over a request and its response.
//! - `host`: loading a chain's plugins for one server.
//!
//! Per request, the site's chain runs, then the route's; `on-response` runs in reverse for each plugin
//! whose `on-request` ran. A failing plugin (trap, deadline, memory, stack) fails the request closed
//! (500) unless its `on_error = "allow"` — and then the identity headers it declared are removed
//! before the request goes on, so a skipped auth plugin never passes on a client's own claim; either
//! way it is logged with the plugin's name, digest and wasm backtrace, and its instance is discarded.
//! - `caps`: what a plugin may use beyond computing (clock, key-value, outbound HTTP): traits here,
//!   implemented by the runtime layer.
//! - `password`: the host's `verify-password` (native hashing on a bounded pool, cache, throttle).

mod bindings;
pub mod builtin;
mod cache;
#[cfg(test)]
mod cache_oracle;
pub mod caps;
mod chain;
mod convert;
pub mod cpu;
mod engine;
mod host;
mod instance;
mod lane;
mod memory;
mod password;
pub mod quota;
mod state;

pub use chain::{on_response, Chain, Flow};
pub use host::{PluginHost, PluginOwner};
pub use instance::{set_worker, LoadedPlugin};
pub use state::ConfigProblem;
