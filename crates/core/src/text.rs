//! Text for log lines and headers, written without allocating on the hot path: decimal numbers
//! and IP addresses by hand, and text from configs, plugins and guests escaped so it can never start
//! a log line of its own.

use std::net::IpAddr;

/// `n` in decimal into `out`; returns the length.
pub fn decimal(mut n: u64, out: &mut [u8]) -> usize {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    out[..len].copy_from_slice(&digits[i..]);
    len
}

/// `addr` as text in `out`: IPv4 (the common case, on every request) by hand, IPv6 through `Display`.
pub fn ip(addr: IpAddr, out: &mut [u8; 64]) -> &str {
    let len = match addr {
        IpAddr::V4(v4) => {
            let mut at = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[at] = b'.';
                    at += 1;
                }
                at += decimal(u64::from(o), &mut out[at..]);
            }
            at
        }
        IpAddr::V6(v6) => {
            let mut cursor = std::io::Cursor::new(&mut out[..]);
            let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{v6}"));
            cursor.position() as usize
        }
    };
    std::str::from_utf8(&out[..len]).unwrap_or("-")
}

/// Text from configs, plugins and guests, made safe for a log line: CR, LF, tab and every other
/// control character (and the Unicode line separators and bidi overrides, which can make a line look
/// like another) come out as escapes, so no one can start a line of their own or hide part of one.
/// Borrowed, no allocation, when there is nothing to escape (the common case).
pub fn escaped(s: &str) -> std::borrow::Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    // Printable ASCII, the usual case, is checked a byte at a time (vectorised); only other text
    // pays for the per-character Unicode test.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) || !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// [`escaped`] as a `tracing` field value.
pub fn field(s: &str) -> tracing::field::DisplayValue<std::borrow::Cow<'_, str>> {
    tracing::field::display(escaped(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_configs_and_guests_cannot_start_a_line() {
        assert!(matches!(
            escaped("plain text"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            escaped("ok\n2026-01-01T00:00:00Z  INFO wasmgate::access: GET / 200 tenant=b\r\x1b[2J\u{2028}\u{202e}"),
            "ok\\n2026-01-01T00:00:00Z  INFO wasmgate::access: GET / 200 tenant=b\\r\\u{1b}[2J\\u{2028}\\u{202e}"
        );
        assert!(!escaped("a\u{85}b\0").contains(['\u{85}', '\0']));
    }

    #[test]
    fn numbers_and_addresses_by_hand() {
        let mut out = [0u8; 20];
        for n in [0u64, 7, 10, 999, 1000, u64::MAX] {
            let len = decimal(n, &mut out);
            assert_eq!(std::str::from_utf8(&out[..len]).unwrap(), n.to_string());
        }
        let mut buf = [0u8; 64];
        for a in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "2001:db8::8:1",
        ] {
            assert_eq!(ip(a.parse().unwrap(), &mut buf), a);
        }
    }
}
