//! Tenants: a client request's bearer token names the tenant it is made for,
//! and that tenant's requests are held to its quotas on this node (commands
//! per minute, requests running at once). The tenant then travels with each
//! of the request's calls as its `Caller`, which the plugin that runs the
//! call checks against its manifest's `callers`.
//!
//! Tokens are kept as SHA-256 digests, so a config file may hold digests
//! only, and a lookup compares digests rather than the secret itself.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use governor::clock::{Clock, DefaultClock};
use serde::Serialize;
use sha2::{Digest, Sha256};
use weft_proto::{Caller, ErrorKind, WeftError};

use crate::config::{Config, TenantSection};
use crate::metrics::Metrics;

/// Plain tokens shorter than this are refused by the config check.
const MIN_TOKEN_CHARS: usize = 16;

/// The digest a config token stands for: "sha256:" + 64 hex digits, or the
/// digest of the text itself. Anything that looks like a digest ("SHA256:",
/// "sha512:" ...) is read as one or refused, never taken as a plain token:
/// the line meant to keep the secret out of the file would otherwise be a
/// working credential itself.
pub(crate) fn token_digest(token: &str) -> Result<[u8; 32], String> {
    let algorithm = token
        .split_once(':')
        .map(|(algorithm, _)| algorithm.to_ascii_lowercase())
        .filter(|a| a.len() > 3 && a.starts_with("sha") && a[3..].bytes().all(|b| b.is_ascii_digit() || b == b'-'));
    if algorithm.as_deref().is_some_and(|a| a != "sha256") {
        return Err("only \"sha256:\" digests are understood (`weft token` makes one)".into());
    }
    let Some(hex) = algorithm.and_then(|_| token.get(7..)) else {
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(format!(
                "a token of fewer than {MIN_TOKEN_CHARS} characters is easy to guess; use a long random one (e.g. `openssl rand -hex 32`)"
            ));
        }
        return Ok(Sha256::digest(token.as_bytes()).into());
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a \"sha256:\" token needs the 64 hex digits of the digest after it".into());
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(digest)
}

/// A new random token (64 hex digits) and the `tokens` entry that names it
/// by digest ("sha256:..."), for `weft token`.
pub fn new_token() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let token = hex(&bytes);
    let entry = format!("sha256:{}", hex(&Sha256::digest(token.as_bytes())));
    (token, entry)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The token of an `Authorization: Bearer TOKEN` header (HTTP calls, and
/// the WebSocket upgrade, where it is the connection's default token).
pub(crate) fn bearer(headers: &hyper::HeaderMap) -> Option<String> {
    let mut all = headers.get_all(hyper::header::AUTHORIZATION).iter();
    let value = all.next()?;
    // Present but unusable (another scheme, no token, two headers) is an
    // empty token, which `admit` refuses: a credential that was meant is
    // never taken as none.
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned()));
    Some(token.filter(|_| all.next().is_none()).unwrap_or_default())
}

/// The tenants of `[tenants]` and whether a token is required.
#[derive(Default)]
pub struct Tenants {
    required: bool,
    /// Digests of `auth.operator_tokens`: the admin API's keys, if any.
    operators: Vec<[u8; 32]>,
    /// By name (the config's order).
    all: Vec<Arc<Tenant>>,
    by_token: HashMap<[u8; 32], Arc<Tenant>>,
}

struct Tenant {
    name: Arc<str>,
    tokens: usize,
    /// Requests of this tenant running on this node now (at most
    /// `max_in_flight` when that is not 0). Shared with the tenant of the
    /// same name in the config before a reload, as is `calls` while
    /// `calls_per_minute` stays: a reload must not hand out fresh quotas.
    running: Arc<AtomicUsize>,
    calls_per_minute: u32,
    calls: Option<Arc<governor::DefaultDirectRateLimiter>>,
    max_in_flight: u32,
}

