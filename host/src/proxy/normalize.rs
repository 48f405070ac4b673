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
}

/// Normalise an origin-form path: decode escapes of unreserved characters (RFC 3986 §6.2.2.2), upper-case
/// the rest, merge repeated `/`, and resolve `.`/`..` segments (§5.2.4). `%2F` stays encoded: it is data,
/// not a separator.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: nothing to decode, no dot segments, no doubled slashes.
    let simple =
        !raw.contains('%') && !raw.contains("//") && !raw.split('/').any(|s| s == "." || s == "..");
    if simple {
        if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(PathError::BadEncoding);
        }
        return Ok(raw.to_string());
    }
    let decoded = decode_unreserved(raw)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
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
            out.push(b as char);
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
