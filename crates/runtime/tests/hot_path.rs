//! The routing checks added for lenient backends cost a plain path one scan and no allocation: the
//! lenient reading of `/api/v1/items` is the path itself, borrowed, and choosing its route allocates
//! nothing. Counted with a global allocator, so this file is its own test binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use wasmgate_core::path::lenient_reading;
use wasmgate_runtime::router::{lenient_agrees, pick_route, Pick};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_plain_path_is_routed_without_allocating() {
    let routes = [
        ("/", false),
        ("/api", false),
        ("/admin", false),
        ("/ops/", false),
        ("/Docs", true),
    ];
    let folded = ["/", "/api", "/admin", "/ops/", "/docs"];
    let paths = ["/api/v1/items", "/", "/static/app.js", "/ops/x", "/docs/a"];
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut picked = 0;
    for _ in 0..1000 {
        for p in paths {
            let read = lenient_reading(p);
            let pick = pick_route(routes, p);
            picked += pick.index().unwrap_or(0);
            assert!(lenient_agrees(folded, &read, pick.index()));
        }
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(after - before, 0, "allocations on the plain path");
    assert!(picked > 0);
    // And the slow path really is taken for the others (so the count above means something).
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let read = lenient_reading("/ADMIN/x");
    assert_eq!(read, "/admin/x");
    assert!(ALLOCATIONS.load(Ordering::Relaxed) > before);
    assert_eq!(pick_route(routes, "/ADMIN/x"), Pick::Route(0));
    assert!(!lenient_agrees(folded, &read, Some(0)));
}
