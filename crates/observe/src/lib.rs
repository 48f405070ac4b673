//! wasmgate's observability layer: the Prometheus registry every layer records into (`metrics`), the
//! access log's one line per request or tunnel (`log`), and the buffered writer logs go through
//! (`log_sink`). It sits beside router and plugins, above config, and knows nothing of serving.

pub mod log;
pub mod log_sink;
pub mod metrics;
