//! `Config::parse` on arbitrary text: errors are fine, panics are not. Valid configs must survive a
//! second look (the listener and site counts are stable).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let path = std::path::Path::new("/nonexistent-wasmgate-fuzz/wasmgate.toml");
    if let Ok(cfg) = wasmgate_config::Config::parse(text, path) {
        let again = wasmgate_config::Config::parse(text, path).expect("a config that parsed once parses again");
        assert_eq!(cfg.listeners, again.listeners);
        assert_eq!(cfg.sites.len(), again.sites.len());
    }
});
