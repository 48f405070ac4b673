//! `verify-password`: password hashes checked natively, off the plugin's time budget.
//!
//! A bcrypt check is slow on purpose (2^cost rounds, ≈ 1–100 ms natively). Run inside a plugin it
//! counted against the plugin's time limit, so a wrong password could make the plugin exceed it —
//! and with `on_error = "allow"` let the request through. Here the guest's fiber is suspended while
//! a thread of tokio's blocking pool hashes, and the plugin's epoch deadline does not run meanwhile.
//!
//! Three things keep that from becoming a way to burn the host's CPU:
//! - a process-wide semaphore bounds the hashes running at once (`pool_size`), so bcrypt never takes
//!   more than that many threads however many requests wait;
//! - successful checks are remembered per plugin for `OK_TTL` (Apache's `mod_authn_socache`), keyed
//!   by a SHA-256 of hash and password, so a browser resending its credentials costs a lookup;
//! - failures are counted per client address (IPv6 by /64, which one host can rotate through), and
//!   an address with `MAX_FAILURES` failures in `WINDOW` gets `throttled` without any hashing until
//!   the window ends — also for passwords that would be right, or the success cache would tell a
//!   throttled guesser which of its guesses is someone's password.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::bindings::PasswordVerdict;

/// How long a successful check is remembered.
const OK_TTL: Duration = Duration::from_secs(300);
/// Remembered successes per plugin; a full cache drops its expired entries, then starts over.
const OK_MAX: usize = 4096;
/// Failures from one address within `WINDOW` after which its checks are throttled.
pub const MAX_FAILURES: u32 = 5;
/// The failure-counting window, which is also how long an address stays throttled.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked per plugin; beyond it the expired ones are dropped, then the oldest window.
const ADDRS_MAX: usize = 16_384;

/// How many hashes may run at once: one per core, at least two. The plugin host owns the one
/// semaphore (see [`HashingPool`]) that every plugin's checks share.
pub fn hashing_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// The bounded pool of host threads' slots for hashing, shared by all of one host's plugins.
pub type HashingPool = Arc<Semaphore>;

/// A hash the host can check, recognised by its form.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Bcrypt,
    Sha1([u8; 20]),
    /// `$apr1$`, `$1$`, `$5$`, `$6$` and DES crypt, all through crypt3_rs.
    Crypt(Crypt),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crypt {
    Apr1,
    Md5,
    Sha256,
    Sha512,
    Des,
}

/// `$5$[rounds=N$]salt$sum`: crypt3_rs's own recogniser wants `rounds=` present, which `openssl
/// passwd -5` and glibc leave out, so the form is checked here and the hash given to its module.
fn sha2_form(hash: &str, magic: &str, sum_len: usize) -> bool {
    let Some(rest) = hash.strip_prefix(magic) else {
        return false;
    };
    let rest = match rest.strip_prefix("rounds=") {
        Some(r) => match r.split_once('$') {
            Some((n, after)) if n.parse::<u32>().is_ok() => after,
            _ => return false,
        },
        None => rest,
    };
    matches!(rest.split_once('$'), Some((salt, sum)) if salt.len() <= 16 && sum.len() == sum_len)
}

/// What hash `hash` is, or why the host cannot check it.
fn kind(hash: &str) -> Result<Kind, String> {
    if let Some(b64) = hash.strip_prefix("{SHA}") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "`{SHA}` hash is not valid base64".to_string())?;
        return <[u8; 20]>::try_from(bytes.as_slice())
            .map(Kind::Sha1)
            .map_err(|_| "`{SHA}` hash is not 20 bytes".to_string());
    }
    if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
        return bcrypt_cost(hash).map(|_| Kind::Bcrypt);
    }
    let crypt = if hash.starts_with("$apr1$") {
        Crypt::Apr1
    } else if hash.starts_with("$1$") {
        Crypt::Md5
    } else if hash.starts_with("$5$") {
        Crypt::Sha256
    } else if hash.starts_with("$6$") {
        Crypt::Sha512
    } else if hash.len() == 13 && !hash.starts_with(['$', '_', '{']) {
        Crypt::Des
    } else if hash.starts_with('$') {
        let id = hash.split('$').nth(1).unwrap_or("");
        return Err(format!("`${id}$` hashes are not supported"));
    } else {
        return Err("not a recognised password hash".into());
    };
    let well_formed = match crypt {
        Crypt::Sha256 => sha2_form(hash, "$5$", 43),
        Crypt::Sha512 => sha2_form(hash, "$6$", 86),
        _ => crypt3_rs::Hash::try_from(hash).is_ok(),
    };
    if well_formed {
        Ok(Kind::Crypt(crypt))
    } else {
        Err(format!("malformed {crypt:?} crypt hash"))
    }
}

