//! Request-path normalisation, done once before routing and plugins so that every decision — route,
//! plugin, backend — sees the same path. `/a/%2e%2e/b`, `/a/../b` and `//b` must not reach different
//! places than `/b` does.

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    /// `..` above the root.
    EscapesRoot,
    /// `%00`, a bad `%` escape, or a control character.
    BadEncoding,
    /// A dot segment with parameters (`..;x`, `.;x`): Tomcat/Jetty-style backends strip the `;…` and
    /// then resolve the `..`, so the backend would see a different path than routing and plugins did.
    AmbiguousSegment,
}

/// Normalise an origin-form path: decode escapes of unreserved characters (RFC 3986 §6.2.2.2), upper-case
/// the rest, merge repeated `/`, and resolve `.`/`..` segments (§5.2.4). `%2F` stays encoded: it is data,
/// not a separator. Bytes that RFC 3986 does not allow in a path but parsers accept anyway (`\`, `"`,
/// `{`, `|`, raw UTF-8, …) are percent-encoded, so the backend gets one unambiguous spelling: a raw `\`
/// is a separator to IIS and to WHATWG URL parsers and must not pass as data, and raw UTF-8 used to be
/// mangled byte-by-byte on the slow path.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: only path characters, nothing to decode, no dot segments, no doubled slashes.
    let simple = raw.bytes().all(|b| b == b'/' || is_pchar(b))
        && !raw.contains("//")
        && !raw.split('/').any(is_dot_segment_like);
    if simple {
        return Ok(raw.to_string());
    }
    let decoded = decode_unreserved(raw)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        if seg.contains(';') && is_dot_segment_like(seg) {
            return Err(PathError::AmbiguousSegment);
        }
        match *seg {
            "" => trailing_slash = i == last,
            "." => trailing_slash = i == last,
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if trailing_slash || path.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// The path as the most lenient backends would read it: `%2F` and `%5C` as `/` (Go's router, Apache with
/// `AllowEncodedSlashes`, IIS), and `;parameters` dropped from every segment (Tomcat, Jetty, Spring).
/// `path` must already be normalised (escapes upper-cased). Routing uses this to refuse paths whose
/// route would change under such a reading.
pub fn lenient_reading(path: &str) -> String {
    let slashed = path.replace("%2F", "/").replace("%5C", "/");
    if !slashed.contains(';') {
        return slashed;
    }
    slashed
        .split('/')
        .map(|seg| seg.split(';').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("/")
}

/// `.`, `..`, and the same with `;parameters`.
fn is_dot_segment_like(seg: &str) -> bool {
    matches!(seg.split(';').next(), Some("." | ".."))
}

/// RFC 3986 `pchar` minus `%`: unreserved, sub-delims, `:` and `@`.
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x20 || b == 0x7f {
            return Err(PathError::BadEncoding);
        }
        if b != b'%' {
            if b == b'/' || is_pchar(b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
        let v = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or(PathError::BadEncoding)?;
        if v == 0 {
            return Err(PathError::BadEncoding);
        }
        if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
            out.push(v as char);
        } else {
            out.push('%');
            out.push_str(&format!("{v:02X}"));
        }
        i += 3;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_pass_untouched() {
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("/chat/room-1").unwrap(), "/chat/room-1");
        assert_eq!(normalize_path("/a/b/").unwrap(), "/a/b/");
    }

    #[test]
    fn dot_segments_and_slashes_resolve() {
        assert_eq!(normalize_path("/a/../b").unwrap(), "/b");
        assert_eq!(normalize_path("/a/./b").unwrap(), "/a/b");
        assert_eq!(normalize_path("//b").unwrap(), "/b");
        assert_eq!(normalize_path("/a//b/").unwrap(), "/a/b/");
        assert_eq!(normalize_path("/a/%2e%2e/b").unwrap(), "/b");
        assert_eq!(normalize_path("/a/%2E/b").unwrap(), "/a/b");
        assert_eq!(normalize_path("/a/b/..").unwrap(), "/a/");
        assert_eq!(normalize_path("/%61dmin").unwrap(), "/admin");
    }

    #[test]
    fn escapes_that_are_data_stay_escaped() {
        assert_eq!(normalize_path("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(normalize_path("/a%20b").unwrap(), "/a%20b");
    }

    #[test]
    fn characters_outside_rfc3986_are_encoded() {
        assert_eq!(normalize_path("/a\\..\\b").unwrap(), "/a%5C..%5Cb");
        assert_eq!(normalize_path("/caf\u{e9}").unwrap(), "/caf%C3%A9");
        assert_eq!(
            normalize_path("/a\"b{c}|d^e`f").unwrap(),
            "/a%22b%7Bc%7D%7Cd%5Ee%60f"
        );
        assert_eq!(
            normalize_path("/a;b=c/d:e@f!$&'()*+,").unwrap(),
            "/a;b=c/d:e@f!$&'()*+,"
        );
    }

    #[test]
    fn lenient_readings() {
        assert_eq!(lenient_reading("/admin%2Fx"), "/admin/x");
        assert_eq!(lenient_reading("/a%5C..%5Cadmin"), "/a/../admin");
        assert_eq!(lenient_reading("/admin;jsessionid=1/x;y"), "/admin/x");
        assert_eq!(lenient_reading("/plain/path"), "/plain/path");
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        assert_eq!(
            normalize_path("/x/..;/admin"),
            Err(PathError::AmbiguousSegment)
        );
        assert_eq!(
            normalize_path("/x/.;a=b/admin"),
            Err(PathError::AmbiguousSegment)
        );
        assert_eq!(
            normalize_path("/x/%2e%2e;/admin"),
            Err(PathError::AmbiguousSegment)
        );
        assert_eq!(normalize_path("/x/a..;/b").unwrap(), "/x/a..;/b");
        assert_eq!(normalize_path("/x;a/b").unwrap(), "/x;a/b");
    }

    #[test]
    fn hostile_paths_are_refused() {
        assert_eq!(normalize_path("/.."), Err(PathError::EscapesRoot));
        assert_eq!(
            normalize_path("/a/../../etc/passwd"),
            Err(PathError::EscapesRoot)
        );
        assert_eq!(normalize_path("/%2e%2e/x"), Err(PathError::EscapesRoot));
        assert_eq!(normalize_path("/a%00b"), Err(PathError::BadEncoding));
        assert_eq!(normalize_path("/a%zz"), Err(PathError::BadEncoding));
        assert_eq!(normalize_path("/a%2"), Err(PathError::BadEncoding));
        assert_eq!(normalize_path("x"), Err(PathError::NotAbsolute));
    }
}
