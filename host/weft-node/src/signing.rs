//! What the ed25519 keys of `weft keygen` sign, and the checks against the
//! keys trusted per cluster:
//! - route updates, signed by the sending cluster over that cluster, the
//!   sending node, the cluster the update is for, the epoch and every
//!   announcement, so that one cannot be replayed under another cluster's or
//!   node's name nor presented to another cluster (the route table's
//!   per-node epoch check refuses an old one, or a copy);
//! - link proofs, that a node holds its cluster's key;
//! - origin proofs, that a call started in the cluster it says, for plugins
//!   open to some clusters only, checked by each cluster on the way that
//!   does not trust its neighbour with that (`Policy::vouches`) and good
//!   once per node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use weft_fabric::Announcement;
use weft_proto::{ClusterId, NodeId};

/// A signature and the public key that made it, both base64.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSig {
    pub key: String,
    pub sig: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error(
        "the route update from cluster {0} is unsigned, and this node expects it signed (routing.security.require_signatures, or keys listed for {0} in trusted_keys)"
    )]
    Unsigned(ClusterId),
    #[error(
        "the route update from cluster {cluster} is signed by key {key}, which is not in routing.security.trusted_keys for {cluster}"
    )]
    UntrustedKey { cluster: ClusterId, key: String },
    #[error("the signature on the route update from cluster {0} does not verify (forged or altered)")]
    BadSignature(ClusterId),
    #[error(
        "the route update from cluster {cluster} was signed {age_s} s ago by its clock, more than the {window_s} s allowed: a recorded update replayed, or clocks apart (keep the clusters' clocks in sync with NTP)"
    )]
    Expired { cluster: ClusterId, age_s: u64, window_s: u64 },
    #[error(
        "the route update from cluster {cluster} is dated {ahead_s} s ahead of this node's clock, more than the {window_s} s allowed: clocks apart (keep the clusters' clocks in sync with NTP)"
    )]
    Ahead { cluster: ClusterId, ahead_s: u64, window_s: u64 },
}

/// Why a route update is refused whole: `SigError::kind`, or a replay.
pub const UPDATE_REJECTIONS: [&str; 6] =
    ["unsigned", "untrusted-key", "bad-signature", "expired", "ahead", "stale-epoch"];

impl SigError {
    /// A closed label for metrics (one of `UPDATE_REJECTIONS`).
    pub fn kind(&self) -> &'static str {
        match self {
            SigError::Unsigned(_) => "unsigned",
            SigError::UntrustedKey { .. } => "untrusted-key",
            SigError::BadSignature(_) => "bad-signature",
            SigError::Expired { .. } => "expired",
            SigError::Ahead { .. } => "ahead",
        }
    }
}

/// A new key pair: (private seed, public key), both base64.
pub fn generate() -> (String, String) {
    let seed: [u8; 32] = rand::random();
    let key = SigningKey::from_bytes(&seed);
    (B64.encode(seed), public_of(&key))
}

/// The public key of `key`, base64, as `trusted_keys` lists it.
pub fn public_of(key: &SigningKey) -> String {
    B64.encode(key.verifying_key().as_bytes())
}

