//! Parsing an Apache htpasswd file, line by line: a line that cannot be used is reported and grants
//! nothing, and every other line applies (so an edit that revokes a user but has a typo elsewhere
//! still revokes). The hashes themselves are checked by the host (`verify_password`).

use std::collections::BTreeMap;
use std::fmt;

use wasmgate_plugin_sdk::password_hash_kind;

/// One user's hash, as written in the file, and its kind (`bcrypt`, `apr1`, `sha1`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hash {
    pub hash: String,
    pub kind: &'static str,
}

impl Hash {
    /// The bcrypt cost, for the start-up warning about slow hashes.
    pub fn bcrypt_cost(&self) -> Option<u32> {
        (self.kind == "bcrypt")
            .then(|| self.hash.get(4..6)?.parse().ok())
            .flatten()
    }
}

/// A line that was refused.
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

/// `user:hash` per line; `#` comments and blank lines ignored. The users of the good lines, and one
/// error per refused line. A user listed twice keeps the first line, as Apache does.
pub fn parse(file: &str, text: &str) -> (BTreeMap<String, Hash>, Vec<ParseError>) {
    let mut users = BTreeMap::new();
    let mut refused = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut err = |problem: String| {
            refused.push(ParseError {
                file: file.to_owned(),
                line: n + 1,
                problem,
            })
        };
        let Some((user, hash)) = line.split_once(':') else {
            err("expected `user:hash`".into());
            continue;
        };
        if user.is_empty() {
            err("empty user name".into());
            continue;
        }
        if users.contains_key(user) {
            err(format!(
                "user `{user}` appears again; the first line counts"
            ));
            continue;
        }
        match password_hash_kind(hash) {
            Ok(kind) => {
                users.insert(
                    user.to_owned(),
                    Hash {
                        hash: hash.to_owned(),
                        kind,
                    },
                );
            }
            Err(p) => err(format!("user `{user}`: {p}")),
        }
    }
    (users, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_lines_apply_and_bad_ones_are_refused_alone() {
        let text = "a:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n# c\n\nb:$apr1$hZ3lWQ1N$l3hlBtp6A/IH5Yl8u6YYE/\n\
                    plain:secret\nnocolon\n:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\na:aZGJuE6EXrjEE\nd:aZGJuE6EXrjEE\n";
        let (users, refused) = parse("users", text);
        assert_eq!(users.keys().collect::<Vec<_>>(), ["a", "b", "d"]);
        assert_eq!(users["a"].kind, "sha1");
        assert_eq!(users["b"].kind, "apr1");
        assert_eq!(users["d"].kind, "des-crypt");
        let lines: Vec<usize> = refused.iter().map(|e| e.line).collect();
        assert_eq!(lines, [5, 6, 7, 8]);
        assert!(
            refused[0]
                .problem
                .starts_with("user `plain`: not a supported hash"),
            "{}",
            refused[0]
        );
        assert_eq!(refused[1].to_string(), "users line 6: expected `user:hash`");
        assert_eq!(refused[2].problem, "empty user name");
        assert_eq!(
            refused[3].problem,
            "user `a` appears again; the first line counts"
        );
        let (_, refused) = parse("u", "x:$2y$05$short");
        assert!(refused[0].problem.contains("malformed bcrypt hash"));
    }
}
