//! Response body decoding: a length, chunked transfer coding (RFC 9112 §7.1), or until close. Data
//! frames are slices of the connection's read buffer, never copies.

use bytes::{Bytes, BytesMut};

use super::head::Framing;
use super::H1Error;

/// A chunk-size line (with its extensions), or one trailer line, longer than this is refused.
const MAX_LINE: usize = 4096;
/// All trailer fields together (they are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// Bytes of the body still to come.
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data: bytes left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; bytes of trailers seen so far.
    Trailers(usize),
}

/// What decoding what is buffered gave.
pub enum Step {
    Data(Bytes),
    /// More bytes are needed from the connection.
    NeedMore,
    End,
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        match framing {
            Framing::Empty | Framing::Length(0) => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunk::Size),
            Framing::Close => Decoder::Close,
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// Bytes of the body still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match *self {
            Decoder::Length(n) => Some(n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// Decode from `buf` as far as it goes without reading.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, H1Error> {
        loop {
            match *self {
                Decoder::Done => return Ok(Step::End),
                Decoder::Length(n) => {
                    let Some((data, rest)) = take_up_to(buf, n) else {
                        return Ok(Step::NeedMore);
                    };
                    *self = if rest == 0 {
                        Decoder::Done
                    } else {
                        Decoder::Length(rest)
                    };
                    return Ok(Step::Data(data));
                }
                Decoder::Close => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                Decoder::Chunked(Chunk::Data(n)) => {
                    let Some((data, rest)) = take_up_to(buf, n) else {
                        return Ok(Step::NeedMore);
                    };
                    *self = Decoder::Chunked(if rest == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(rest)
                    });
                    return Ok(Step::Data(data));
                }
                Decoder::Chunked(_) => {
                    if !self.framing_step(buf)? {
                        return Ok(Step::NeedMore);
                    }
                }
            }
        }
    }

    /// Consume the framing that follows data just returned (the chunk's CRLF, the last chunk, the
    /// trailers) as far as it is buffered, never data: the end of the body is then known together
    /// with its last bytes.
    pub fn settle(&mut self, buf: &mut BytesMut) -> Result<(), H1Error> {
        while matches!(self, Decoder::Chunked(c) if !matches!(c, Chunk::Data(_))) {
            if !self.framing_step(buf)? {
                break;
            }
        }
        Ok(())
    }

    /// One element of chunked framing other than data. `false`: it is not all buffered yet.
    fn framing_step(&mut self, buf: &mut BytesMut) -> Result<bool, H1Error> {
        let Decoder::Chunked(c) = *self else {
            return Ok(false);
        };
        match c {
            Chunk::Data(_) => return Ok(false),
            Chunk::Size => {
                let Some(line) = take_line(buf)? else {
                    return Ok(false);
                };
                let size = chunk_size(&line)?;
                *self = Decoder::Chunked(if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                });
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(false);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(H1Error::Invalid("chunk data not followed by CRLF"));
                }
                let _ = buf.split_to(2);
                *self = Decoder::Chunked(Chunk::Size);
            }
            Chunk::Trailers(seen) => {
                let Some(line) = take_line(buf)? else {
                    return Ok(false);
                };
                if line.is_empty() {
                    *self = Decoder::Done;
                    return Ok(true);
                }
                let seen = seen + line.len() + 2;
                if seen > MAX_TRAILERS {
                    return Err(H1Error::Invalid("trailers too large"));
                }
                *self = Decoder::Chunked(Chunk::Trailers(seen));
            }
        }
        Ok(true)
    }

    /// The backend closed the connection: the end of a close-delimited body, else a truncation.
    pub fn at_eof(&mut self) -> Result<(), H1Error> {
        match *self {
            Decoder::Close | Decoder::Done => {
                *self = Decoder::Done;
                Ok(())
            }
            _ => Err(H1Error::Truncated),
        }
    }
}

/// Up to `n` bytes off the front of `buf` (`None`: nothing is buffered), and how many of the `n`
/// are still to come.
fn take_up_to(buf: &mut BytesMut, n: u64) -> Option<(Bytes, u64)> {
    if buf.is_empty() {
        return None;
    }
    let take = n.min(buf.len() as u64) as usize;
    Some((buf.split_to(take).freeze(), n - take as u64))
}

/// One CRLF-terminated line off the front of `buf`, without its CRLF (`None`: not complete yet).
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, H1Error> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => {
            if i == 0 || buf[i - 1] != b'\r' {
                return Err(H1Error::Invalid("bare LF in chunked framing"));
            }
            let mut line = buf.split_to(i + 1);
            line.truncate(i - 1);
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err(H1Error::Invalid("chunk line too long")),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]`: hex digits, then nothing or `;` extensions (ignored).
fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .map_or(line, |i| &line[..i]);
    if digits.is_empty() || digits.len() > 15 {
        return Err(H1Error::Invalid("chunk size"));
    }
    let mut n = 0u64;
    for &d in digits {
        let v = (d as char)
            .to_digit(16)
            .ok_or(H1Error::Invalid("chunk size"))?;
        n = n * 16 + u64::from(v);
    }
    let ext = &line[digits.len()..];
    if !ext.is_empty() && !ext.trim_ascii_start().starts_with(b";") {
        return Err(H1Error::Invalid("chunk size"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(framing: Framing, input: &[u8]) -> Result<(Vec<u8>, bool, BytesMut), H1Error> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match d.step(&mut buf)? {
                Step::Data(b) => out.extend_from_slice(&b),
                Step::NeedMore => return Ok((out, false, buf)),
                Step::End => return Ok((out, true, buf)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_and_leave_what_follows() {
        let (body, done, rest) = all(
            Framing::Chunked,
            b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\nNEXT",
        )
        .unwrap();
        assert_eq!(
            (body.as_slice(), done, &rest[..]),
            (&b"hello!"[..], true, &b"NEXT"[..])
        );
        let (body, done, _) = all(Framing::Chunked, b"5\r\nhel").unwrap();
        assert_eq!((body.as_slice(), done), (&b"hel"[..], false));
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"-1\r\n",
            b"ffffffffffffffff\r\n",
            b"5 x\r\n",
        ] {
            assert!(
                all(Framing::Chunked, bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'1'; MAX_LINE + 1];
        assert!(all(Framing::Chunked, &long).is_err());
    }

    #[test]
    fn lengths_stop_at_their_end_and_eof_truncates() {
        let (body, done, rest) = all(Framing::Length(2), b"okEXTRA").unwrap();
        assert_eq!(
            (body.as_slice(), done, &rest[..]),
            (&b"ok"[..], true, &b"EXTRA"[..])
        );
        let mut d = Decoder::new(Framing::Length(10));
        assert!(matches!(d.at_eof(), Err(H1Error::Truncated)));
        let mut d = Decoder::new(Framing::Close);
        assert!(d.at_eof().is_ok() && d.is_done());
        assert!(Decoder::new(Framing::Length(0)).is_done());
    }
}