/// Reads a private key written by `weft keygen`.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, String> {
    // A public key is 32 bytes of base64 too: only its name tells them apart.
    if path.extension().is_some_and(|e| e == "pub") {
        return Err(format!(
            "{} is a public key (`weft keygen` writes the private key beside it, without .pub); point signing_key at the private key",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.trim_start().starts_with("-----BEGIN") {
        return Err(format!(
            "{} is a PEM file (a TLS key or certificate?), not a signing key; make one with `weft keygen --out FILE`",
            path.display()
        ));
    }
    let bytes = B64.decode(text.trim()).map_err(|e| format!("{} is not base64: {e}", path.display()))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format!("{} does not hold a 32-byte ed25519 key; make one with `weft keygen`", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Parses a base64 public key.
pub fn parse_public(text: &str) -> Result<VerifyingKey, String> {
    let bytes = B64.decode(text.trim()).map_err(|e| format!("{text:?} is not base64: {e}"))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| format!("{text:?} is not a 32-byte ed25519 public key"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("{text:?} is not an ed25519 public key: {e}"))
}

/// What a signature binds besides the announcements: the sending cluster
/// and node, the cluster the update is for, and its epoch.
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    pub from: &'a ClusterId,
    pub node: &'a NodeId,
    pub to: &'a ClusterId,
    pub epoch: u64,
}

/// The bytes an update signs: a fixed prefix, then JSON of the envelope and
/// the announcements. The node is covered so that an update cannot be
/// replayed under another node's name (epochs are kept per sending node),
/// and the receiving cluster so that one sent to a neighbour cannot be
/// presented to another.
fn signed_bytes(env: &Envelope<'_>, routes: &[Announcement]) -> Vec<u8> {
    let body = serde_json::to_vec(&(env.from, env.node, env.to, env.epoch, routes)).unwrap_or_default();
    [b"weft-routes-v3\n".as_slice(), &body].concat()
}

pub fn sign(key: &SigningKey, env: &Envelope<'_>, routes: &[Announcement]) -> RouteSig {
    signature(key, &signed_bytes(env, routes))
}

/// `bytes` signed by `key`: the public key and the signature, base64.
fn signature(key: &SigningKey, bytes: &[u8]) -> RouteSig {
    RouteSig { key: B64.encode(key.verifying_key().as_bytes()), sig: B64.encode(key.sign(bytes).to_bytes()) }
}

/// Whether the base64 signature `sig` is `key`'s over `bytes`.
fn verifies(key: &VerifyingKey, bytes: &[u8], sig: &str) -> bool {
    let sig: Option<[u8; 64]> = B64.decode(sig.as_bytes()).ok().and_then(|b| b.try_into().ok());
    sig.is_some_and(|sig| key.verify(bytes, &Signature::from_bytes(&sig)).is_ok())
}

/// The keys trusted for each cluster, and whether signatures are required.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    pub require: bool,
    pub keys: BTreeMap<ClusterId, Vec<VerifyingKey>>,
}

impl Trust {
    /// Whether every update from `cluster` that passes was signed by a key
    /// trusted for it.
    pub fn checks(&self, cluster: &ClusterId) -> bool {
        self.require || self.keys.contains_key(cluster)
    }

    /// Checks an update from node `env.node` of cluster `env.from`. Unsigned
    /// updates pass only when signatures are not required and no key is
    /// listed for that cluster (listing keys means "this cluster signs"); a
    /// signature, when present, must verify with a key trusted for that very
    /// cluster, and have been made (its epoch, the sender's clock) within
    /// `CLOCK_WINDOW_MS` of `now_ms`: the epoch check alone forgets a node
    /// that has been gone long, and would then take its old updates.
    pub fn verify(
        &self,
        env: &Envelope<'_>,
        routes: &[Announcement],
        sig: Option<&RouteSig>,
        now_ms: u64,
    ) -> Result<(), SigError> {
        let cluster = env.from;
        let Some(sig) = sig else {
            return if self.checks(cluster) { Err(SigError::Unsigned(cluster.clone())) } else { Ok(()) };
        };
        let untrusted = || SigError::UntrustedKey { cluster: cluster.clone(), key: sig.key.clone() };
        let key = parse_public(&sig.key).map_err(|_| untrusted())?;
        let trusted = self.keys.get(cluster).is_some_and(|keys| keys.contains(&key));
        if !trusted {
            // Without any key for this cluster and without the requirement,
            // a signature cannot be checked and is not needed.
            return if self.checks(cluster) { Err(untrusted()) } else { Ok(()) };
        }
        if !verifies(&key, &signed_bytes(env, routes), &sig.sig) {
            return Err(SigError::BadSignature(cluster.clone()));
        }
        let window_s = CLOCK_WINDOW_MS / 1000;
        let cluster = cluster.clone();
        match (now_ms.saturating_sub(env.epoch), env.epoch.saturating_sub(now_ms)) {
            (age, _) if age > CLOCK_WINDOW_MS => Err(SigError::Expired { cluster, age_s: age / 1000, window_s }),
            // An epoch far ahead would also be remembered, and shut out the
            // sender's own updates once its clock is put right.
            (_, ahead) if ahead > CLOCK_WINDOW_MS => Err(SigError::Ahead { cluster, ahead_s: ahead / 1000, window_s }),
            _ => Ok(()),
        }
    }
}

/// How far a dialler's clock may be from ours before its link proof is
/// refused as stale (a copied hello stops working after this long), and how
/// old a signed route update may be.
const CLOCK_WINDOW_MS: u64 = 120_000;

/// A node's proof on a link that it holds its cluster's key: a signature
/// over its own hello and either the time (the dialler, whose hello comes
/// first) or the dialler's nonce (the acceptor, whose welcome answers it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkProof {
    pub key: String,
    pub sig: String,
    /// Unix ms when the dialler signed; absent in a welcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
}

/// Who a proof speaks for, and what it answers.
#[derive(Clone, Copy)]
pub struct LinkClaim<'a> {
    pub node: &'a NodeId,
    pub cluster: &'a ClusterId,
    pub incarnation: u64,
    /// The dialler's own nonce (in a hello) or the one it sent (in a welcome).
    pub nonce: &'a str,
}

