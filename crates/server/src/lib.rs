//! The serving layer: listeners and connections. Bind once, accept, terminate TLS, serve HTTP/1.1
//! and HTTP/2 with hyper, and drain gracefully; the live runtime is swapped underneath without
//! touching sockets.
//!
//! It stands on the pipeline (`wasmgate_proxy::handle` answers every request) and knows nothing
//! of reload, admin or handover: the control layer (the `wasmgate` crate) binds through [`bind`],
//! builds a [`ListenerCtx`] per listener and runs [`accept_loop`].

pub mod conn_limits;
mod connection;
mod listen;
pub mod proxy_protocol;
pub mod tls;
pub mod watchdog;

pub use listen::{accept_loop, bind, ListenerCtx};
