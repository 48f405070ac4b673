//! Support for wasmgate's end-to-end tests: real backends, real certificates, the real proxy — each on
//! `127.0.0.1:0`, each owned by the test that started it.

pub mod backend;
pub mod certs;
pub mod client;
pub mod proxy;

/// Log to the test output when `RUST_LOG` is set (`RUST_LOG=wasmgate=debug cargo test …`).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