/// A request let in: who it is for, and its place among its tenant's
/// requests running (given back when the request ends).
pub struct Admission {
    pub caller: Caller,
    tenant: Option<Arc<Tenant>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(t) = &self.tenant {
            t.running.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One tenant as `GET /v1/tenants` shows it (never its tokens).
#[derive(Debug, Serialize)]
pub struct TenantInfo {
    pub name: String,
    pub tokens: usize,
    pub calls_per_minute: u32,
    pub max_in_flight: u32,
    pub in_flight: usize,
}

impl Tenants {
    /// `[auth]` and `[tenants]` of a loaded config, taking over the
    /// requests running and the minute's commands of `previous` (the
    /// tenants before a reload).
    pub fn from_config(config: &Config, previous: &Tenants) -> Self {
        let operators = config.auth.operator_tokens.iter().filter_map(|t| token_digest(t).ok()).collect();
        Self { operators, ..Self::new(config.auth.required, &config.tenants, previous) }
    }

    /// From a checked config (`Config::load` refused bad tokens already;
    /// one that still fails here is skipped).
    pub fn new(required: bool, sections: &BTreeMap<String, TenantSection>, previous: &Tenants) -> Self {
        let (mut all, mut by_token) = (Vec::new(), HashMap::new());
        for (name, section) in sections {
            let before = previous.all.iter().find(|t| *t.name == **name);
            let calls = match before.filter(|t| t.calls_per_minute == section.calls_per_minute) {
                Some(t) => t.calls.clone(),
                None => NonZeroU32::new(section.calls_per_minute)
                    .map(|n| Arc::new(governor::RateLimiter::direct(governor::Quota::per_minute(n)))),
            };
            let tenant = Arc::new(Tenant {
                name: name.as_str().into(),
                tokens: section.tokens.len(),
                running: before.map_or_else(Arc::default, |t| t.running.clone()),
                calls_per_minute: section.calls_per_minute,
                calls,
                max_in_flight: section.max_in_flight,
            });
            for token in &section.tokens {
                if let Ok(digest) = token_digest(token) {
                    by_token.insert(digest, tenant.clone());
                }
            }
            all.push(tenant);
        }
        Self { required, operators: Vec::new(), all, by_token }
    }

    /// Lets an admin API request in, or says why not (UNAUTHENTICATED):
    /// with `auth.operator_tokens` set, its bearer token must be one.
    pub fn admit_operator(&self, token: Option<&str>) -> Result<(), WeftError> {
        let digest: Option<[u8; 32]> = token.map(|t| Sha256::digest(t.as_bytes()).into());
        if self.operators.is_empty() || digest.is_some_and(|d| self.operators.contains(&d)) {
            return Ok(());
        }
        let why = if token.is_some() { "the bearer token sent is not one of them" } else { "none was sent" };
        Err(WeftError::new(
            ErrorKind::UNAUTHENTICATED,
            format!(
                "this node's admin API takes requests with an operator token only (auth.operator_tokens), and {why}: send `Authorization: Bearer TOKEN` (weft: --admin-token or WEFT_ADMIN_TOKEN)"
            ),
        ))
    }

    pub fn required(&self) -> bool {
        self.required
    }

    /// Every tenant, by name, with its quotas and requests running now.
    pub fn list(&self) -> Vec<TenantInfo> {
        self.all
            .iter()
            .map(|t| TenantInfo {
                name: t.name.to_string(),
                tokens: t.tokens,
                calls_per_minute: t.calls_per_minute,
                max_in_flight: t.max_in_flight,
                in_flight: t.running.load(Ordering::Acquire),
            })
            .collect()
    }

    /// Lets a request of `commands` commands in, or says why not:
    /// UNAUTHENTICATED for a missing (when required) or unknown token,
    /// RESOURCE_EXHAUSTED over the tenant's requests in flight, RATE_LIMITED
    /// over its commands per minute.
    pub fn admit(&self, token: Option<&str>, commands: usize, metrics: &Metrics) -> Result<Admission, WeftError> {
        if token == Some("") {
            return Err(WeftError::new(
                ErrorKind::UNAUTHENTICATED,
                "the request's token is empty, or its Authorization header is not one `Bearer TOKEN`; send a tenant's token, or none at all to call anonymously where the node allows it",
            ));
        }
        let Some(token) = token else {
            if self.required {
                return Err(WeftError::new(
                    ErrorKind::UNAUTHENTICATED,
                    "this node takes requests only with a bearer token (auth.required); send it as the request's `token` (or in an HTTP `Authorization: Bearer` header)",
                ));
            }
            return Ok(Admission { caller: Caller::Anonymous, tenant: None });
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let Some(tenant) = self.by_token.get(&digest) else {
            return Err(WeftError::new(
                ErrorKind::UNAUTHENTICATED,
                "the request's token is not one this node knows; check it, or ask the operator for one ([tenants.NAME] tokens)",
            ));
        };
        let count = |outcome| metrics.tenant_commands(&tenant.name, outcome, commands);
        tenant.enter().inspect_err(|_| count("over_max_in_flight"))?;
        // From here on, dropping the admission gives the place back.
        let admission = Admission { caller: Caller::Tenant(tenant.name.clone()), tenant: Some(tenant.clone()) };
        tenant.charge(commands).inspect_err(|_| count("over_calls_per_minute"))?;
        count("admitted");
        Ok(admission)
    }
}

impl Tenant {
    /// Takes a place among the tenant's requests running.
    fn enter(&self) -> Result<(), WeftError> {
        let max = self.max_in_flight as usize;
        let room = |n: usize| (max == 0 || n < max).then_some(n + 1);
        self.running.fetch_update(Ordering::AcqRel, Ordering::Acquire, room).map(drop).map_err(|_| {
            WeftError::new(
                ErrorKind::RESOURCE_EXHAUSTED,
                format!(
                    "tenant {} already has {} requests running on this node (tenants.{}.max_in_flight); wait for one to finish",
                    self.name, self.max_in_flight, self.name
                ),
            )
            .with("tenant", &*self.name)
            .with("limit", self.max_in_flight)
        })
    }

    fn charge(&self, commands: usize) -> Result<(), WeftError> {
        let Some(calls) = &self.calls else {
            return Ok(());
        };
        let n = NonZeroU32::new(u32::try_from(commands.max(1)).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        let over = |message: String| {
            WeftError::new(ErrorKind::RATE_LIMITED, message)
                .with("tenant", &*self.name)
                .with("limit", self.calls_per_minute)
        };
        match calls.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                Err(over(format!(
                    "tenant {} is over its {} commands per minute (tenants.{}.calls_per_minute); retry in {ms} ms",
                    self.name, self.calls_per_minute, self.name
                ))
                .with("retry_after_ms", ms))
            }
            Err(_) => Err(over(format!(
                "a request of {commands} commands is more than tenant {} may start in a minute ({}, tenants.{}.calls_per_minute); split it",
                self.name, self.calls_per_minute, self.name
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACME: &str = "acme-token-0123456789";
    const BOB: &str = "bob-token-0123456789";

    fn admit(t: &Tenants, token: Option<&str>, commands: usize) -> Result<Admission, WeftError> {
        t.admit(token, commands, &Metrics::new())
    }

    fn tenants(required: bool, acme: TenantSection) -> Tenants {
        let bob_digest = hex(&Sha256::digest(BOB.as_bytes()));
        let bob = TenantSection { tokens: vec![format!("sha256:{bob_digest}")], ..TenantSection::default() };
        let acme = TenantSection { tokens: vec![ACME.into()], ..acme };
        Tenants::new(required, &BTreeMap::from([("acme".into(), acme), ("bob".into(), bob)]), &Tenants::default())
    }

    #[test]
    fn an_authorization_header_that_is_not_one_bearer_token_is_an_empty_token_never_none() {
        let headers = |values: &[&str]| {
            let mut h = hyper::HeaderMap::new();
            for v in values {
                h.append(hyper::header::AUTHORIZATION, hyper::header::HeaderValue::from_str(v).unwrap());
            }
            bearer(&h)
        };
        assert_eq!(headers(&[]), None);
        assert_eq!(headers(&[&format!("Bearer {ACME}")]).as_deref(), Some(ACME));
        assert_eq!(headers(&[&format!("bearer  {ACME} ")]).as_deref(), Some(ACME));
        for bad in [&["Basic dXNlcjpwdw=="][..], &["Bearer "], &["Bearer"], &[&format!("Bearer {ACME}"), "Bearer x"]] {
            assert_eq!(headers(bad).as_deref(), Some(""), "{bad:?}");
        }
        let open = tenants(false, TenantSection::default());
        let e = admit(&open, Some(""), 1).err().unwrap();
        assert_eq!(e.kind, ErrorKind::UNAUTHENTICATED);
        assert!(e.message.contains("token is empty"), "{e}");
    }

    #[test]
    fn a_token_names_its_tenant_and_a_missing_one_is_anonymous_unless_required() {
        let open = tenants(false, TenantSection::default());
        assert_eq!(admit(&open, Some(ACME), 1).unwrap().caller, Caller::Tenant("acme".into()));
        assert_eq!(admit(&open, Some(BOB), 1).unwrap().caller, Caller::Tenant("bob".into()), "by digest");
        assert_eq!(admit(&open, None, 1).unwrap().caller, Caller::Anonymous);
        let wrong = admit(&open, Some("not-a-token-of-anyone"), 1).err().unwrap();
        assert_eq!(wrong.kind, ErrorKind::UNAUTHENTICATED, "a wrong token is never anonymous");

        let closed = tenants(true, TenantSection::default());
        let e = admit(&closed, None, 1).err().unwrap();
        assert!(e.kind == ErrorKind::UNAUTHENTICATED && e.message.contains("auth.required"), "{e}");
        assert!(admit(&closed, Some(ACME), 1).is_ok());
    }

    #[test]
    fn requests_in_flight_are_bounded_per_tenant_and_freed_when_they_end() {
        let t = tenants(false, TenantSection { max_in_flight: 2, ..TenantSection::default() });
        let first = admit(&t, Some(ACME), 1).unwrap();
        let _second = admit(&t, Some(ACME), 1).unwrap();
        let e = admit(&t, Some(ACME), 1).err().unwrap();
        assert!(e.kind == ErrorKind::RESOURCE_EXHAUSTED && e.message.contains("tenants.acme.max_in_flight"), "{e}");
        assert!(admit(&t, Some(BOB), 1).is_ok(), "another tenant is not held up");
        let running = |t: &Tenants| t.list().iter().map(|i| (i.name.clone(), i.in_flight)).collect::<Vec<_>>();
        assert_eq!(running(&t), [("acme".to_owned(), 2), ("bob".to_owned(), 0)]);
        drop(first);
        assert_eq!(running(&t)[0], ("acme".to_owned(), 1));
        assert!(admit(&t, Some(ACME), 1).is_ok());
    }

    #[test]
    fn a_tenant_without_tokens_is_listed_and_never_admitted() {
        let owner = TenantSection { max_in_flight: 3, ..TenantSection::default() };
        let t = Tenants::new(true, &BTreeMap::from([("owner".into(), owner)]), &Tenants::default());
        let listed = t.list();
        assert_eq!((listed[0].name.as_str(), listed[0].tokens, listed[0].max_in_flight), ("owner", 0, 3));
        assert_eq!(admit(&t, Some(ACME), 1).err().unwrap().kind, ErrorKind::UNAUTHENTICATED);
    }

    #[test]
    fn commands_per_minute_are_charged_per_command() {
        let t = tenants(false, TenantSection { calls_per_minute: 5, ..TenantSection::default() });
        assert!(admit(&t, Some(ACME), 3).is_ok());
        assert!(admit(&t, Some(ACME), 2).is_ok());
        let e = admit(&t, Some(ACME), 1).err().unwrap();
        assert_eq!(e.kind, ErrorKind::RATE_LIMITED);
        assert!(e.message.contains("tenants.acme.calls_per_minute") && e.details.contains_key("retry_after_ms"), "{e}");
        let e = admit(&t, Some(ACME), 6).err().unwrap();
        assert!(e.message.contains("split it"), "{e}");
        assert_eq!(t.list()[0].in_flight, 0, "a refused request gives its place back");
        assert!(admit(&t, Some(BOB), 100).is_ok(), "bob has no quota");
    }

    #[test]
    fn a_new_token_is_named_by_its_entry() {
        let (token, entry) = new_token();
        assert_eq!(token.len(), 64);
        assert_eq!(token_digest(&entry).unwrap(), token_digest(&token).unwrap());
        assert_ne!(new_token().0, token);
    }

    #[test]
    fn config_tokens_are_long_texts_or_sha256_digests() {
        assert!(token_digest("short").unwrap_err().contains("easy to guess"));
        assert_eq!(token_digest(ACME).unwrap(), <[u8; 32]>::from(Sha256::digest(ACME.as_bytes())));
        assert!(token_digest(&format!("sha256:{}", "ab".repeat(32))).is_ok());
        for bad in ["sha256:abc", "sha256:", &format!("sha256:{}", "zz".repeat(32))] {
            assert!(token_digest(bad).unwrap_err().contains("64 hex digits"), "{bad}");
        }
        // A digest in capitals is still a digest, not a token that is its own text.
        let digest = "ab".repeat(32);
        assert_eq!(token_digest(&format!("SHA256:{digest}")), token_digest(&format!("sha256:{digest}")));
        for other in [format!("sha512:{digest}"), format!("SHA-1:{digest}"), format!("sha1:{digest}")] {
            assert!(token_digest(&other).unwrap_err().contains("only \"sha256:\" digests"), "{other}");
        }
    }

    #[test]
    fn a_reload_takes_over_the_requests_running_and_the_minute_s_commands() {
        let quotas = TenantSection { max_in_flight: 1, calls_per_minute: 3, ..TenantSection::default() };
        let before = tenants(false, quotas.clone());
        let running = admit(&before, Some(ACME), 2).unwrap();
        let same = |previous: &Tenants, quotas: TenantSection| {
            let acme = TenantSection { tokens: vec![ACME.into()], ..quotas };
            Tenants::new(false, &BTreeMap::from([("acme".into(), acme)]), previous)
        };
        let after = same(&before, quotas.clone());
        assert_eq!(after.list()[0].in_flight, 1, "the request running before the reload counts");
        let e = admit(&after, Some(ACME), 1).err().unwrap();
        assert_eq!(e.kind, ErrorKind::RESOURCE_EXHAUSTED, "{e}");
        drop(running);
        assert_eq!(after.list()[0].in_flight, 0, "and gives its place back to the new tenants");
        let e = admit(&after, Some(ACME), 2).err().unwrap();
        assert_eq!(e.kind, ErrorKind::RATE_LIMITED, "the minute's two commands still count: {e}");
        // A new rate is a new budget.
        let faster = same(&after, TenantSection { calls_per_minute: 10, ..quotas });
        assert!(admit(&faster, Some(ACME), 2).is_ok());
    }
}
