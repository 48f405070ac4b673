//! Reaching backends: the pooled HTTP/1.1 client with its TLS (`client`) over wasmgate's own
//! HTTP/1.1 codec (`h1`), and the one way a
//! tenant-originated connection leaves wasmgate, through its egress policy (`egress`). The plugins'
//! outbound calls will share both.

pub mod client;
pub mod egress;
pub mod h1;
