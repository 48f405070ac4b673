//! Reaching backends: the pooled HTTP/1.1 client with its TLS (`client`), and the one way a
//! tenant-originated connection leaves wasmgate, through its egress policy (`egress`). The plugins'
//! outbound calls will share both.

pub mod client;
pub mod egress;
