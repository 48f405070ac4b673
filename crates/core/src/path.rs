//! Request-path normalisation, done once before routing and plugins so that every decision — route,
//! plugin, backend — sees the same path. `/a/%2e%2e/b`, `/a/../b` and `//b` must not reach different
//! places than `/b` does.
//!
//! Normalising is not enough on its own: backends read paths more leniently than RFC 3986 does (IIS
//! folds case and trims trailing dots, Tomcat drops `;parameters`, Go decodes `%2F`). [`lenient_reading`]
//! is the path as the most lenient of them would read it; routing refuses a path whose route changes
//! under that reading (see `proxy::ensure_unambiguous_route`).

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    /// `..` above the root.
    EscapesRoot,
    /// `%00`, a bad `%` escape, or a control character.
    BadEncoding,
    /// IIS's non-standard `%uXXXX` escape: other parsers read it as the text `%uXXXX`, IIS as a
    /// character, so the two disagree on what the path is.
    UnicodeEscape,
    /// The decoded path is not UTF-8: overlong forms (`%C0%AE` is `.` to some decoders), surrogates,
    /// stray continuation bytes.
    InvalidUtf8,
    /// A dot segment with parameters (`..;x`, `.;x`): Tomcat/Jetty-style backends strip the `;…` and
    /// then resolve the `..`, so the backend would see a different path than routing and plugins did.
    AmbiguousSegment,
}

impl PathError {
    /// For the client's 400 and the log.
    pub fn reason(&self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request path does not start with `/`",
            PathError::EscapesRoot => "the request path climbs above the root with `..`",
            PathError::BadEncoding => {
                "the request path has %00, a bad %-escape or a control character"
            }
            PathError::UnicodeEscape => "the request path uses a %u escape",
            PathError::InvalidUtf8 => {
                "the request path is not UTF-8 once decoded (overlong or broken sequence)"
            }
            PathError::AmbiguousSegment => "the request path has a dot segment with ;parameters",
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// Normalise an origin-form path: decode escapes of unreserved characters (RFC 3986 §6.2.2.2), upper-case
/// the rest, merge repeated `/`, and resolve `.`/`..` segments (§5.2.4). `%2F` stays encoded: it is data,
/// not a separator. Bytes that RFC 3986 does not allow in a path but parsers accept anyway (`\`, `"`,
/// `{`, `|`, raw UTF-8, …) are percent-encoded, so the backend gets one unambiguous spelling: a raw `\`
/// is a separator to IIS and to WHATWG URL parsers and must not pass as data, and raw UTF-8 used to be
/// mangled byte-by-byte on the slow path. Escapes that do not decode to UTF-8, and `%uXXXX`, are refused.
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

/// The path as the most lenient backends would read it, for comparing routes (never sent anywhere):
/// - `%2F` and `%5C` (and a raw `\`) as `/` (Go's router, Apache with `AllowEncodedSlashes`, IIS);
/// - `;parameters` dropped from every segment (Tomcat, Jetty, Spring);
/// - whitespace (`%20`, `%09`, any `%01`–`%1F`) trimmed at both ends of a segment (Spring's
///   `trimTokens`, Java's `String::trim`) and trailing dots trimmed (Windows and IIS: `admin.` is
///   `admin`); a segment of only dots and whitespace reads as `..` (or `.` for a single dot), the
///   reading under which it moves the most;
/// - ASCII letters folded to lower case (IIS, Windows file systems, case-insensitive Express routers);
/// - an NTFS stream suffix cut off (`admin::$DATA`, `admin::$INDEX_ALLOCATION` are `admin` to IIS).
///
/// Escapes of unreserved characters (`%41`) are already decoded by [`normalize_path`], whose output
/// `path` must be. The result still needs `normalize_path` (the trims may leave `..` or `//`). A path
/// that every backend reads the same (the common, plain lower-case one) is scanned once and borrowed.
pub fn lenient_reading(path: &str) -> Cow<'_, str> {
    if reads_the_same(path) {
        return Cow::Borrowed(path);
    }
    let slashed = path
        .replace("%2F", "/")
        .replace("%5C", "/")
        .replace('\\', "/")
        .replace("%3A", ":")
        .replace("%24", "$");
    let mut out = String::with_capacity(slashed.len());
    for (i, seg) in slashed.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(lenient_segment(seg.split(';').next().unwrap_or("")));
    }
    out.make_ascii_lowercase();
    Cow::Owned(out)
}

