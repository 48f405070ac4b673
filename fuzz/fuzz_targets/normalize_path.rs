//! Path normalisation: never panics, and what it returns is a fixed point that routing can trust —
//! absolute, no dot segments, no empty segments, only RFC 3986 path characters and upper-case escapes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate_core::path::{lenient_reading, normalize_path};

fuzz_target!(|raw: &str| {
    let Ok(n) = normalize_path(raw) else { return };
    assert!(n.starts_with('/'), "{raw:?} -> {n:?}");
    assert_eq!(normalize_path(&n).as_deref(), Ok(n.as_str()), "not idempotent: {raw:?} -> {n:?}");
    assert!(!n.contains("//"), "{raw:?} -> {n:?}");
    for seg in n.split('/').skip(1) {
        let bare = seg.split(';').next().unwrap_or("");
        assert!(bare != "." && bare != "..", "dot segment survived: {raw:?} -> {n:?}");
    }
    let b = n.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let hex = &b[i + 1..i + 3];
            assert!(hex.iter().all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)), "{raw:?} -> {n:?}");
            let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
            assert!(v != 0, "%00 survived: {raw:?}");
            assert!(!(v.is_ascii_alphanumeric() || b"-._~".contains(&v)), "unreserved left encoded: {raw:?} -> {n:?}");
            i += 3;
            continue;
        }
        assert!(c == b'/' || c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&c), "byte {c:#x} in {n:?} (from {raw:?})");
        i += 1;
    }
    // The lenient reading used for route ambiguity never panics, on normalised input or its own output.
    let l = lenient_reading(&n);
    let _ = normalize_path(&l);
    // A normalised path is a valid URI path for the backend request.
    let _: http::Uri = n.parse().unwrap_or_else(|e| panic!("{n:?} is not a URI path: {e}"));
});
