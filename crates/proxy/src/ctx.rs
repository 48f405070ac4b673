//! What every connection's requests and tunnels share, and all the pipeline may touch of the
//! process: the live runtime, request ids, and the shutdown signals and task set tunnels join.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use wasmgate_core::ids::RequestIds;
use wasmgate_runtime::SharedRuntime;

pub struct ServeCtx {
    pub runtime: SharedRuntime,
    pub ids: RequestIds,
    /// Fires when shutdown starts: stop accepting, finish in-flight requests, refuse new tunnels.
    pub draining: CancellationToken,
    /// Fires when the grace period is over: open tunnels are closed.
    pub tunnels_cancel: CancellationToken,
    /// Connections and tunnels, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

impl ServeCtx {
    pub fn new(runtime: SharedRuntime) -> ServeCtx {
        ServeCtx {
            runtime,
            ids: RequestIds::new(),
            draining: CancellationToken::new(),
            tunnels_cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }
}
