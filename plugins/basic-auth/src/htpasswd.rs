//! Parsing and checking an Apache htpasswd file: bcrypt (`$2y$`, `$2b$`, `$2a$`) and `{SHA}`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hash {
    /// The whole `$2y$…` string, as the bcrypt crate verifies it; `cost` kept for diagnostics.
    Bcrypt { hash: String, cost: u32 },
    /// `{SHA}base64(sha1(password))`: unsalted, accepted for old files only.
    Sha1([u8; 20]),
}

#[derive(Debug, PartialEq, Eq)]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub problem: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}: {}", self.file, self.line, self.problem)
    }
}

impl std::error::Error for ParseError {}

/// `user:hash` per line; `#` comments and blank lines ignored.
pub fn parse(file: &str, text: &str) -> Result<BTreeMap<String, Hash>, ParseError> {
    let mut users = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |problem: String| ParseError {
            file: file.to_owned(),
            line: n + 1,
            problem,
        };
        let Some((user, hash)) = line.split_once(':') else {
            return Err(err("expected `user:hash`".into()));
        };
        if user.is_empty() {
            return Err(err("empty user name".into()));
        }
        let hash = parse_hash(hash).map_err(|p| err(format!("user `{user}`: {p}")))?;
        if users.insert(user.to_owned(), hash).is_some() {
            return Err(err(format!("user `{user}` appears twice")));
        }
    }
    Ok(users)
}

fn parse_hash(h: &str) -> Result<Hash, String> {
    if let Some(b64) = h.strip_prefix("{SHA}") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "`{SHA}` hash is not valid base64".to_owned())?;
        let digest = <[u8; 20]>::try_from(bytes.as_slice())
            .map_err(|_| "`{SHA}` hash is not 20 bytes".to_owned())?;
        return Ok(Hash::Sha1(digest));
    }
    if ["$2y$", "$2b$", "$2a$"].iter().any(|p| h.starts_with(p)) {
        let parts =
            bcrypt::HashParts::from_str(h).map_err(|e| format!("malformed bcrypt hash: {e}"))?;
        let cost = parts.get_cost();
        if !(4..=31).contains(&cost) {
            return Err(format!("bcrypt cost {cost} is outside 4..=31"));
        }
        return Ok(Hash::Bcrypt {
            hash: h.to_owned(),
            cost,
        });
    }
    let kind = if h.starts_with("$apr1$") {
        "Apache MD5 (`$apr1$`)"
    } else if h.starts_with('$') {
        "this `$…$` scheme"
    } else {
        "crypt() or plain text"
    };
    Err(format!(
        "{kind} is not supported; use bcrypt (`htpasswd -B`) or `{{SHA}}` (`htpasswd -s`)"
    ))
}

impl Hash {
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            // Errors (e.g. a password bcrypt cannot take) are a failed check, never a pass.
            Hash::Bcrypt { hash, .. } => bcrypt::verify(password, hash).unwrap_or(false),
            Hash::Sha1(expected) => {
                let got: [u8; 20] = Sha1::digest(password).into();
                got.ct_eq(expected).into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Classic OpenBSD test vector: password "U*U".
    const VECTOR: &str = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";

    #[test]
    fn bcrypt_vector_all_prefixes() {
        for prefix in ["$2a$", "$2b$", "$2y$"] {
            let h = parse_hash(&VECTOR.replacen("$2a$", prefix, 1)).expect("valid");
            assert!(h.verify(b"U*U"), "{prefix}");
            assert!(!h.verify(b"U*V"), "{prefix}");
        }
    }

    #[test]
    fn sha1() {
        let h = parse_hash("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=").expect("valid");
        assert!(h.verify(b"password"));
        assert!(!h.verify(b"Password"));
    }

    #[test]
    fn refuses_unknown_formats() {
        let e = parse(
            "users",
            "a:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n# c\n\nb:$apr1$x$y\n",
        )
        .expect_err("apr1");
        assert_eq!(e.line, 4);
        assert_eq!(
            e.to_string(),
            "users line 4: user `b`: Apache MD5 (`$apr1$`) is not supported; use bcrypt (`htpasswd -B`) or `{SHA}` (`htpasswd -s`)"
        );
        assert!(parse("u", "plain:secret")
            .expect_err("plain")
            .problem
            .contains("crypt() or plain text"));
        assert!(parse("u", "x:$2y$05$short")
            .expect_err("short")
            .problem
            .contains("malformed bcrypt hash"));
        assert_eq!(
            parse("u", "nocolon").expect_err("colon").problem,
            "expected `user:hash`"
        );
        let dup = "a:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\na:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=";
        assert_eq!(
            parse("u", dup).expect_err("dup").problem,
            "user `a` appears twice"
        );
    }
}
