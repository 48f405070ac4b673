//! A native test harness: run a plugin's logic under plain `cargo test`, through the same start-up
//! path as in wasmgate (config JSON → `Config` → `Plugin::new` → `hooks`).
//!
//! ```
//! use wasmgate_plugin_sdk::prelude::*;
//! use wasmgate_plugin_sdk::testing::{self, TestRequest};
//!
//! struct Deny;
//! impl Plugin for Deny {
//!     type Config = NoConfig;
//!     fn new(_: NoConfig) -> Result<Self, InitError> { Ok(Deny) }
//!     fn on_request(&mut self, _: &Request) -> Decision { Decision::respond(403) }
//! }
//!
//! let mut p = testing::instantiate::<Deny>(serde_json::json!({}));
//! assert_eq!(p.on_request(&TestRequest::get("/").build()).status(), Some(403));
//! assert!(testing::try_instantiate::<Deny>(serde_json::json!({"x": 1})).is_err());
//! ```
//!
//! Files for `read_config_file` and a fixed wall clock come from a [`TestHost`]:
//! `testing::with_file("tokens.txt", "a\nb").wall_clock_ms(1_700_000_000_000).instantiate::<P>(cfg)`.

pub(crate) mod double;
mod request;

use std::rc::Rc;

pub use request::{TestRequest, TestResponse};

use crate::plugin::{start, Plugin, Registration};
use crate::{Decision, HeaderOp, Hooks, Level, Request, RequestInfo, ResponseHead};
use double::{with_host, State};

/// The host as a plugin under test sees it: config files and a wall clock. Cheap to clone; clones
/// share files, clock and log.
#[derive(Clone, Debug, Default)]
pub struct TestHost {
    state: Rc<State>,
}

impl TestHost {
    pub fn new() -> Self {
        Self::default()
    }

    /// Provide a file for `read_config_file(path)`.
    pub fn file(self, path: &str, contents: impl AsRef<[u8]>) -> Self {
        self.state
            .files
            .borrow_mut()
            .insert(path.to_owned(), contents.as_ref().to_vec());
        self
    }

    /// Fix `wall_now_ms()` at this value (default: the real clock).
    pub fn wall_clock_ms(self, ms: u64) -> Self {
        self.state.wall_ms.set(Some(ms));
        self
    }

    /// Start a plugin with this config, panicking with `init`'s error message if it refuses.
    #[track_caller]
    pub fn instantiate<P: Plugin>(&self, config: serde_json::Value) -> TestPlugin<P> {
        self.try_instantiate(config)
            .unwrap_or_else(|e| panic!("plugin refused to start: {e}"))
    }

    /// Start a plugin with this config; `Err` is the message `init` would return to wasmgate.
    pub fn try_instantiate<P: Plugin>(
        &self,
        config: serde_json::Value,
    ) -> Result<TestPlugin<P>, String> {
        // Through a string, as from the host, so the same parser and messages are exercised.
        let json = config.to_string();
        let (plugin, registration) = with_host(&self.state, || start::<P>(&json))?;
        Ok(TestPlugin {
            plugin,
            registration,
            host: self.clone(),
        })
    }

    /// Like [`TestHost::instantiate`], with the config written as in wasmgate's TOML (the body of
    /// the `config` table, e.g. `tokens = ["a"]`).
    #[track_caller]
    pub fn instantiate_toml<P: Plugin>(&self, toml: &str) -> TestPlugin<P> {
        self.try_instantiate_toml(toml)
            .unwrap_or_else(|e| panic!("plugin refused to start: {e}"))
    }

    /// Like [`TestHost::try_instantiate`], with the config as TOML.
    pub fn try_instantiate_toml<P: Plugin>(&self, toml: &str) -> Result<TestPlugin<P>, String> {
        let table: toml::Table = toml::from_str(toml).map_err(|e| format!("bad TOML: {e}"))?;
        let json = serde_json::to_value(table).map_err(|e| format!("bad TOML: {e}"))?;
        self.try_instantiate(json)
    }

