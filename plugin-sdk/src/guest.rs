//! The component glue: the one place wit-bindgen runs (against `../wit`, the single copy of the
//! contract) and the conversions between its types and the SDK's. Compiled for wasm32 only.

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::plugin::{start, Plugin};
use crate::{Decision, Header, HeaderOp, Request, RequestInfo, ResponseHead, TlsInfo};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "wasmgate:plugin/plugin",
        // The export macro is invoked by `export_plugin!` in the plugin's crate, so it must be public,
        // and its generated code must find these bindings and the wit-bindgen runtime through the SDK
        // (plugins do not depend on wit-bindgen).
        pub_export_macro: true,
        export_macro_name: "__wasmgate_export_hooks",
        default_bindings_module: "::wasmgate_plugin_sdk::__private::bindings",
        runtime_path: "::wasmgate_plugin_sdk::__private::wit_bindgen::rt",
    });
}

use bindings::wasmgate::plugin::host as wit_host;
use bindings::wasmgate::plugin::types as wit;

/// The host side of `crate::host` in the wasm build.
pub(crate) mod host_imports {
    use super::wit_host;
    use crate::host::Level;

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => wit_host::Level::Trace,
            Level::Debug => wit_host::Level::Debug,
            Level::Info => wit_host::Level::Info,
            Level::Warn => wit_host::Level::Warn,
            Level::Error => wit_host::Level::Error,
        };
        wit_host::log(level, message);
    }

    pub fn monotonic_now() -> u64 {
        wit_host::monotonic_now()
    }

    pub fn wall_now() -> u64 {
        wit_host::wall_now()
    }

    pub fn read_config_file(path: &str) -> Result<Vec<u8>, String> {
        wit_host::read_config_file(path)
    }

    pub fn identity_headers(names: Vec<String>) {
        wit_host::identity_headers(&names)
    }

    pub fn report_config_problem(path: &str, line: u32, message: &str) {
        wit_host::report_config_problem(path, line, message)
    }

    pub fn limit_decision_cache(max_age_ms: u64) {
        wit_host::limit_decision_cache(max_age_ms)
    }

    pub fn verify_password(
        hash: &str,
        password: &[u8],
    ) -> Result<crate::host::PasswordVerdict, String> {
        use crate::host::PasswordVerdict as V;
        Ok(match wit_host::verify_password(hash, password)? {
            wit_host::PasswordVerdict::Match => V::Match,
            wit_host::PasswordVerdict::Mismatch => V::Mismatch,
            wit_host::PasswordVerdict::Throttled(s) => V::Throttled {
                retry_after_secs: s,
            },
        })
    }

    /// The host itself refuses file reads outside `init`; nothing to track here.
    pub fn during_init<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// Where `export_plugin!` keeps the instance: wasm instances are single-threaded, and a `thread_local`
/// needs no `Sync` bound on the plugin.
pub type Slot<P> = LocalKey<RefCell<Option<P>>>;

thread_local! {
    /// The site this instance serves, from `init` (it is the same for every request).
    static SITE: RefCell<String> = const { RefCell::new(String::new()) };
}

pub fn init<P: Plugin>(
    slot: &'static Slot<P>,
    config: String,
    site: String,
) -> Result<wit::Registration, String> {
    SITE.with(|s| *s.borrow_mut() = site);
    let (plugin, reg) = start::<P>(&config)?;
    slot.with(|s| *s.borrow_mut() = Some(plugin));
    let mut hooks = wit::HookSet::empty();
    if reg.hooks.on_request {
        hooks = hooks | wit::HookSet::ON_REQUEST;
    }
    if reg.hooks.on_response {
        hooks = hooks | wit::HookSet::ON_RESPONSE;
    }
    Ok(wit::Registration {
        hooks,
        request_headers: reg.request_headers,
        response_headers: reg.response_headers,
        fixed_response_edits: reg
            .fixed_response_edits
            .into_iter()
            .map(header_op)
            .collect(),
        decision_cache: reg.decision_cache.map(|c| wit::DecisionCache {
            key: c.key.into_iter().map(request_part).collect(),
            ttl_ms: c.ttl.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
        }),
    })
}