fn link_bytes(claim: &LinkClaim<'_>, at_ms: Option<u64>) -> Vec<u8> {
    let role = if at_ms.is_some() { "hello" } else { "welcome" };
    let body = serde_json::to_vec(&(role, claim.node, claim.cluster, claim.incarnation, claim.nonce, at_ms))
        .unwrap_or_default();
    [b"weft-link-v1\n".as_slice(), &body].concat()
}

/// This node's key material: its cluster's key, the keys it trusts per
/// cluster (its own cluster's public key included), and whether a peer must
/// prove its cluster before a link comes up
/// (`routing.security.authenticate_links`). Links prove their cluster with
/// it, and calls the cluster they started in.
#[derive(Default)]
pub struct Keys {
    pub require_links: bool,
    pub key: Option<SigningKey>,
    pub keys: BTreeMap<ClusterId, Vec<VerifyingKey>>,
}

impl Keys {
    /// Whether a key is trusted for `cluster`, so that its proofs can be
    /// checked here.
    pub fn knows(&self, cluster: &ClusterId) -> bool {
        self.keys.get(cluster).is_some_and(|keys| !keys.is_empty())
    }

    /// This node's proof that the call `claim` describes starts in its
    /// cluster, if it has a key.
    pub fn prove_origin(&self, claim: &CallClaim<'_>, now_ms: u64) -> Option<OriginProof> {
        let (expires_ms, nonce) = (now_ms + ORIGIN_PROOF_TTL_MS, nonce());
        let RouteSig { key, sig } = signature(self.key.as_ref()?, &call_bytes(claim, expires_ms, &nonce));
        Some(OriginProof { key, sig, expires_ms, nonce })
    }

