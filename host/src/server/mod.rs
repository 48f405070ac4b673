//! The serving layer: listeners and connections. Bind once, accept, terminate TLS, serve HTTP/1.1
//! and HTTP/2 with hyper, and drain gracefully; the live runtime is swapped underneath without
//! touching sockets.

mod connection;
mod listen;

pub use listen::{accept_loop, bind, ListenerCtx};
