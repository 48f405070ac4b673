//! Recognise a password hash by its form, as wasmgate's `verify-password` will, without hashing: so a
//! plugin can refuse a bad line of an htpasswd file at start-up (and report it) instead of failing
//! every login for that user later. The host checks the hash fully when it verifies.

const CRYPT64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn crypt64(s: &str) -> bool {
    s.bytes().all(|b| CRYPT64.contains(&b))
}

/// The hash's kind (`bcrypt`, `apr1`, `sha1`, `md5-crypt`, `sha256-crypt`, `sha512-crypt`,
/// `des-crypt`), or what is wrong with it.
pub fn kind(hash: &str) -> Result<&'static str, String> {
    if let Some(b64) = hash.strip_prefix("{SHA}") {
        let data = b64.strip_suffix('=').unwrap_or("");
        let ok = b64.len() == 28
            && data
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
        return ok
            .then_some("sha1")
            .ok_or_else(|| "`{SHA}` hash is not base64 of 20 bytes".to_owned());
    }
    for prefix in ["$2y$", "$2b$", "$2a$"] {
        if let Some(rest) = hash.strip_prefix(prefix) {
            let (cost, body) = rest.split_once('$').unwrap_or(("", ""));
            return match cost.parse::<u32>() {
                Ok(4..=31) if cost.len() == 2 && body.len() == 53 && crypt64(body) => Ok("bcrypt"),
                Ok(c) if !(4..=31).contains(&c) => {
                    Err(format!("bcrypt cost {c} is outside 4..=31"))
                }
                _ => Err("malformed bcrypt hash".to_owned()),
            };
        }
    }
    for (prefix, name) in [("$apr1$", "apr1"), ("$1$", "md5-crypt")] {
        if let Some(rest) = hash.strip_prefix(prefix) {
            let (salt, sum) = rest.split_once('$').unwrap_or(("-", ""));
            return (salt.len() <= 8 && crypt64(salt) && sum.len() == 22 && crypt64(sum))
                .then_some(name)
                .ok_or_else(|| format!("malformed `{prefix}` hash"));
        }
    }
    for (prefix, name, len) in [("$5$", "sha256-crypt", 43), ("$6$", "sha512-crypt", 86)] {
        if let Some(rest) = hash.strip_prefix(prefix) {
            let rest = match rest.strip_prefix("rounds=") {
                Some(r) => match r.split_once('$') {
                    Some((n, after)) if n.parse::<u32>().is_ok() => after,
                    _ => return Err(format!("malformed `{prefix}` rounds")),
                },
                None => rest,
            };
            let (salt, sum) = rest.split_once('$').unwrap_or(("$", ""));
            return (salt.len() <= 16 && !salt.contains('$') && sum.len() == len && crypt64(sum))
                .then_some(name)
                .ok_or_else(|| format!("malformed `{prefix}` hash"));
        }
    }
    if hash.len() == 13 && crypt64(hash) {
        return Ok("des-crypt");
    }
    if hash.starts_with('$') {
        let id = hash.split('$').nth(1).unwrap_or("");
        return Err(format!("`${id}$` hashes are not supported"));
    }
    Err(
        "not a supported hash (plain-text passwords are not accepted): use `htpasswd -B`"
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::kind;

    #[test]
    fn recognises_what_htpasswd_and_openssl_write() {
        let cases = [
            (
                "$2y$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
                "bcrypt",
            ),
            ("$apr1$hZ3lWQ1N$l3hlBtp6A/IH5Yl8u6YYE/", "apr1"),
            ("$1$5pZSV9va$azfrPr6af3Fc7dLblQXVa0", "md5-crypt"),
            (
                "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA",
                "sha256-crypt",
            ),
            (
                "$5$rounds=5000$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA",
                "sha256-crypt",
            ),
            ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "sha1"),
            ("aZGJuE6EXrjEE", "des-crypt"),
        ];
        for (h, k) in cases {
            assert_eq!(kind(h), Ok(k), "{h}");
        }
        for bad in [
            "secret",
            "$apr1$x$y",
            "$2y$05$short",
            "$2y$03$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
            "$9$a$b",
            "{SHA}nope",
            "",
        ] {
            assert!(kind(bad).is_err(), "{bad}");
        }
    }
}