    /// Checks a proof that a call started in `claim.origin`: made by a key
    /// trusted for that cluster, over this very call, and not expired by
    /// this node's clock. Whether it was used before is `SeenProofs`'s
    /// to say. The error completes "the call's proof ...".
    pub fn check_origin(&self, claim: &CallClaim<'_>, proof: &OriginProof, now_ms: u64) -> Result<(), String> {
        let origin = claim.origin;
        let trusted = self.keys.get(origin);
        let key = parse_public(&proof.key).ok().filter(|k| trusted.is_some_and(|keys| keys.contains(k)));
        let Some(key) = key else {
            return Err(match trusted {
                Some(_) => format!("is signed by key {}, which is not trusted for cluster {origin}", proof.key),
                None => format!("cannot be checked: routing.security.trusted_keys lists no key for cluster {origin}"),
            });
        };
        if proof.expires_ms.saturating_add(ORIGIN_CLOCK_SKEW_MS) < now_ms {
            return Err(format!(
                "expired {} s ago (a proof lasts {} s; if the call did not take that long, check both clusters' clocks (NTP))",
                (now_ms - proof.expires_ms) / 1000,
                ORIGIN_PROOF_TTL_MS / 1000
            ));
        }
        if proof.expires_ms > now_ms.saturating_add(ORIGIN_PROOF_TTL_MS + ORIGIN_CLOCK_SKEW_MS) {
            return Err(format!(
                "expires {} s from now, more than a proof lasts ({} s): check both clusters' clocks (NTP)",
                (proof.expires_ms - now_ms) / 1000,
                ORIGIN_PROOF_TTL_MS / 1000
            ));
        }
        if verifies(&key, &call_bytes(claim, proof.expires_ms, &proof.nonce), &proof.sig) {
            Ok(())
        } else {
            Err("does not verify (forged, or the call was altered on the way)".into())
        }
    }

    /// This node's proof for `claim`, if it has a key; `at_ms` for a hello.
    pub fn prove_link(&self, claim: &LinkClaim<'_>, at_ms: Option<u64>) -> Option<LinkProof> {
        let RouteSig { key, sig } = signature(self.key.as_ref()?, &link_bytes(claim, at_ms));
        Some(LinkProof { key, sig, at_ms })
    }

    /// Checks a peer's proof when links must be authenticated: signed by a
    /// key trusted for the cluster it claims, over its claim, and for a
    /// hello (`welcome == false`) signed within the window around `now_ms`.
    pub fn check_link(
        &self,
        claim: &LinkClaim<'_>,
        proof: Option<&LinkProof>,
        welcome: bool,
        now_ms: u64,
    ) -> Result<(), String> {
        if !self.require_links {
            return Ok(());
        }
        let (node, cluster) = (claim.node, claim.cluster);
        let Some(proof) = proof else {
            return Err(format!(
                "node {node} did not prove it holds cluster {cluster}'s key, and this node requires it (routing.security.authenticate_links)"
            ));
        };
        let key = parse_public(&proof.key).ok().filter(|k| self.keys.get(cluster).is_some_and(|keys| keys.contains(k)));
        let Some(key) = key else {
            return Err(format!(
                "node {node} proved a key that is not trusted for cluster {cluster} (routing.security.trusted_keys, or this cluster's own signing_key)"
            ));
        };
        let at_ms = if welcome { None } else { proof.at_ms };
        if !welcome {
            let Some(at) = at_ms else {
                return Err(format!("node {node}'s link proof has no time"));
            };
            if at.abs_diff(now_ms) > CLOCK_WINDOW_MS {
                return Err(format!(
                    "node {node}'s link proof was made {} s away from this node's clock (at most {} s); check both clocks (NTP)",
                    at.abs_diff(now_ms) / 1000,
                    CLOCK_WINDOW_MS / 1000
                ));
            }
        }
        if verifies(&key, &link_bytes(claim, at_ms), &proof.sig) {
            Ok(())
        } else {
            Err(format!(
                "node {node}'s link proof for cluster {cluster} does not verify (forged, or made for another link)"
            ))
        }
    }
}

/// How long a call's origin proof lasts: long enough to cross the
/// federation to the serving cluster (the call's deadline runs on from
/// there), short enough that the proofs a node remembers stay few.
const ORIGIN_PROOF_TTL_MS: u64 = 30_000;

/// How far apart the clocks of an origin and the clusters that check its
/// proofs may be.
const ORIGIN_CLOCK_SKEW_MS: u64 = 30_000;

/// The most origin proofs a node remembers (about 80 bytes each): past it
/// the one closest to expiry is forgotten, and a copy of it would pass.
/// That takes over 2,000 proven calls a second through one node.
const MAX_SEEN_PROOFS: usize = 1 << 17;