    /// Lines the plugin logged, oldest first.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.state.logs.borrow().clone()
    }

    /// Answer every `verify_password` with `Throttled` (as the host does for an address that
    /// failed too often), or check passwords again with `None`.
    pub fn throttle_passwords(self, retry_after_secs: Option<u32>) -> Self {
        self.state.throttle.set(retry_after_secs);
        self
    }

    /// The lines the plugin refused with `report_config_problem`: (path, line, message).
    pub fn config_problems(&self) -> Vec<(String, u32, String)> {
        self.state.problems.borrow().clone()
    }

    /// The paths the plugin asked for with `read_config_file`, in order.
    pub fn files_read(&self) -> Vec<String> {
        self.state.files_read.borrow().clone()
    }
}

/// A running plugin instance. Hooks behave as the host calls them: a hook the plugin did not list in
/// `hooks()` is not called (on-request then continues unchanged, on-response changes nothing), a hook
/// sees only the headers the plugin declared (`request_headers`, `response_headers`), and the fixed
/// response edits come after `on_response`'s own.
pub struct TestPlugin<P> {
    plugin: P,
    registration: Registration,
    host: TestHost,
}

impl<P: Plugin> TestPlugin<P> {
    /// The hooks the plugin asked for at init.
    pub fn hooks(&self) -> Hooks {
        self.registration.hooks
    }

    /// Everything the plugin told the host at init.
    pub fn registration(&self) -> &Registration {
        &self.registration
    }

    pub fn on_request(&mut self, req: &Request) -> Decision {
        if !self.registration.hooks.on_request {
            return Decision::allow();
        }
        let seen = Request {
            headers: Registration::filter(&self.registration.request_headers, &req.headers),
            ..req.clone()
        };
        let plugin = &mut self.plugin;
        self.host.state.max_age_ms.set(None);
        with_host(&self.host.state, || plugin.on_request(&seen))
    }

    /// What the last `on_request` call passed to `limit_decision_cache` (the shortest), if anything.
    pub fn last_cache_limit(&self) -> Option<std::time::Duration> {
        self.host
            .state
            .max_age_ms
            .get()
            .map(std::time::Duration::from_millis)
    }

    /// The edits the host would apply to this response for this plugin: `on_response`'s (if listed),
    /// then the fixed ones.
    pub fn on_response(&mut self, req: &RequestInfo, resp: &ResponseHead) -> Vec<HeaderOp> {
        let mut ops = Vec::new();
        if self.registration.hooks.on_response {
            let seen = ResponseHead {
                status: resp.status,
                headers: Registration::filter(&self.registration.response_headers, &resp.headers),
            };
            let plugin = &mut self.plugin;
            ops = with_host(&self.host.state, || plugin.on_response(req, &seen));
        }
        ops.extend(self.registration.fixed_response_edits.iter().cloned());
        ops
    }

    /// Move the fixed wall clock (e.g. past a token's expiry).
    pub fn set_wall_clock_ms(&self, ms: u64) {
        self.host.state.wall_ms.set(Some(ms));
    }

    /// The host this instance runs on (its logs, the files it read).
    pub fn host(&self) -> &TestHost {
        &self.host
    }

    /// The plugin value itself, for white-box assertions.
    pub fn plugin(&self) -> &P {
        &self.plugin
    }
}

/// A fresh [`TestHost`] with one file; chain `.file(..)` for more.
pub fn with_file(path: &str, contents: impl AsRef<[u8]>) -> TestHost {
    TestHost::new().file(path, contents)
}

/// Start a plugin on a host without files; panics if `init` fails.
#[track_caller]
pub fn instantiate<P: Plugin>(config: serde_json::Value) -> TestPlugin<P> {
    TestHost::new().instantiate(config)
}

/// Start a plugin on a host without files; `Err` is `init`'s message.
pub fn try_instantiate<P: Plugin>(config: serde_json::Value) -> Result<TestPlugin<P>, String> {
    TestHost::new().try_instantiate(config)
}

/// Start a plugin from a TOML config body on a host without files; panics if `init` fails.
#[track_caller]
pub fn instantiate_toml<P: Plugin>(toml: &str) -> TestPlugin<P> {
    TestHost::new().instantiate_toml(toml)
}

