//! Write wasmgate policy plugins in Rust.
//!
//! A plugin is a type implementing [`Plugin`], exported with [`export_plugin!`]. The SDK hides the
//! component-model bindings: plugin crates depend on this crate only, and their logic is unit-tested
//! natively with [`testing`] (plain `cargo test`, no wasm build).
//!
//! ```
//! use wasmgate_plugin_sdk::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config { header: String, tokens: Vec<String> }
//!
//! struct TokenCheck(Config);
//!
//! impl Plugin for TokenCheck {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, InitError> { Ok(TokenCheck(config)) }
//!     fn hooks(&self) -> Hooks { Hooks::REQUEST }
//!     fn on_request(&mut self, req: &Request) -> Decision {
//!         match req.header(&self.0.header) {
//!             Some(t) if self.0.tokens.iter().any(|k| k == t) => Decision::allow(),
//!             Some(_) => Decision::respond(403),
//!             None => Decision::respond(401).header("www-authenticate", "Bearer"),
//!         }
//!     }
//! }
//!
//! wasmgate_plugin_sdk::export_plugin!(TokenCheck);
//! # fn main() {}
//! ```

mod decision;
mod hash_kind;
mod host;
mod plugin;
mod query;
mod types;

#[cfg(target_arch = "wasm32")]
mod guest;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use decision::{Decision, RequestEdits, Response};
pub use host::{
    limit_decision_cache, log, now_monotonic_ns, password_hash_kind, read_config_file,
    read_config_text, report_config_problem, verify_password, wall_now_ms, ConfigFileError, Level,
    PasswordVerdict,
};
pub use plugin::{
    parse_config, ConfigError, DecisionCache, InitError, NoConfig, Plugin, Registration,
    RequestPart,
};
pub use query::decode as percent_decode;
pub use types::{Header, HeaderOp, Hooks, Request, RequestInfo, ResponseHead, TlsInfo};

/// Everything a plugin usually needs: `use wasmgate_plugin_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::{
        log, Decision, DecisionCache, Header, HeaderOp, Hooks, InitError, Level, NoConfig, Plugin,
        Request, RequestEdits, RequestInfo, RequestPart, Response, ResponseHead,
    };
}

// The generated bindings refer to themselves through `::wasmgate_plugin_sdk::…` (see `guest.rs`), so
// that the export code expanded in a plugin's crate resolves them; this makes that path work here too.
#[cfg(target_arch = "wasm32")]
extern crate self as wasmgate_plugin_sdk;

/// Not public API: what `export_plugin!`'s expansion refers to.
#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::guest::{bindings, init, on_request, on_response};
    pub use crate::plugin::start;
    #[cfg(target_arch = "wasm32")]
    pub use wit_bindgen;
}

/// Export a [`Plugin`] type as the component's `hooks`: `export_plugin!(MyPlugin);`, once per crate,
/// at the top level.
///
/// On native targets it only checks that the type is a plugin (so `cargo test` builds and runs the
/// plugin's logic without wasm); on wasm32 it also defines the component exports. The instance lives
/// in a thread-local: a wasm instance is single-threaded, and a trap discards the whole instance.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: fn() = || {
            fn assert_plugin<P: $crate::Plugin>() {}
            assert_plugin::<$plugin>();
        };

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::bindings::exports::wasmgate::plugin::hooks as __hooks;
            use $crate::__private::bindings::wasmgate::plugin::types as __types;

            ::std::thread_local! {
                static __INSTANCE: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct __WasmgateExport;

            impl __hooks::Guest for __WasmgateExport {
                fn init(
                    config: ::std::string::String,
                    site: ::std::string::String,
                ) -> ::core::result::Result<__types::Registration, ::std::string::String> {
                    $crate::__private::init::<$plugin>(&__INSTANCE, config, site)
                }

                fn on_request(request: __types::Request) -> __types::RequestAction {
                    $crate::__private::on_request::<$plugin>(&__INSTANCE, request)
                }

                fn on_response(
                    request: __types::RequestInfo,
                    response: __types::ResponseHead,
                ) -> ::std::vec::Vec<__types::HeaderOp> {
                    $crate::__private::on_response::<$plugin>(&__INSTANCE, request, response)
                }
            }

            $crate::__private::bindings::__wasmgate_export_hooks!(
                __WasmgateExport with_types_in $crate::__private::bindings
            );
        };
    };
}
