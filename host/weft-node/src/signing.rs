//! Signed route announcements: ed25519 keys (`weft keygen`), the exact bytes
//! a route update signs, and verification against the keys trusted per
//! cluster. An update is signed by the key of the cluster that sends it; the
//! signature covers that cluster, the sending node, the cluster the update
//! is for, the epoch and every announcement, so it cannot be replayed under
//! another cluster's or node's name nor presented to another cluster, and
//! the route table's per-node epoch check refuses an old one (or a copy).

use std::collections::BTreeMap;
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
}

impl SigError {
    /// A closed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SigError::Unsigned(_) => "unsigned",
            SigError::UntrustedKey { .. } => "untrusted-key",
            SigError::BadSignature(_) => "bad-signature",
        }
    }
}

/// A new key pair: (private seed, public key), both base64.
pub fn generate() -> (String, String) {
    let seed: [u8; 32] = rand::random();
    let key = SigningKey::from_bytes(&seed);
    (B64.encode(seed), B64.encode(key.verifying_key().as_bytes()))
}

/// Reads a private key written by `weft keygen`.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
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
    let sig = key.sign(&signed_bytes(env, routes));
    RouteSig { key: B64.encode(key.verifying_key().as_bytes()), sig: B64.encode(sig.to_bytes()) }
}

/// The keys trusted for each cluster, and whether signatures are required.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    pub require: bool,
    pub keys: BTreeMap<ClusterId, Vec<VerifyingKey>>,
}

impl Trust {
    /// Checks an update from node `env.node` of cluster `env.from`. Unsigned
    /// updates pass only when signatures are not required and no key is
    /// listed for that cluster (listing keys means "this cluster signs"); a
    /// signature, when present, must verify with a key trusted for that very
    /// cluster.
    pub fn verify(&self, env: &Envelope<'_>, routes: &[Announcement], sig: Option<&RouteSig>) -> Result<(), SigError> {
        let cluster = env.from;
        let Some(sig) = sig else {
            let expected = self.require || self.keys.contains_key(cluster);
            return if expected { Err(SigError::Unsigned(cluster.clone())) } else { Ok(()) };
        };
        let untrusted = || SigError::UntrustedKey { cluster: cluster.clone(), key: sig.key.clone() };
        let key = parse_public(&sig.key).map_err(|_| untrusted())?;
        let trusted = self.keys.get(cluster).is_some_and(|keys| keys.contains(&key));
        if !trusted {
            // Without any key for this cluster and without the requirement,
            // a signature cannot be checked and is not needed.
            return if !self.require && !self.keys.contains_key(cluster) { Ok(()) } else { Err(untrusted()) };
        }
        let bytes: [u8; 64] = B64
            .decode(sig.sig.as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| SigError::BadSignature(cluster.clone()))?;
        key.verify(&signed_bytes(env, routes), &Signature::from_bytes(&bytes))
            .map_err(|_| SigError::BadSignature(cluster.clone()))
    }
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
        assert_eq!(trust.verify(&env, &routes, Some(&good)), Ok(()));
        let rotated = sign(&new, &env, &routes);
        assert_eq!(trust.verify(&env, &routes, Some(&rotated)), Ok(()), "both keys of a rotation");
        assert_eq!(trust.verify(&env, &routes, None), Err(SigError::Unsigned(beta.clone())));
        let bad = Err(SigError::BadSignature(beta.clone()));
        assert_eq!(trust.verify(&Envelope { epoch: 8, ..env }, &routes, Some(&good)), bad, "epoch bound");
        assert_eq!(trust.verify(&env, &routes[..1], Some(&good)), bad, "routes bound");
        let b9 = NodeId::new("b9");
        assert_eq!(trust.verify(&Envelope { node: &b9, ..env }, &routes, Some(&good)), bad, "node bound");
        assert_eq!(trust.verify(&Envelope { to: &gamma, ..env }, &routes, Some(&good)), bad, "receiver bound");
        let forged = sign(&rogue, &env, &routes);
        assert!(matches!(trust.verify(&env, &routes, Some(&forged)), Err(SigError::UntrustedKey { .. })));
        // Beta's genuine signature does not make it gamma's.
        let as_gamma = Envelope { from: &gamma, ..env };
        assert!(matches!(trust.verify(&as_gamma, &routes, Some(&good)), Err(SigError::UntrustedKey { .. })));
        // Listing keys for a cluster means it signs, required or not.
        let listed = Trust { require: false, ..trust.clone() };
        assert_eq!(listed.verify(&env, &routes, None), Err(SigError::Unsigned(beta.clone())));
        let relaxed = Trust { require: false, keys: BTreeMap::new() };
        assert_eq!(relaxed.verify(&env, &routes, None), Ok(()));
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
        assert_eq!(trust.verify(&env, &[ann(&["beta"])], Some(&sig)), Ok(()));
    }

    #[test]
    fn bad_key_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "not base64!").unwrap();
        assert!(load_signing_key(&path).unwrap_err().contains("base64"));
        std::fs::write(&path, B64.encode([1u8; 5])).unwrap();
        assert!(load_signing_key(&path).unwrap_err().contains("weft keygen"));
        assert!(parse_public("AAAA").is_err());
    }
}