fn request_part(p: crate::RequestPart) -> wit::RequestPart {
    use crate::RequestPart as P;
    match p {
        P::Header(n) => wit::RequestPart::Header(n),
        P::ClientAddr => wit::RequestPart::ClientAddr,
        P::Method => wit::RequestPart::Method,
        P::Scheme => wit::RequestPart::Scheme,
        P::Authority => wit::RequestPart::Authority,
        P::Path => wit::RequestPart::Path,
        P::Query => wit::RequestPart::Query,
        P::Route => wit::RequestPart::Route,
        P::WebSocket => wit::RequestPart::Websocket,
    }
}

pub fn on_request<P: Plugin>(slot: &'static Slot<P>, req: wit::Request) -> wit::RequestAction {
    let req = request(req);
    // A hook before a successful init is a host bug; panicking traps and the host fails closed.
    let decision = slot.with(|s| instance(&mut s.borrow_mut()).on_request(&req));
    match decision {
        Decision::Continue(e) => wit::RequestAction::Continue(wit::RequestEdits {
            headers: e.headers.into_iter().map(header_op).collect(),
            path: e.path,
        }),
        Decision::Respond(r) => wit::RequestAction::Respond(wit::Response {
            status: r.status,
            headers: r.headers.into_iter().map(header_out).collect(),
            body: r.body,
        }),
    }
}

pub fn on_response<P: Plugin>(
    slot: &'static Slot<P>,
    info: wit::RequestInfo,
    head: wit::ResponseHead,
) -> Vec<wit::HeaderOp> {
    let info = request_info(info);
    let head = ResponseHead {
        status: head.status,
        headers: head.headers.into_iter().map(header_in).collect(),
    };
    let ops = slot.with(|s| instance(&mut s.borrow_mut()).on_response(&info, &head));
    ops.into_iter().map(header_op).collect()
}

fn instance<P>(slot: &mut Option<P>) -> &mut P {
    slot.as_mut()
        .expect("wasmgate plugin hook called before a successful init")
}

fn request(r: wit::Request) -> Request {
    Request {
        info: request_info(r.info),
        version: match r.version {
            wit::HttpVersion::Http10 => "HTTP/1.0",
            wit::HttpVersion::Http11 => "HTTP/1.1",
            wit::HttpVersion::Http2 => "HTTP/2",
        }
        .to_owned(),
        headers: r.headers.into_iter().map(header_in).collect(),
        tls: r.tls.map(|t| TlsInfo {
            sni: t.sni,
            alpn: t.alpn,
            version: t.version,
        }),
    }
}

fn request_info(i: wit::RequestInfo) -> RequestInfo {
    let method = match i.method {
        wit::Method::Get => "GET".to_owned(),
        wit::Method::Head => "HEAD".to_owned(),
        wit::Method::Post => "POST".to_owned(),
        wit::Method::Put => "PUT".to_owned(),
        wit::Method::Delete => "DELETE".to_owned(),
        wit::Method::Connect => "CONNECT".to_owned(),
        wit::Method::Options => "OPTIONS".to_owned(),
        wit::Method::Trace => "TRACE".to_owned(),
        wit::Method::Patch => "PATCH".to_owned(),
        wit::Method::Other(m) => m,
    };
    let client_addr = match i.client_addr {
        wit::IpAddress::Ipv4((a, b, c, d)) => std::net::Ipv4Addr::new(a, b, c, d).to_string(),
        wit::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
            std::net::Ipv6Addr::new(a, b, c, d, e, f, g, h).to_string()
        }
    };
    RequestInfo {
        id: i.id,
        method,
        scheme: match i.scheme {
            wit::Scheme::Http => "http",
            wit::Scheme::Https => "https",
        }
        .to_owned(),
        authority: i.authority,
        path: i.path,
        query: i.query,
        client_addr,
        site: SITE.with(|s| s.borrow().clone()),
        route: i.route,
        websocket: i.websocket,
    }
}

fn header_in(h: wit::Header) -> Header {
    // The host already sends lower-case names; no need to copy them through `Header::new`.
    Header {
        name: h.name,
        value: h.value,
    }
}

fn header_out(h: Header) -> wit::Header {
    wit::Header {
        name: h.name,
        value: h.value,
    }
}

fn header_op(op: HeaderOp) -> wit::HeaderOp {
    match op {
        HeaderOp::Set(h) => wit::HeaderOp::Set(header_out(h)),
        HeaderOp::Append(h) => wit::HeaderOp::Append(header_out(h)),
        HeaderOp::Remove(n) => wit::HeaderOp::Remove(n),
    }
}
