//! The pipeline's two contexts: [`ServeCtx`], what every connection's requests and tunnels share
//! and all the pipeline may touch of the process (the live runtime, request ids, the shutdown
//! signals and task set tunnels join); and [`RequestCtx`], one request's own.

use std::sync::Arc;

use http::Request;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use wasmgate_core::conn::ConnInfo;
use wasmgate_core::ids::RequestIds;
use wasmgate_core::trace::TraceParent;
use wasmgate_observe::log::AccessRecord;
use wasmgate_observe::metrics::{Metrics, RouteMetrics};
use wasmgate_plugins::LoadedPlugin;
use wasmgate_runtime::forwarded::ClientAddr;
use wasmgate_runtime::{Runtime, SharedRuntime};

pub struct ServeCtx {
    pub runtime: SharedRuntime,
    /// The server's metrics (the admin endpoint renders them).
    pub metrics: Arc<Metrics>,
    /// Handles for requests no site took (bad requests, unknown hosts): site, route, tenant `-`.
    pub unrouted: Arc<RouteMetrics>,
    pub ids: RequestIds,
    /// Fires when shutdown starts: stop accepting, finish in-flight requests, refuse new tunnels.
    pub draining: CancellationToken,
    /// Fires when the grace period is over: open tunnels are closed.
    pub tunnels_cancel: CancellationToken,
    /// Connections, tunnels and backend connections, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

impl ServeCtx {
    /// `life` is the builders' ([`wasmgate_runtime::Builders::life`]): backend connections join the
    /// same task set and see the same draining signal.
    pub fn new(
        runtime: SharedRuntime,
        metrics: Arc<Metrics>,
        life: &wasmgate_runtime::Lifecycle,
    ) -> ServeCtx {
        ServeCtx {
            runtime,
            unrouted: Arc::new(RouteMetrics::new(&metrics, "-", "-", None)),
            metrics,
            ids: RequestIds::new(),
            draining: life.draining.clone(),
            tunnels_cancel: CancellationToken::new(),
            tasks: life.tasks.clone(),
        }
    }
}

static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// One request on its way through the phases ([`crate::handle`]): what is known of it before
/// routing, and what the phases add. Routing's decision is the separate [`crate::Routed`].
pub struct RequestCtx {
    pub conn: Arc<ConnInfo>,
    /// Who the client is, derived once (trusted proxies walked): plugins, the log and the backend
    /// all get this.
    pub client: ClientAddr,
    /// The access line being filled in; written when the response body (or the tunnel) ends.
    pub access: AccessRecord,
    /// Plugins whose `on-request` ran, in order: their `on-response` runs, last first.
    pub ran: Vec<Arc<LoadedPlugin>>,
    /// The client's W3C trace context, if it sent a valid one (for tracing; not trusted).
    pub trace: Option<TraceParent>,
}

impl RequestCtx {
    pub fn new<B>(serve: &ServeCtx, rt: &Runtime, conn: Arc<ConnInfo>, req: &Request<B>) -> Self {
        let client = rt.trusted.client(conn.peer.ip(), req.headers());
        let request_id = crate::headers::incoming_request_id(req.headers(), client.peer_trusted)
            .unwrap_or_else(|| serve.ids.next());
        let mut access = AccessRecord::new(
            request_id,
            client.ip,
            conn.listener_name.clone(),
            req.method(),
            req.uri().path(),
            req.version(),
            serve.unrouted.clone(),
        );
        if conn.tcp_peer != conn.peer {
            access.proxy_peer = Some(conn.tcp_peer.ip().to_string());
        }
        if wasmgate_observe::log::wants_agents() {
            access.referer = req.headers().get(http::header::REFERER).cloned();
            access.user_agent = req.headers().get(http::header::USER_AGENT).cloned();
        }
        let trace = req
            .headers()
            .get(&TRACEPARENT)
            .and_then(|v| TraceParent::parse(v.as_bytes()));
        RequestCtx {
            conn,
            client,
            access,
            ran: Vec::new(),
            trace,
        }
    }
}
