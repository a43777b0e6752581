//! Signed route announcements: ed25519 keys (`weft keygen`), the exact bytes
//! a route update signs, and verification against the keys trusted per
//! cluster. An update is signed by the key of the cluster that sends it; the
//! signature covers that cluster, the sending node, the epoch and every
//! announcement, so it cannot be replayed under another cluster's or node's
//! name, and the route table's per-node epoch check refuses an old one
//! replayed as is.

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

/// The bytes an update signs: a fixed prefix, then JSON of the sending
/// cluster and node, the epoch and the announcements. The node is covered so
/// that an update cannot be replayed under another node's name (epochs are
/// kept per sending node).
fn signed_bytes(cluster: &ClusterId, node: &NodeId, epoch: u64, routes: &[Announcement]) -> Vec<u8> {
    let body = serde_json::to_vec(&(cluster, node, epoch, routes)).unwrap_or_default();
    [b"weft-routes-v2\n".as_slice(), &body].concat()
}

pub fn sign(key: &SigningKey, cluster: &ClusterId, node: &NodeId, epoch: u64, routes: &[Announcement]) -> RouteSig {
    let sig = key.sign(&signed_bytes(cluster, node, epoch, routes));
    RouteSig { key: B64.encode(key.verifying_key().as_bytes()), sig: B64.encode(sig.to_bytes()) }
}

/// The keys trusted for each cluster, and whether signatures are required.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    pub require: bool,
    pub keys: BTreeMap<ClusterId, Vec<VerifyingKey>>,
}

impl Trust {
    /// Checks an update from node `node` of `cluster`. Unsigned updates pass
    /// only when signatures are not required and no key is listed for that
    /// cluster (listing keys means "this cluster signs"); a signature, when
    /// present, must verify with a key trusted for that very cluster.
    pub fn verify(
        &self,
        cluster: &ClusterId,
        node: &NodeId,
        epoch: u64,
        routes: &[Announcement],
        sig: Option<&RouteSig>,
    ) -> Result<(), SigError> {
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
        key.verify(&signed_bytes(cluster, node, epoch, routes), &Signature::from_bytes(&bytes))
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
    fn signatures_bind_cluster_node_epoch_and_routes_and_rotation_overlaps() {
        let beta = ClusterId::new("beta");
        let (old, old_pub) = key();
        let (new, new_pub) = key();
        let (rogue, _) = key();
        let trust = Trust { require: true, keys: BTreeMap::from([(beta.clone(), vec![old_pub, new_pub])]) };
        let routes = vec![ann(&["beta"]), ann(&["beta", "gamma"])];
        let b1 = NodeId::new("b1");
        let good = sign(&old, &beta, &b1, 7, &routes);
        assert_eq!(trust.verify(&beta, &b1, 7, &routes, Some(&good)), Ok(()));
        let rotated = sign(&new, &beta, &b1, 7, &routes);
        assert_eq!(trust.verify(&beta, &b1, 7, &routes, Some(&rotated)), Ok(()), "both keys of a rotation");
        assert_eq!(trust.verify(&beta, &b1, 7, &routes, None), Err(SigError::Unsigned(beta.clone())));
        let bad = Err(SigError::BadSignature(beta.clone()));
        assert_eq!(trust.verify(&beta, &b1, 8, &routes, Some(&good)), bad, "epoch bound");
        assert_eq!(trust.verify(&beta, &b1, 7, &routes[..1], Some(&good)), bad, "routes bound");
        assert_eq!(trust.verify(&beta, &NodeId::new("b9"), 7, &routes, Some(&good)), bad, "node bound");
        let forged = sign(&rogue, &beta, &b1, 7, &routes);
        assert!(matches!(trust.verify(&beta, &b1, 7, &routes, Some(&forged)), Err(SigError::UntrustedKey { .. })));
        // Beta's genuine signature does not make it gamma's.
        let gamma = ClusterId::new("gamma");
        assert!(matches!(trust.verify(&gamma, &b1, 7, &routes, Some(&good)), Err(SigError::UntrustedKey { .. })));
        // Listing keys for a cluster means it signs, required or not.
        let listed = Trust { require: false, ..trust.clone() };
        assert_eq!(listed.verify(&beta, &b1, 7, &routes, None), Err(SigError::Unsigned(beta.clone())));
        let relaxed = Trust { require: false, keys: BTreeMap::new() };
        assert_eq!(relaxed.verify(&beta, &b1, 7, &routes, None), Ok(()));
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