/// No escape, no `;`, no `\`, no `::`, no upper-case letter and no segment ending in `.`: nothing for
/// [`lenient_reading`] to change. One pass over the bytes, no allocation.
fn reads_the_same(path: &str) -> bool {
    let b = path.as_bytes();
    !b.iter().enumerate().any(|(i, &c)| match c {
        b'%' | b';' | b'\\' | b'A'..=b'Z' => true,
        b'.' => b.get(i + 1).is_none_or(|&n| n == b'/'),
        b':' => b.get(i + 1) == Some(&b':'),
        _ => false,
    })
}

/// One segment, trimmed as lenient readers trim it.
fn lenient_segment(seg: &str) -> &str {
    let mut s = seg.find("::$").map_or(seg, |cut| &seg[..cut]);
    while let Some(rest) = strip_leading_space(s) {
        s = rest;
    }
    loop {
        if let Some(rest) = s.strip_suffix('.') {
            s = rest;
        } else if let Some(rest) = strip_trailing_space(s) {
            s = rest;
        } else {
            break;
        }
    }
    if s.is_empty() && !seg.is_empty() {
        // Only dots and whitespace: `..%20` is `..` to a backend that trims whitespace first.
        return match seg.matches('.').count() {
            0 => "",
            1 => ".",
            _ => "..",
        };
    }
    s
}

/// `%01`…`%20` at the start of `s`, removed.
fn strip_leading_space(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    (b.len() >= 3 && b[0] == b'%' && is_space_escape(&b[1..3])).then(|| &s[3..])
}

/// `%01`…`%20` at the end of `s`, removed.
fn strip_trailing_space(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let n = b.len();
    (n >= 3 && b[n - 3] == b'%' && is_space_escape(&b[n - 2..])).then(|| &s[..n - 3])
}

fn is_space_escape(hex: &[u8]) -> bool {
    hex_byte(hex).is_some_and(|v| (0x01..=0x20).contains(&v))
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
    let mut non_ascii_escape = false;
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
                push_escape(&mut out, b);
            }
            i += 1;
            continue;
        }
        if matches!(bytes.get(i + 1), Some(b'u' | b'U')) {
            return Err(PathError::UnicodeEscape);
        }
        let v = bytes
            .get(i + 1..i + 3)
            .and_then(hex_byte)
            .ok_or(PathError::BadEncoding)?;
        if v == 0 {
            return Err(PathError::BadEncoding);
        }
        non_ascii_escape |= v >= 0x80;
        if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
            out.push(v as char);
        } else {
            push_escape(&mut out, v);
        }
        i += 3;
    }
    // Raw bytes come from a `&str` and are UTF-8 already; escapes can break that (and overlong forms
    // such as `%C0%AE` are `.` to decoders that do not check).
    if non_ascii_escape && !decodes_to_utf8(bytes) {
        return Err(PathError::InvalidUtf8);
    }
    Ok(out)
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

/// Two hex digits (only digits: `u8::from_str_radix` would also take `+f`).
fn hex_byte(h: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    match h {
        [a, b] => Some(digit(*a)? << 4 | digit(*b)?),
        _ => None,
    }
}