fn bcrypt_cost(hash: &str) -> Result<u32, String> {
    use std::str::FromStr;
    let parts =
        bcrypt::HashParts::from_str(hash).map_err(|e| format!("malformed bcrypt hash: {e}"))?;
    match parts.get_cost() {
        c @ 4..=31 => Ok(c),
        c => Err(format!("bcrypt cost {c} is outside 4..=31")),
    }
}

/// The actual check (on a blocking thread). Errors are a failed check, never a pass.
fn check(kind: &Kind, hash: &str, password: &[u8]) -> bool {
    match kind {
        Kind::Bcrypt => bcrypt::verify(password, hash).unwrap_or(false),
        Kind::Sha1(expected) => {
            let got: [u8; 20] = Sha1::digest(password).into();
            got.ct_eq(expected).into()
        }
        Kind::Crypt(c) => {
            use crypt3_rs::crypt as m;
            // Each recomputes the hash with the stored one's salt (and rounds); the old schemes are
            // marked deprecated for *new* passwords, which is not what this does.
            #[allow(deprecated)]
            let computed = match c {
                Crypt::Apr1 => m::apr1::hash_with(hash, password),
                Crypt::Md5 => m::md5::hash_with(hash, password),
                Crypt::Sha256 => m::sha256::hash_with(hash, password),
                Crypt::Sha512 => m::sha512::hash_with(hash, password),
                Crypt::Des => m::unix::hash_with(hash, password),
            };
            match computed {
                Ok(computed) => {
                    let (a, b) = (computed.as_str().as_bytes(), hash.as_bytes());
                    a.len() == b.len() && bool::from(a.ct_eq(b))
                }
                Err(_) => false,
            }
        }
    }
}

/// A plugin's memory of checks: successes to reuse and failures to throttle. One per loaded plugin,
/// so a reload (new htpasswd) starts afresh and sites never see each other's clients.
pub struct Passwords {
    pool: HashingPool,
    ok: Mutex<HashMap<[u8; 32], Instant>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
}

/// IPv6 clients are counted by /64: a single host usually has a whole one to pick addresses from.
fn throttle_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