/// A call's proof that it started in the cluster its federation path names
/// first: that cluster's signature over the call, so that a cluster on the
/// way can neither make up a call as that cluster's nor alter one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginProof {
    pub key: String,
    pub sig: String,
    /// Unix ms (the origin's clock) after which the proof is void.
    pub expires_ms: u64,
    /// Random: the same call made twice has two proofs.
    pub nonce: String,
}

/// What an origin proof binds: where the call started, the cluster it is
/// bound for, and the function, version and arguments.
#[derive(Clone, Copy, Debug)]
pub struct CallClaim<'a> {
    pub origin: &'a ClusterId,
    pub target: &'a ClusterId,
    pub function: &'a str,
    pub version: &'a str,
    pub args: &'a [serde_json::Value],
}

/// The bytes an origin proof signs: a fixed prefix, then JSON of the claim,
/// the expiry and the nonce. JSON of a value parsed from JSON is the same
/// bytes again (floats round-trip exactly), so each hop re-encodes the
/// arguments it received.
fn call_bytes(claim: &CallClaim<'_>, expires_ms: u64, nonce: &str) -> Vec<u8> {
    let CallClaim { origin, target, function, version, args } = claim;
    let body = serde_json::to_vec(&(origin, target, function, version, expires_ms, nonce, args)).unwrap_or_default();
    [b"weft-call-v1\n".as_slice(), &body].concat()
}

/// The origin proofs a node has taken, until they expire: each is good
/// once, so that a cluster on the way cannot make a call again by copying
/// its proof.
#[derive(Debug, Default)]
pub struct SeenProofs {
    /// (until when a copy could pass, signature)
    seen: BTreeSet<(u64, [u8; 64])>,
}

impl SeenProofs {
    /// Whether `proof` (checked already) is new here; it is remembered
    /// until it could no longer pass the expiry check.
    pub fn first_time(&mut self, proof: &OriginProof, now_ms: u64) -> bool {
        while self.seen.first().is_some_and(|(until, _)| *until < now_ms) {
            self.seen.pop_first();
        }
        let Some(sig) = B64.decode(proof.sig.as_bytes()).ok().and_then(|b| <[u8; 64]>::try_from(b).ok()) else {
            return false;
        };
        if !self.seen.insert((proof.expires_ms.saturating_add(ORIGIN_CLOCK_SKEW_MS), sig)) {
            return false;
        }
        if self.seen.len() > MAX_SEEN_PROOFS {
            self.seen.pop_first();
        }
        true
    }
}