/// Does `raw`, with every escape decoded, form UTF-8? (`raw`'s escapes are known to be well-formed.)
fn decodes_to_utf8(raw: &[u8]) -> bool {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                bytes.push(hex_byte(&raw[i + 1..i + 3]).unwrap_or(0));
                i += 3;
            }
            b => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&bytes).is_ok()
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

    #[test]
    fn lenient_readings_fold_case_and_trim_segments() {
        for (path, read) in [
            ("/ADMIN/x", "/admin/x"),
            ("/Admin/x", "/admin/x"),
            ("/admin./x", "/admin/x"),
            ("/admin../x", "/admin/x"),
            ("/admin%20/x", "/admin/x"),
            ("/admin%09/x", "/admin/x"),
            ("/admin.%20./x", "/admin/x"),
            ("/%20admin/x", "/admin/x"),
            ("/admin%0A", "/admin"),
            ("/x/..%20/admin", "/x/../admin"),
            ("/x/.%20/admin", "/x/./admin"),
            ("/x/%20/admin", "/x//admin"),
            ("/ADMIN%5Cx", "/admin/x"),
            ("/caf%C3%A9", "/caf%c3%a9"),
            ("/api/Projects;v=1", "/api/projects"),
            ("/admin::$DATA/x", "/admin/x"),
            ("/ADMIN::$INDEX_ALLOCATION/x", "/admin/x"),
            ("/admin%3A%3A%24DATA", "/admin"),
            ("/admin.::$DATA", "/admin"),
            ("/v1/things:batchGet", "/v1/things:batchget"),
        ] {
            assert_eq!(lenient_reading(path), read, "{path}");
        }
        // Inner dots and spaces are data to everyone.
        assert_eq!(lenient_reading("/files/a.b/c%20d"), "/files/a.b/c%20d");
    }

    #[test]
    fn a_plain_path_is_read_without_allocating() {
        for plain in [
            "/",
            "/api/v1/items",
            "/files/a.b",
            "/a-b_c~d/",
            "/.well-known/x",
        ] {
            assert!(
                matches!(lenient_reading(plain), Cow::Borrowed(p) if p == plain),
                "{plain}"
            );
        }
        assert!(matches!(
            lenient_reading("/v1/things:get"),
            Cow::Borrowed(_)
        ));
        for not_plain in ["/A", "/a.", "/a./b", "/a%20", "/a;b", "/a%2Fb", "/a::$DATA"] {
            assert!(
                matches!(lenient_reading(not_plain), Cow::Owned(_)),
                "{not_plain}"
            );
        }
    }

    #[test]
    fn encodings_that_decoders_disagree_on_are_refused() {
        for overlong in [
            "/%C0%AE/admin",
            "/x/%C0%AE%C0%AE/admin",
            "/%E0%80%AE",
            "/%F0%80%80%AE",
        ] {
            assert_eq!(
                normalize_path(overlong),
                Err(PathError::InvalidUtf8),
                "{overlong}"
            );
        }
        for broken in [
            "/%FF",
            "/%C3",
            "/%C3x",
            "/%ED%A0%80",
            "/%80",
            "/caf\u{e9}%A9",
        ] {
            assert_eq!(
                normalize_path(broken),
                Err(PathError::InvalidUtf8),
                "{broken}"
            );
        }
        for unicode in ["/%u002e%u002e/admin", "/%U0041", "/a%u"] {
            assert_eq!(
                normalize_path(unicode),
                Err(PathError::UnicodeEscape),
                "{unicode}"
            );
        }
        // `u8::from_str_radix` takes a sign: `%+1` must not decode to 0x01.
        assert_eq!(normalize_path("/a%+1"), Err(PathError::BadEncoding));
        assert_eq!(normalize_path("/a%-0"), Err(PathError::BadEncoding));
        // UTF-8, escaped or raw or both, is fine.
        assert_eq!(normalize_path("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(normalize_path("/\u{e9}t%C3%A9").unwrap(), "/%C3%A9t%C3%A9");
        assert_eq!(normalize_path("/admin%2e/x").unwrap(), "/admin./x");
        assert_eq!(normalize_path("/%41dmin/x").unwrap(), "/Admin/x");
    }
}
