//! Message heads: the request head as it goes to the backend, and the backend's response head, parsed
//! with `httparse` and framed by RFC 9112 §6.3 — the decisions a desynchronised backend connection
//! (request smuggling's other half) turns on.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use super::H1Error;

/// The largest response head accepted (nginx's `proxy_buffer_size` is 4–8 KiB; hyper's client
/// buffers 400 KiB). Larger is a 502.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head (hyper's default too).
const MAX_HEADERS: usize = 100;

/// How a request body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body, or one the request's own `Content-Length` frames.
    AsIs,
    /// A body of known length the request does not declare: a `Content-Length` is added.
    Length(u64),
    /// Length unknown up front: chunked.
    Chunked,
}

/// Write the request head: `METHOD target HTTP/1.1`, the fields as they are, and the body's framing.
pub fn encode_request(dst: &mut Vec<u8>, parts: &http::request::Parts, framing: BodyFraming) {
    let chunked = framing == BodyFraming::Chunked;
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    dst.reserve(64 + target.len() + parts.headers.len() * 32);
    dst.extend_from_slice(parts.method.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(target.as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        // The client's framing headers were consumed by the server side; the body is re-framed here.
        if name == header::TRANSFER_ENCODING || (chunked && name == header::CONTENT_LENGTH) {
            continue;
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    match framing {
        BodyFraming::Chunked => dst.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::Length(n) => {
            dst.extend_from_slice(b"content-length: ");
            dst.extend_from_slice(n.to_string().as_bytes());
            dst.extend_from_slice(b"\r\n");
        }
        BodyFraming::AsIs => {}
    }
    dst.extend_from_slice(b"\r\n");
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, 1xx, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes the connection.
    Close,
}

/// A parsed response head.
pub struct Parsed {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request after this response's body.
    pub keep_alive: bool,
}

/// Parse the response head at the front of `buf`, taking it out of the buffer. `Ok(None)`: the
/// head is not complete yet. Interim (1xx other than 101) responses are skipped: the client's
/// `Expect` never reaches the backend, so they are informational only.
pub fn parse_response(buf: &mut BytesMut, method: &Method) -> Result<Option<Parsed>, H1Error> {
    loop {
        let mut fields =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut fields,
        );
        let len = match parsed {
            // A read can complete a head past the limit in one go: the limit holds all the same.
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
                return Err(H1Error::HeadTooLarge)
            }
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                return if buf.len() >= MAX_HEAD {
                    Err(H1Error::HeadTooLarge)
                } else {
                    Ok(None)
                };
            }
            Err(e) => return Err(H1Error::Parse(e)),
        };
        let status = StatusCode::from_u16(resp.code.unwrap_or(0))
            .map_err(|_| H1Error::Invalid("status code"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            let _ = buf.split_to(len);
            continue;
        }
        let version = if resp.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Names now, values by offset: the head is split off the buffer below and its bytes are
        // shared by the values, not copied.
        let base = buf.as_ptr() as usize;
        let fields: Vec<(HeaderName, usize, usize)> = resp
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| H1Error::Invalid("header name"))?;
                let start = h.value.as_ptr() as usize - base;
                Ok((name, start, start + h.value.len()))
            })
            .collect::<Result<_, H1Error>>()?;
        let head: Bytes = buf.split_to(len).freeze();
        let delimiters = fields
            .iter()
            .map(|(name, start, end)| (name, &head[*start..*end]));
        let (framing, keep_alive) = framing(status, version, delimiters, method)?;
        // With another delimitation, a stale length would mislead the next hop: it is dropped.
        let drop_length = matches!(framing, Framing::Chunked | Framing::Close);
        let mut headers = HeaderMap::with_capacity(fields.len());
        for (name, start, end) in fields {
            if drop_length && name == header::CONTENT_LENGTH {
                continue;
            }
            let value = HeaderValue::from_maybe_shared(head.slice(start..end))
                .map_err(|_| H1Error::Invalid("header value"))?;
            headers.append(name, value);
        }
        return Ok(Some(Parsed {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// RFC 9112 §6.3, for a response: the body's delimitation, and whether the connection survives it.
/// Read from the head's fields in one pass (comparing standard names is cheap; a map lookup per
/// header is not).
fn framing<'a>(
    status: StatusCode,
    version: Version,
    fields: impl Iterator<Item = (&'a HeaderName, &'a [u8])>,
    method: &Method,
) -> Result<(Framing, bool), H1Error> {
    let list = |v: &'a [u8]| {
        v.split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
    };
    let (mut close, mut coding, mut chunked_last) = (false, false, false);
    // A bad or conflicting length is an error only where the length is what frames the body.
    let mut length: Result<Option<u64>, &'static str> = Ok(None);
    for (name, value) in fields {
        if name == header::CONNECTION {
            close |= list(value).any(|t| t.eq_ignore_ascii_case(b"close"));
        } else if name == header::TRANSFER_ENCODING {
            coding = true;
            if let Some(last) = list(value).next_back() {
                chunked_last = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if name == header::CONTENT_LENGTH {
            for part in value.split(|&b| b == b',') {
                length = match (length, parse_length(part.trim_ascii())) {
                    (Err(e), _) => Err(e),
                    (_, None) => Err("Content-Length"),
                    (Ok(Some(l)), Some(n)) if l != n => Err("conflicting Content-Length values"),
                    (Ok(_), Some(n)) => Ok(Some(n)),
                };
            }
        }
    }
    // A 1.0 backend keeps a connection only when it says so; not worth the ambiguity.
    let persistent = version == Version::HTTP_11 && !close;
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        // A 101 ends the HTTP exchange on this connection: never pooled.
        return Ok((
            Framing::Empty,
            persistent && status != StatusCode::SWITCHING_PROTOCOLS,
        ));
    }
    if method == Method::CONNECT && status.is_success() {
        // A 2xx to CONNECT is a tunnel (§6.3 rule 2): the connection is no longer HTTP.
        return Ok((Framing::Close, false));
    }
    if coding {
        if version == Version::HTTP_10 {
            // A 1.0 recipient cannot know chunked; a 1.0 sender using it is broken or lying.
            return Err(H1Error::Invalid(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        // Both framings given: chunked wins, and the connection is closed after it (§6.3 item 3).
        let both = !matches!(length, Ok(None));
        return Ok(if chunked_last {
            (Framing::Chunked, persistent && !both)
        } else {
            (Framing::Close, false)
        });
    }
    Ok(match length.map_err(H1Error::Invalid)? {
        Some(0) => (Framing::Empty, persistent),
        Some(n) => (Framing::Length(n), persistent),
        None => (Framing::Close, false),
    })
}

/// Decimal digits only (no sign, no spaces inside), at most 19 of them (fits a u64).
fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, method: Method) -> Result<Option<Parsed>, H1Error> {
        parse_response(&mut BytesMut::from(raw), &method)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = || Method::GET;
        let p = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", get())
            .unwrap()
            .unwrap();
        assert_eq!((p.framing, p.keep_alive), (Framing::Length(5), true));
        let p = parse("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", get())
            .unwrap()
            .unwrap();
        assert_eq!(p.framing, Framing::Length(5));
        assert!(parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            get()
        )
        .is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n", get()).is_err());
        assert!(parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            get()
        )
        .is_err());
        let p = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            get(),
        )
        .unwrap()
        .unwrap();
        assert_eq!((p.framing, p.keep_alive), (Framing::Chunked, false));
        assert!(!p.headers.contains_key(header::CONTENT_LENGTH));
        let p = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n",
            get(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (p.framing, p.keep_alive),
            (Framing::Chunked, false),
            "the length is ignored"
        );
        let p = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\nContent-Length: 3\r\n\r\n",
            get(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (p.framing, p.keep_alive),
            (Framing::Close, false),
            "an empty coding is a coding"
        );
        let p = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", get())
            .unwrap()
            .unwrap();
        assert_eq!((p.framing, p.keep_alive), (Framing::Close, false));
        assert!(parse(
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            get()
        )
        .is_err());
        let p = parse(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\n",
            get(),
        )
        .unwrap()
        .unwrap();
        assert!(!p.keep_alive);
        let p = parse("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", Method::HEAD)
            .unwrap()
            .unwrap();
        assert_eq!((p.framing, p.keep_alive), (Framing::Empty, true));
        let p = parse(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
            get(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.framing, Framing::Empty);
        let p = parse("HTTP/1.0 200 OK\r\n\r\nrest", get())
            .unwrap()
            .unwrap();
        assert_eq!((p.framing, p.keep_alive), (Framing::Close, false));
    }

    #[test]
    fn interim_responses_are_skipped_and_the_head_leaves_the_buffer() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nX-A: 1\r\nX-A: 2\r\nContent-Length: 2\r\n\r\nok",
        );
        let p = parse_response(&mut buf, &Method::POST).unwrap().unwrap();
        assert_eq!(p.status, 201);
        assert_eq!(p.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&buf[..], b"ok");
        let mut partial = BytesMut::from("HTTP/1.1 200 OK\r\nX-A: 1\r\n");
        assert!(parse_response(&mut partial, &Method::GET)
            .unwrap()
            .is_none());
        let mut big =
            BytesMut::from(format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD)).as_str());
        assert!(matches!(
            parse_response(&mut big, &Method::GET),
            Err(H1Error::HeadTooLarge)
        ));
        // Complete in one read, and over the limit all the same.
        let mut whole = BytesMut::from(
            format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD)).as_str(),
        );
        assert!(matches!(
            parse_response(&mut whole, &Method::GET),
            Err(H1Error::HeadTooLarge)
        ));
        // A 2xx to CONNECT is a tunnel, never a pooled connection.
        let p = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Method::CONNECT,
        )
        .unwrap()
        .unwrap();
        assert_eq!((p.framing, p.keep_alive), (Framing::Close, false));
    }

    #[test]
    fn the_request_head_is_reframed() {
        let (mut parts, ()) = http::Request::post("/up?x=1")
            .header("host", "b")
            .header("content-length", "10")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        encode_request(&mut out, &parts, BodyFraming::Chunked);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /up?x=1 HTTP/1.1\r\nhost: b\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        parts.headers.remove("transfer-encoding");
        let mut out = Vec::new();
        encode_request(&mut out, &parts, BodyFraming::AsIs);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("content-length: 10\r\n"));
        parts.headers.remove("content-length");
        let mut out = Vec::new();
        encode_request(&mut out, &parts, BodyFraming::Length(3));
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("host: b\r\ncontent-length: 3\r\n\r\n"));
    }
}
