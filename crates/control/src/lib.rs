//! wasmgate's control plane: what the `wasmgate` binary runs and what the end-to-end tests start,
//! `wasmgate_config::Config::load` → [`Server::start`] → [`Server::reload`] / [`Server::shutdown`].
//! It owns the workers, listeners and admin endpoint ([`process`]), builds and swaps runtimes on
//! reload ([`reload`]), serves `/status`, `/metrics` and `/reload` ([`admin`]), and passes the
//! listening sockets to a successor on `SIGUSR2` ([`handover`]). The layers it stands on, and why
//! each sits where it does: host/README.md.

pub mod admin;
pub mod handover;
pub mod process;
pub mod reload;

pub use process::{Server, StartError};