impl Passwords {
    pub fn new(pool: HashingPool) -> Passwords {
        Passwords {
            pool,
            ok: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// Check `password` against `hash` for a request from `client`.
    pub async fn verify(
        &self,
        hash: String,
        password: Vec<u8>,
        client: Option<IpAddr>,
    ) -> Result<PasswordVerdict, String> {
        let now = Instant::now();
        if let Some(wait) = client.and_then(|c| self.throttled(c, now)) {
            return Ok(PasswordVerdict::Throttled(wait.as_secs().max(1) as u32));
        }
        // No hash: the user does not exist. Nothing to hash, but it is a failed login all the same,
        // or guessing user names would be free.
        if hash.is_empty() {
            if let Some(c) = client {
                self.fail(c, now);
            }
            return Ok(PasswordVerdict::Mismatch);
        }
        let kind = kind(&hash)?;
        let key: [u8; 32] = {
            let mut d = Sha256::new();
            d.update((hash.len() as u64).to_le_bytes());
            d.update(hash.as_bytes());
            d.update(&password);
            d.finalize().into()
        };
        if self.remembered(&key, now) {
            return Ok(PasswordVerdict::Match);
        }
        // The permit moves into the blocking task: a caller that gives up (its deadline passed)
        // does not free a slot while its hash still runs.
        let permit = self
            .pool
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "the password pool is closed".to_string())?;
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            check(&kind, &hash, &password)
        })
        .await
        .map_err(|e| format!("password check failed: {e}"))?;
        let now = Instant::now();
        if ok {
            self.remember(key, now);
            Ok(PasswordVerdict::Match)
        } else {
            if let Some(c) = client {
                self.fail(c, now);
            }
            Ok(PasswordVerdict::Mismatch)
        }
    }

    /// How long `client` must still wait, if it is throttled.
    fn throttled(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let f = map.get(&throttle_key(client))?;
        let end = f.since + WINDOW;
        (f.count >= MAX_FAILURES && now < end).then(|| end - now)
    }

    fn fail(&self, client: IpAddr, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= ADDRS_MAX {
            map.retain(|_, f| now.saturating_duration_since(f.since) < WINDOW);
            if map.len() >= ADDRS_MAX {
                // Still full of live windows (a flood of addresses): forget the oldest one.
                if let Some(oldest) = map.iter().min_by_key(|(_, f)| f.since).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let f = map.entry(throttle_key(client)).or_insert(Failures {
            since: now,
            count: 0,
        });
        if now.saturating_duration_since(f.since) >= WINDOW {
            *f = Failures {
                since: now,
                count: 0,
            };
        }
        f.count += 1;
        if f.count == MAX_FAILURES {
            tracing::warn!(target: "wasmgate::plugin", client = %client, "password checks throttled: {MAX_FAILURES} failures within {}s", WINDOW.as_secs());
        }
    }

    fn remembered(&self, key: &[u8; 32], now: Instant) -> bool {
        let map = self.ok.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .is_some_and(|at| now.saturating_duration_since(*at) < OK_TTL)
    }

    fn remember(&self, key: [u8; 32], now: Instant) {
        let mut map = self.ok.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= OK_MAX {
            map.retain(|_, at| now.saturating_duration_since(*at) < OK_TTL);
            if map.len() >= OK_MAX {
                map.clear();
            }
        }
        map.insert(key, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // From OpenSSL 3.0: `openssl passwd -apr1 -salt hZ3lWQ1N secret`, `openssl passwd -1 -salt
    // 5pZSV9va password`, `openssl passwd -5|-6 -salt saltsalt secret`; DES from glibc's crypt("test",
    // "aZ").
    const APR1_SECRET: &str = "$apr1$hZ3lWQ1N$l3hlBtp6A/IH5Yl8u6YYE/";
    const SHA256_SECRET: &str = "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA";
    const SHA512_SECRET: &str = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
    const MD5_PASSWORD: &str = "$1$5pZSV9va$azfrPr6af3Fc7dLblQXVa0";
    const DES_TEST: &str = "aZGJuE6EXrjEE";
    const SHA1_PASSWORD: &str = "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=";
    const BCRYPT_UU: &str = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";

    fn verify(hash: &str, pw: &str) -> bool {
        check(&kind(hash).unwrap(), hash, pw.as_bytes())
    }

    #[test]
    fn every_kind_accepts_its_password_and_refuses_others() {
        for (hash, good) in [
            (APR1_SECRET, "secret"),
            (SHA256_SECRET, "secret"),
            (SHA512_SECRET, "secret"),
            (MD5_PASSWORD, "password"),
            (DES_TEST, "test"),
            (SHA1_PASSWORD, "password"),
            (BCRYPT_UU, "U*U"),
        ] {
            assert!(verify(hash, good), "{hash}");
            assert!(!verify(hash, "wrong"), "{hash}");
            assert!(!verify(hash, ""), "{hash}");
        }
    }

    #[test]
    fn unknown_and_malformed_hashes_are_errors() {
        assert!(kind("plain-text-password").is_err());
        assert!(kind("$apr1$short").is_err());
        assert!(kind("$9$whatever$x").is_err());
        assert!(kind("{SHA}not base64!").is_err());
        assert!(kind("$2y$05$short").is_err());
    }

    #[tokio::test]
    async fn successes_are_remembered_and_failures_throttle_one_address() {
        let p = Passwords::new(Arc::new(Semaphore::new(hashing_slots())));
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "192.0.2.8".parse().unwrap();
        let v = |pw: &str, c| p.verify(SHA1_PASSWORD.into(), pw.as_bytes().to_vec(), Some(c));
        assert!(matches!(
            v("password", a).await.unwrap(),
            PasswordVerdict::Match
        ));
        for _ in 0..MAX_FAILURES {
            assert!(matches!(
                v("nope", a).await.unwrap(),
                PasswordVerdict::Mismatch
            ));
        }
        // Throttled, even for the right password (which the success cache knows).
        assert!(
            matches!(v("password", a).await.unwrap(), PasswordVerdict::Throttled(s) if (1..=60).contains(&s))
        );
        // Another address is not.
        assert!(matches!(
            v("password", b).await.unwrap(),
            PasswordVerdict::Match
        ));
        // IPv6 by /64.
        let x: IpAddr = "2001:db8::1".parse().unwrap();
        let y: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(matches!(
                v("nope", x).await.unwrap(),
                PasswordVerdict::Mismatch
            ));
        }
        assert!(matches!(
            v("password", y).await.unwrap(),
            PasswordVerdict::Throttled(_)
        ));
    }
}
