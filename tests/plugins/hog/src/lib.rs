//! Fixture: allocates 1 GiB and writes to every page when the path contains `/hog`, to test the
//! memory limit. Without one it would succeed and answer `x-hog: done`.

use std::hint::black_box;

use wasmgate_plugin_sdk::prelude::*;

const GIB: usize = 1 << 30;
const PAGE: usize = 64 * 1024;

pub struct Hog;

impl Plugin for Hog {
    type Config = NoConfig;

    fn new(_: NoConfig) -> Result<Self, InitError> {
        Ok(Hog)
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request(&mut self, req: &Request) -> Decision {
        if !req.path.contains("/hog") {
            return Decision::allow();
        }
        // Allocation failure aborts (a trap); touching each page makes the memory really used.
        let mut v: Vec<u8> = Vec::with_capacity(GIB);
        for _ in 0..GIB / PAGE {
            v.push(1);
            v.extend(std::iter::repeat_n(0u8, PAGE - 1));
        }
        black_box(&mut v);
        Decision::allow().set_header("x-hog", "done")
    }
}

wasmgate_plugin_sdk::export_plugin!(Hog);