/// A fresh random nonce for a link handshake or an origin proof.
pub fn nonce() -> String {
    B64.encode(rand::random::<[u8; 16]>())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ann(path: &[&str]) -> Announcement {
        Announcement {
            destination: ClusterId::new(*path.last().unwrap()),
            path: path.iter().map(|c| ClusterId::new(*c)).collect(),
            hops: path.len() as u32 - 1,
            latency_us: 0,
            reliability: 1000,
            tags: vec![],
            ttl_ms: None,
        }
    }

    fn key() -> (SigningKey, VerifyingKey) {
        let (private, public) = generate();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, private).unwrap();
        (load_signing_key(&path).unwrap(), parse_public(&public).unwrap())
    }

    #[test]
    fn signatures_bind_cluster_node_receiver_epoch_and_routes_and_rotation_overlaps() {
        let (beta, alpha, gamma) = (ClusterId::new("beta"), ClusterId::new("alpha"), ClusterId::new("gamma"));
        let (old, old_pub) = key();
        let (new, new_pub) = key();
        let (rogue, _) = key();
        let trust = Trust { require: true, keys: BTreeMap::from([(beta.clone(), vec![old_pub, new_pub])]) };
        let routes = vec![ann(&["beta"]), ann(&["beta", "gamma"])];
        let b1 = NodeId::new("b1");
        let env = Envelope { from: &beta, node: &b1, to: &alpha, epoch: 7 };
        let good = sign(&old, &env, &routes);
        assert_eq!(trust.verify(&env, &routes, Some(&good), 7), Ok(()));
        let rotated = sign(&new, &env, &routes);
        assert_eq!(trust.verify(&env, &routes, Some(&rotated), 7), Ok(()), "both keys of a rotation");
        assert_eq!(trust.verify(&env, &routes, None, 7), Err(SigError::Unsigned(beta.clone())));
        let bad = Err(SigError::BadSignature(beta.clone()));
        assert_eq!(trust.verify(&Envelope { epoch: 8, ..env }, &routes, Some(&good), 7), bad, "epoch bound");
        assert_eq!(trust.verify(&env, &routes[..1], Some(&good), 7), bad, "routes bound");
        let b9 = NodeId::new("b9");
        assert_eq!(trust.verify(&Envelope { node: &b9, ..env }, &routes, Some(&good), 7), bad, "node bound");
        assert_eq!(trust.verify(&Envelope { to: &gamma, ..env }, &routes, Some(&good), 7), bad, "receiver bound");
        let forged = sign(&rogue, &env, &routes);
        assert!(matches!(trust.verify(&env, &routes, Some(&forged), 7), Err(SigError::UntrustedKey { .. })));
        // Beta's genuine signature does not make it gamma's.
        let as_gamma = Envelope { from: &gamma, ..env };
        assert!(matches!(trust.verify(&as_gamma, &routes, Some(&good), 7), Err(SigError::UntrustedKey { .. })));
        // Listing keys for a cluster means it signs, required or not.
        let listed = Trust { require: false, ..trust.clone() };
        assert_eq!(listed.verify(&env, &routes, None, 7), Err(SigError::Unsigned(beta.clone())));
        let relaxed = Trust { require: false, keys: BTreeMap::new() };
        assert_eq!(relaxed.verify(&env, &routes, None, 7), Ok(()));
    }

    #[test]
    fn a_signed_update_is_taken_only_within_the_clock_window() {
        let (beta, alpha, b1) = (ClusterId::new("beta"), ClusterId::new("alpha"), NodeId::new("b1"));
        let (key, public) = key();
        let trust = Trust { require: true, keys: BTreeMap::from([(beta.clone(), vec![public])]) };
        let routes = vec![ann(&["beta"])];
        let made = 1_800_000_000_000;
        let env = Envelope { from: &beta, node: &b1, to: &alpha, epoch: made };
        let sig = sign(&key, &env, &routes);
        let at = |now| trust.verify(&env, &routes, Some(&sig), now);
        assert_eq!(at(made - CLOCK_WINDOW_MS), Ok(()), "a sender's clock ahead of ours, within the window");
        let ahead = at(made - CLOCK_WINDOW_MS - 1_000).unwrap_err();
        assert_eq!(ahead, SigError::Ahead { cluster: beta.clone(), ahead_s: 121, window_s: 120 });
        assert_eq!(ahead.kind(), "ahead");
        assert_eq!(at(made + CLOCK_WINDOW_MS), Ok(()));
        let late = at(made + CLOCK_WINDOW_MS + 1).unwrap_err();
        assert_eq!(late, SigError::Expired { cluster: beta.clone(), age_s: 120, window_s: 120 });
        assert_eq!(late.kind(), "expired");
        assert!(late.to_string().contains("NTP"), "{late}");
        // A bad signature is reported as such, however old.
        let other = Envelope { epoch: made - 1, ..env };
        assert_eq!(
            trust.verify(&other, &routes, Some(&sig), made + 10 * CLOCK_WINDOW_MS),
            Err(SigError::BadSignature(beta))
        );
    }

    /// The signed update shown in docs/PROTOCOL.md ("What is signed").
    #[test]
    fn the_documented_example_verifies() {
        let (beta, alpha, b1) = (ClusterId::new("beta"), ClusterId::new("alpha"), NodeId::new("b1"));
        let public = "rZu8fWJZayA6VX9sHFkTS0Fb6z0PMrPLxpEAJymr3dQ=";
        let sig = RouteSig {
            key: public.into(),
            sig: "MpO7JZBpT09xPtO/bPDH26sxjQGa8TP6X81eRDZFgzIwOnbimx+ukUq7PEn0z62ruRdPxNaqAiM5SWrEgXHmAg==".into(),
        };
        let trust =
            Trust { require: true, keys: BTreeMap::from([(beta.clone(), vec![parse_public(public).unwrap()])]) };
        let env = Envelope { from: &beta, node: &b1, to: &alpha, epoch: 1_795_660_519_353 };
        let bytes = signed_bytes(&env, &[ann(&["beta"])]);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "weft-routes-v3\n[\"beta\",\"b1\",\"alpha\",1795660519353,[{\"destination\":\"beta\",\"path\":[\"beta\"],\"hops\":0,\"latency_us\":0,\"reliability\":1000,\"tags\":[]}]]"
        );
        assert_eq!(trust.verify(&env, &[ann(&["beta"])], Some(&sig), env.epoch + 1000), Ok(()));
    }

    #[test]
    fn link_proofs_bind_node_cluster_nonce_and_time() {
        let (alpha, beta) = (ClusterId::new("alpha"), ClusterId::new("beta"));
        let (a_key, a_pub) = key();
        let (rogue, _) = key();
        let (a1, a2) = (NodeId::new("a1"), NodeId::new("a2"));
        let auth = |key: SigningKey| Keys {
            require_links: true,
            key: Some(key),
            keys: BTreeMap::from([(alpha.clone(), vec![a_pub])]),
        };
        let (me, impostor) = (auth(a_key.clone()), auth(rogue));
        let claim = LinkClaim { node: &a1, cluster: &alpha, incarnation: 3, nonce: "n1" };
        let now = 1_000_000_000;

        let hello = me.prove_link(&claim, Some(now)).unwrap();
        assert_eq!(me.check_link(&claim, Some(&hello), false, now + 5_000), Ok(()));
        let welcome = me.prove_link(&claim, None).unwrap();
        assert_eq!(me.check_link(&claim, Some(&welcome), true, now), Ok(()));

        let refused = |r: Result<(), String>, what: &str| assert!(r.unwrap_err().contains(what));
        refused(me.check_link(&claim, None, false, now), "did not prove");
        refused(me.check_link(&claim, impostor.prove_link(&claim, Some(now)).as_ref(), false, now), "not trusted");
        refused(me.check_link(&claim, Some(&hello), false, now + 200_000), "clock");
        refused(me.check_link(&claim, Some(&hello), true, now), "does not verify"); // a hello is no welcome
        let other_nonce = LinkClaim { nonce: "n2", ..claim };
        refused(me.check_link(&other_nonce, Some(&welcome), true, now), "does not verify");
        let other_node = LinkClaim { node: &a2, ..claim };
        refused(me.check_link(&other_node, Some(&hello), false, now), "does not verify");
        let other_cluster = LinkClaim { cluster: &beta, ..claim };
        refused(me.check_link(&other_cluster, Some(&hello), false, now), "not trusted");
        let relaxed = Keys { require_links: false, ..Keys::default() };
        assert_eq!(relaxed.check_link(&claim, None, false, now), Ok(()), "off unless required");
    }

    #[test]
    fn origin_proofs_bind_the_call_last_a_while_and_pass_once() {
        let (alpha, beta, gamma) = (ClusterId::new("alpha"), ClusterId::new("beta"), ClusterId::new("gamma"));
        let (a_key, a_pub) = key();
        let (rogue, _) = key();
        let keys = |key: SigningKey| Keys {
            key: Some(key),
            keys: BTreeMap::from([(alpha.clone(), vec![a_pub])]),
            ..Keys::default()
        };
        let (me, impostor) = (keys(a_key), keys(rogue));
        let args = [serde_json::json!("x"), serde_json::json!({"f": 0.1, "n": [1, -2]})];
        let claim = CallClaim { origin: &alpha, target: &gamma, function: "text/upper", version: "0.1.0", args: &args };
        let now = 1_000_000_000;
        let proof = me.prove_origin(&claim, now).unwrap();
        assert_eq!(me.check_origin(&claim, &proof, now + 1_000), Ok(()));
        // What a hop checks is the claim as it arrived, parsed from JSON.
        let sent: ForwardedClaim = serde_json::from_str(&serde_json::to_string(&(&args, &proof)).unwrap()).unwrap();
        assert_eq!(me.check_origin(&CallClaim { args: &sent.0, ..claim }, &sent.1, now), Ok(()));

        let refused = |r: Result<(), String>, what: &str| assert!(r.unwrap_err().contains(what), "{what}");
        let other_args = [serde_json::json!("y")];
        for altered in [
            CallClaim { args: &other_args, ..claim },
            CallClaim { target: &beta, ..claim },
            CallClaim { function: "text/lower", ..claim },
            CallClaim { version: "0.2.0", ..claim },
        ] {
            refused(me.check_origin(&altered, &proof, now), "does not verify");
        }
        refused(
            me.check_origin(&claim, &OriginProof { expires_ms: proof.expires_ms + 1, ..proof.clone() }, now),
            "does not verify",
        );
        refused(me.check_origin(&claim, &OriginProof { nonce: "n".into(), ..proof.clone() }, now), "does not verify");
        refused(
            me.check_origin(&claim, &impostor.prove_origin(&claim, now).unwrap(), now),
            "not trusted for cluster alpha",
        );
        refused(me.check_origin(&CallClaim { origin: &beta, ..claim }, &proof, now), "lists no key for cluster beta");
        refused(me.check_origin(&claim, &proof, now + 61_000), "expired 31 s ago");
        refused(me.check_origin(&claim, &me.prove_origin(&claim, now + 61_000).unwrap(), now), "clocks");
        let far = OriginProof { expires_ms: u64::MAX, ..proof.clone() };
        refused(me.check_origin(&claim, &far, now), "from now, more than a proof lasts");
        assert!(Keys::default().prove_origin(&claim, now).is_none(), "no key, no proof");

        let mut seen = SeenProofs::default();
        assert!(seen.first_time(&proof, now));
        assert!(!seen.first_time(&proof, now + 1), "a copy");
        let second = me.prove_origin(&claim, now).unwrap();
        assert_ne!(second, proof, "the same call made twice has two proofs");
        assert!(seen.first_time(&second, now));
        // Remembered until no copy could pass, then forgotten.
        assert!(!seen.first_time(&proof, proof.expires_ms + ORIGIN_CLOCK_SKEW_MS));
        let later = me.prove_origin(&claim, now + 61_000).unwrap();
        assert!(seen.first_time(&later, proof.expires_ms + ORIGIN_CLOCK_SKEW_MS + 1));
        assert_eq!(seen.seen.len(), 1);
    }

    type ForwardedClaim = (Vec<serde_json::Value>, OriginProof);

    #[test]
    fn bad_key_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "not base64!").unwrap();
        assert!(load_signing_key(&path).unwrap_err().contains("base64"));
        std::fs::write(&path, B64.encode([1u8; 5])).unwrap();
        assert!(load_signing_key(&path).unwrap_err().contains("weft keygen"));
        std::fs::write(&path, "-----BEGIN PRIVATE KEY-----\nMC4CAQ==\n-----END PRIVATE KEY-----\n").unwrap();
        assert!(load_signing_key(&path).unwrap_err().contains("is a PEM file (a TLS key or certificate?)"));
        assert!(parse_public("AAAA").is_err());
        let (_, public) = generate();
        let path = dir.path().join("k.pub");
        std::fs::write(&path, public).unwrap();
        assert!(load_signing_key(&path).unwrap_err().contains("is a public key"));
    }
}
