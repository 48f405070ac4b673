//! Token checks that take the same time whichever token (or none) matches.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Static tokens, kept as SHA-256 digests: comparing fixed-size digests hides the tokens' lengths,
/// and every entry is compared on every check so the time does not depend on which one matched.
#[derive(Debug, Default)]
pub struct TokenSet(Vec<[u8; 32]>);

impl TokenSet {
    pub fn insert(&mut self, token: &str) {
        self.0.push(Sha256::digest(token.as_bytes()).into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |found, t| found | t.ct_eq(&digest))
            .into()
    }
}

/// The result of checking a signed token `<subject>.<expiry>.<hex(hmac_sha256(secret, "<subject>.<expiry>"))>`.
#[derive(Debug, PartialEq, Eq)]
pub enum Signed {
    /// Not of that form, or the signature does not match.
    Invalid,
    /// Genuine, but `expiry` (Unix seconds) has passed.
    Expired { subject: String },
    Valid {
        subject: String,
        /// Unix seconds: the token is valid before this.
        expiry: u64,
    },
}

pub fn verify_signed(secret: &[u8], token: &str, now_secs: u64) -> Signed {
    // The subject may itself contain dots; expiry and signature never do.
    let mut parts = token.rsplitn(3, '.');
    let (Some(sig), Some(expiry), Some(subject)) = (parts.next(), parts.next(), parts.next())
    else {
        return Signed::Invalid;
    };
    if subject.is_empty() || expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Signed::Invalid;
    }
    let Ok(sig) = hex::decode(sig) else {
        return Signed::Invalid;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return Signed::Invalid;
    };
    mac.update(subject.as_bytes());
    mac.update(b".");
    mac.update(expiry.as_bytes());
    // Check the signature before the expiry, so a forged token learns nothing about expiry handling.
    if mac.verify_slice(&sig).is_err() {
        return Signed::Invalid;
    }
    let subject = subject.to_owned();
    match expiry.parse::<u64>() {
        Ok(expiry) if expiry > now_secs => Signed::Valid { subject, expiry },
        _ => Signed::Expired { subject },
    }
}

/// Make a signed token (for tests and for documenting the format).
#[cfg(test)]
pub fn sign(secret: &[u8], subject: &str, expiry: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    let payload = format!("{subject}.{expiry}");
    mac.update(payload.as_bytes());
    format!("{payload}.{}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_set() {
        let mut s = TokenSet::default();
        s.insert("a");
        s.insert("bb");
        assert!(s.contains("a") && s.contains("bb"));
        assert!(!s.contains("b") && !s.contains("") && !s.contains("aa"));
    }

    #[test]
    fn signed_tokens() {
        let k = b"0123456789abcdef";
        let t = sign(k, "ann.smith", 2000);
        assert_eq!(
            verify_signed(k, &t, 1999),
            Signed::Valid {
                subject: "ann.smith".into(),
                expiry: 2000
            }
        );
        assert_eq!(
            verify_signed(k, &t, 2000),
            Signed::Expired {
                subject: "ann.smith".into()
            }
        );
        assert_eq!(verify_signed(b"other-key-000000", &t, 1), Signed::Invalid);
        let forged = t.replace("2000", "3000");
        assert_eq!(verify_signed(k, &forged, 1), Signed::Invalid);
        for bad in ["", "a.b", "a.1.zz", ".1.00", "a..00", "a.+1.00"] {
            assert_eq!(verify_signed(k, bad, 1), Signed::Invalid, "{bad}");
        }
        // Pinned against an independent implementation (Python's hmac), so the format cannot drift.
        let known =
            "bob.1700000000.6eb2af8424d06a0830401c1cc01abc49491f53a8ab024659b9b7c744d8c909c4";
        assert_eq!(sign(k, "bob", 1_700_000_000), known);
        assert_eq!(
            verify_signed(k, known, 0),
            Signed::Valid {
                subject: "bob".into(),
                expiry: 1_700_000_000
            }
        );
        // Upper-case hex is accepted too.
        let upper = known.replace("6eb2af", "6EB2AF");
        assert_eq!(
            verify_signed(k, &upper, 0),
            Signed::Valid {
                subject: "bob".into(),
                expiry: 1_700_000_000
            }
        );
    }
}