/// Start a plugin from a TOML config body; `Err` is `init`'s message (or a TOML syntax error).
pub fn try_instantiate_toml<P: Plugin>(toml: &str) -> Result<TestPlugin<P>, String> {
    TestHost::new().try_instantiate_toml(toml)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{read_config_text, wall_now_ms, InitError};

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        file: String,
    }

    struct Reader {
        lines: Vec<String>,
    }

    impl Plugin for Reader {
        type Config = Cfg;
        fn new(c: Cfg) -> Result<Self, InitError> {
            let text = read_config_text(&c.file)?;
            crate::log(Level::Info, "started");
            Ok(Reader {
                lines: text.lines().map(str::to_owned).collect(),
            })
        }
        fn hooks(&self) -> Hooks {
            Hooks::REQUEST
        }
        fn on_request(&mut self, _: &Request) -> Decision {
            // Reading in a hook must fail, as on the real host.
            let denied = crate::read_config_file(&self.lines[0]).is_err();
            Decision::allow()
                .set_header("x-denied", denied.to_string())
                .set_header("x-now", wall_now_ms().to_string())
        }
        fn on_response(&mut self, _: &RequestInfo, _: &ResponseHead) -> Vec<HeaderOp> {
            vec![HeaderOp::set("x-called", "1")]
        }
    }

    #[test]
    fn files_clock_and_hooks() {
        let host = with_file("f.txt", "f.txt\nb").wall_clock_ms(42);
        let mut p = host.instantiate_toml::<Reader>(r#"file = "f.txt""#);
        assert_eq!(p.plugin().lines, ["f.txt", "b"]);
        assert_eq!(host.files_read(), ["f.txt"]);
        assert_eq!(host.logs(), [(Level::Info, "started".to_owned())]);
        let d = p.on_request(&TestRequest::get("/").build());
        let e = d.edits().expect("allowed");
        assert_eq!(
            e.headers,
            [
                HeaderOp::set("x-denied", "true"),
                HeaderOp::set("x-now", "42")
            ]
        );
        // on-response is not listed in hooks(), so the host never calls it.
        let info = TestRequest::get("/").info();
        assert!(p
            .on_response(&info, &TestResponse::status(200).build())
            .is_empty());
    }

    #[test]
    fn init_errors_are_messages() {
        let e = with_file("f.txt", "x")
            .try_instantiate::<Reader>(serde_json::json!({"file": "missing.txt"}))
            .err()
            .expect("must fail");
        assert_eq!(e, "cannot read config file `missing.txt`: no such file");
        let e = try_instantiate::<Reader>(serde_json::json!({"fiel": "x"}))
            .err()
            .expect("must fail");
        assert_eq!(
            e,
            "invalid config at `fiel`: unknown field `fiel`, expected `file`"
        );
        let e = try_instantiate_toml::<Reader>("file = ")
            .err()
            .expect("must fail");
        assert!(e.starts_with("bad TOML"), "{e}");
    }

    /// Sees only what it declared, as under the host.
    struct Peek;

    impl Plugin for Peek {
        type Config = crate::NoConfig;
        fn new(_: crate::NoConfig) -> Result<Self, InitError> {
            Ok(Peek)
        }
        fn request_headers(&self) -> Option<Vec<String>> {
            Some(vec!["X-Token".into()])
        }
        fn on_request(&mut self, req: &Request) -> Decision {
            let seen: Vec<&str> = req.headers.iter().map(|h| h.name.as_str()).collect();
            Decision::allow().set_header("x-seen", seen.join(","))
        }
    }

    #[test]
    fn hooks_see_only_declared_headers() {
        let mut p = instantiate::<Peek>(serde_json::json!({}));
        assert_eq!(
            p.registration().request_headers,
            Some(vec!["x-token".to_owned()])
        );
        let req = TestRequest::get("/")
            .header("x-token", "t")
            .header("cookie", "secret")
            .build();
        assert_eq!(
            p.on_request(&req),
            Decision::allow().set_header("x-seen", "x-token")
        );
    }
}
