//! wasmgate: a reverse proxy whose policy lives in hot-reloadable WebAssembly components.
//!
//! The library is what the `wasmgate` binary runs and what the end-to-end tests start:
//! `wasmgate_config::Config::load` → [`Server::start`] → [`Server::reload`] / [`Server::shutdown`].

pub mod admin;
pub mod demo;
pub mod handover;
pub mod process;
pub mod reload;

pub use process::{Server, StartError};
