//! The bottom layer of wasmgate (issue 16): what every other layer speaks and that itself knows
//! nothing of configuration, plugins or serving. Everything here is plain data and pure functions.

pub mod body;
pub mod conn;
pub mod error;
pub mod ids;
pub mod path;
pub mod request;
pub mod text;
pub mod trace;
