//! Fixture: refuses to start, to test that a failing `init` refuses the plugin (and that at a reload
//! the old version keeps serving).

use wasmgate_plugin_sdk::prelude::*;

pub struct InitFail;

impl Plugin for InitFail {
    // Any config at all, so the refusal below is always the error the test sees.
    type Config = serde::de::IgnoredAny;

    fn new(_: serde::de::IgnoredAny) -> Result<Self, InitError> {
        Err("fixture refuses to start".into())
    }
}

wasmgate_plugin_sdk::export_plugin!(InitFail);
