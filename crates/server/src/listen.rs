//! Listening: bind once, and an accept loop per listener and worker that honours the connection
//! limits (total, per client address), backs off when `accept(2)` fails, and stops first when
//! draining, so what is still queued is left to a successor.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use wasmgate_proxy::ctx::ServeCtx;

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// What every connection accepted on one listener shares.
pub struct ListenerCtx {
    pub idx: usize,
    pub name: Arc<str>,
    pub tls: Option<TlsAcceptor>,
    pub serve: Arc<ServeCtx>,
    pub limits: crate::watchdog::Limits,
    pub max_header_bytes: usize,
    pub connections: Arc<Semaphore>,
    pub per_ip: Option<Arc<crate::conn_limits::PerIp>>,
}

pub async fn accept_loop(socket: TcpListener, ctx: Arc<ListenerCtx>) {
    let mut backoff = crate::conn_limits::AcceptBackoff::default();
    // One waiter for the whole loop, not a fresh registration with the token per accepted connection.
    let draining = ctx.serve.draining.cancelled();
    tokio::pin!(draining);
    loop {
        let (stream, peer) = tokio::select! {
            // Draining wins over a ready accept: what is still queued is the successor's to take.
            biased;
            _ = &mut draining => return,
            r = socket.accept() => match r {
                Ok(pair) => {
                    backoff.success();
                    pair
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    let pause = backoff.failure(&ctx.name, &e);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = &mut draining => return,
                    }
                    continue;
                }
            },
        };
        let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
            tracing::warn!(listener = %ctx.name, %peer, "max_connections reached; connection closed");
            continue;
        };
        let ctx = ctx.clone();
        ctx.serve.tasks.clone().spawn(async move {
            let _permit = permit;
            super::connection::serve_connection(stream, peer, &ctx).await;
        });
    }
}
