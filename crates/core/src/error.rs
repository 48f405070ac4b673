//! Errors on the request path, each with the side it came from, and the one place where an error
//! becomes a response.

use std::fmt;

use bytes::Bytes;
use http::{header, Response, StatusCode};

use crate::body::{full, BoxError, ProxyBody};

/// Which side of the proxy a failure belongs to; the access log and metrics report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we will not serve.
    Downstream,
    /// The backend failed us.
    Upstream,
    /// A plugin or the proxy itself.
    Internal,
}

/// Why a call into a plugin failed. Classified where the failure happens (a typed trap or limit
/// error, never the wording of a message); the metrics' `kind` label and the log say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// Ran past its time limit (an epoch interrupt), or still running at the wall-clock limit.
    Deadline,
    /// Asked for more memory than its limit.
    Memory,
    /// Overflowed its stack.
    Stack,
    /// Any other trap: a panic, `unreachable`, a bad host call.
    Trap,
    /// The component could not be instantiated.
    Instantiate,
    /// Its `init` refused its config, or trapped.
    Init,
    /// It needed a new instance while its tenant held its whole instance quota.
    Capacity,
    /// Its tenant is over its plugin CPU budget.
    Throttled,
    /// It asked to rewrite the path to one that does not normalise.
    BadRewrite,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Deadline => "deadline",
            FailureKind::Memory => "memory",
            FailureKind::Stack => "stack",
            FailureKind::Trap => "trap",
            FailureKind::Instantiate => "instantiate",
            FailureKind::Init => "init",
            FailureKind::Capacity => "capacity",
            FailureKind::Throttled => "throttled",
            FailureKind::BadRewrite => "bad_rewrite",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("bad request path: {0}")]
    BadPath(crate::path::PathError),
    #[error("path `{path}` is routed to `{route}`, but lenient backends read it as `{read}`, which another route serves")]
    AmbiguousPath {
        path: String,
        read: String,
        route: String,
    },
    #[error("no site serves host `{0}`")]
    UnknownHost(String),
    #[error("TLS server name `{sni}` and Host `{host}` belong to different sites")]
    Misdirected { sni: String, host: String },
    #[error(
        "a TLS connection without SNI got the certificate of site `{site}`, not of Host `{host}`'s"
    )]
    MisdirectedNoSni { site: String, host: String },
    #[error("no route for this path")]
    NoRoute,
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// The cause is the exchange's error, whose chain holds the [`crate::body::ClientBodyError`].
    #[error("the request body is malformed")]
    BadRequestBody(#[source] BoxError),
    #[error("the client was too slow sending its request body")]
    ClientTimeout {
        kind: &'static str,
        #[source]
        cause: BoxError,
    },
    /// The cause keeps its type (an `io::Error`, a rustls or hyper error, a [`Violation`]): the
    /// log prints the whole chain ([`Chain`]), and code can downcast it.
    #[error("backend {backend} refused or reset the connection")]
    UpstreamConnect {
        backend: String,
        #[source]
        cause: BoxError,
    },
    #[error("backend {backend} did not connect within {after_ms} ms")]
    UpstreamConnectTimeout { backend: String, after_ms: u128 },
    #[error("backend {backend} did not answer within {after_ms} ms")]
    UpstreamTimeout { backend: String, after_ms: u128 },
    #[error("backend {backend} broke the protocol")]
    UpstreamProtocol {
        backend: String,
        #[source]
        cause: BoxError,
    },
    #[error("plugin `{plugin}` failed: {cause}")]
    Plugin { plugin: String, cause: FailureKind },
    #[error("WebSocket origin `{0}` is not allowed on this route")]
    OriginRefused(String),
    #[error("too many open WebSocket tunnels on this route (limit {0})")]
    TooManyTunnels(usize),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("tenant `{tenant}` is at its limit of {max} concurrent {what}")]
    TenantLimit {
        tenant: String,
        what: &'static str,
        max: usize,
    },
    #[error("tenant `{tenant}` is over its plugin CPU budget")]
    TenantCpu { tenant: String },
    #[error("tenant `{tenant}` may not connect there: {reason}")]
    EgressRefused { tenant: String, reason: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            BadRequest(_) | BadPath(_) | AmbiguousPath { .. } => StatusCode::BAD_REQUEST,
            UnknownHost(_) | NoRoute => StatusCode::NOT_FOUND,
            Misdirected { .. } | MisdirectedNoSni { .. } => StatusCode::MISDIRECTED_REQUEST,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BadRequestBody(_) => StatusCode::BAD_REQUEST,
            ClientTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            UpstreamConnect { .. } | UpstreamProtocol { .. } | EgressRefused { .. } => {
                StatusCode::BAD_GATEWAY
            }
            UpstreamConnectTimeout { .. } | UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Plugin { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            OriginRefused(_) => StatusCode::FORBIDDEN,
            TooManyTunnels(_) | ShuttingDown | TenantLimit { .. } | TenantCpu { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    pub fn side(&self) -> Side {
        use ProxyError::*;
        match self {
            BadRequest(_)
            | BadPath(_)
            | AmbiguousPath { .. }
            | UnknownHost(_)
            | Misdirected { .. }
            | MisdirectedNoSni { .. }
            | NoRoute
            | BodyTooLarge { .. }
            | BadRequestBody(_)
            | ClientTimeout { .. }
            | OriginRefused(_) => Side::Downstream,
            UpstreamConnect { .. }
            | UpstreamConnectTimeout { .. }
            | UpstreamTimeout { .. }
            | UpstreamProtocol { .. } => Side::Upstream,
            Plugin { .. }
            | TooManyTunnels(_)
            | ShuttingDown
            | TenantLimit { .. }
            | TenantCpu { .. }
            | EgressRefused { .. } => Side::Internal,
        }
    }

    /// A short machine-friendly kind for logs and metrics.
    pub fn kind(&self) -> &'static str {
        use ProxyError::*;
        match self {
            BadRequest(_) => "bad_request",
            BadPath(_) => "bad_path",
            AmbiguousPath { .. } => "ambiguous_path",
            UnknownHost(_) => "unknown_host",
            Misdirected { .. } | MisdirectedNoSni { .. } => "misdirected",
            NoRoute => "no_route",
            BodyTooLarge { .. } => "body_too_large",
            BadRequestBody(_) => "bad_request_body",
            ClientTimeout { kind, .. } => kind,
            UpstreamConnect { .. } => "upstream_connect",
            UpstreamConnectTimeout { .. } => "upstream_connect_timeout",
            UpstreamTimeout { .. } => "upstream_timeout",
            UpstreamProtocol { .. } => "upstream_protocol",
            Plugin { .. } => "plugin",
            OriginRefused(_) => "origin_refused",
            TooManyTunnels(_) => "too_many_tunnels",
            ShuttingDown => "shutting_down",
            TenantLimit { .. } => "tenant_limit",
            TenantCpu { .. } => "tenant_cpu",
            EgressRefused { .. } => "egress_refused",
        }
    }

    /// The response the client gets. Bodies are short and say what happened without internal detail
    /// (backend addresses and plugin traces go to the log only).
    pub fn to_response(&self) -> Response<ProxyBody> {
        let status = self.status();
        let reason = status.canonical_reason().unwrap_or("Error");
        let detail = match self {
            ProxyError::BadRequest(why) => format!("{why}\n"),
            ProxyError::BadPath(why) => format!("{why}\n"),
            ProxyError::AmbiguousPath { .. } => {
                "the request path reads as another route's once case, trailing dots or spaces, %2F, %5C or ;parameters are folded\n".into()
            }
            ProxyError::UnknownHost(_) => "no site is configured for this host\n".into(),
            ProxyError::Misdirected { .. } | ProxyError::MisdirectedNoSni { .. } => {
                "this connection cannot serve that host\n".into()
            }
            ProxyError::BodyTooLarge { limit } => format!("request body exceeds {limit} bytes\n"),
            ProxyError::BadRequestBody(_) => "malformed request body\n".into(),
            ProxyError::ClientTimeout { .. } => "the request body was not sent in time\n".into(),
            ProxyError::OriginRefused(_) => "WebSocket origin not allowed\n".into(),
            _ => String::new(),
        };
        let body = format!("{} {reason}\n{detail}", status.as_u16());
        let mut resp = Response::new(full(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if matches!(status, StatusCode::SERVICE_UNAVAILABLE) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

/// A rule the host states itself (what a backend's answer broke), as a cause in an error chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub &'static str);

impl ProxyError {
    /// `cause` as an [`UpstreamProtocol`](ProxyError::UpstreamProtocol) error of `backend`.
    pub fn upstream_protocol(backend: &str, cause: impl Into<BoxError>) -> ProxyError {
        ProxyError::UpstreamProtocol {
            backend: backend.to_string(),
            cause: cause.into(),
        }
    }

    /// `cause` as an [`UpstreamConnect`](ProxyError::UpstreamConnect) error of `backend`.
    pub fn upstream_connect(backend: &str, cause: impl Into<BoxError>) -> ProxyError {
        ProxyError::UpstreamConnect {
            backend: backend.to_string(),
            cause: cause.into(),
        }
    }
}

/// Display helper: an error and its causes on one line.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// A backend's failure keeps its cause as a typed error (downcastable), and the log's one-line
    /// rendering walks the whole chain.
    #[test]
    fn upstream_causes_keep_their_type_and_their_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = ProxyError::upstream_connect("b.internal:80", io);
        let cause = err.source().expect("a source");
        let io = cause
            .downcast_ref::<std::io::Error>()
            .expect("still an io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            Chain(&err).to_string(),
            "backend b.internal:80 refused or reset the connection: refused"
        );
        let broke =
            ProxyError::upstream_protocol("b.internal:80", Violation("101 without Upgrade"));
        assert!(broke
            .source()
            .unwrap()
            .downcast_ref::<Violation>()
            .is_some());
        assert_eq!(broke.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(broke.kind(), "upstream_protocol");
    }
}
