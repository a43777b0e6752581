//! The peer envelope: every message between two nodes, control and data, is
//! one JSON text frame `{"t": KIND, ...}` on the link's WebSocket. A link
//! starts with `hello` from the dialer, answered by `welcome` or `reject`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weft_fabric::{Announcement, CatalogDelta, CatalogEntry, CatalogSnapshot};
use weft_proto::{Caller, ClusterId, ErrorBody, NodeId, WeftError};

use crate::signing::{LinkProof, OriginProof};

/// Bumped on incompatible changes of this envelope; a peer speaking another
/// version is refused at the handshake.
pub const PROTOCOL_VERSION: u32 = 1;

/// Something of another cluster that the sender of a `relay` lost with a
/// link of its own (`weft_fabric::Loss`): its members answer for it as it
/// does, out of reach, not refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossMsg {
    pub cluster: ClusterId,
    /// The nodes it went with.
    pub nodes: Vec<NodeId>,
    /// How long ago, as the sender counts (clocks need not agree).
    pub ago_ms: u64,
    /// The way to the cluster went (not only some of its functions).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub way: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<CatalogEntry>,
}

/// What each side of a link says about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub proto: u32,
    pub node: NodeId,
    pub cluster: ClusterId,
    /// Grows across restarts of one node id (its start time in ms).
    pub incarnation: u64,
    /// The URL other nodes dial to reach this one.
    pub addr: String,
    #[serde(default)]
    pub caps: Vec<String>,
    /// The dialler's challenge, which the acceptor's `proof` signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// That the sender holds its cluster's key (see `signing::Keys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<LinkProof>,
}

/// The longest `addr`, nonce or key a hello may carry, and how many
/// capabilities: everything in it comes from whoever opened the connection,
/// and refusals, alerts and logs keep some of it.
const MAX_HELLO_TEXT: usize = 512;

/// Whether `addr` is one a node may dial: a ws:// or wss:// URL with a
/// host, of bounded length, without spaces or control characters.
pub fn is_peer_addr(addr: &str) -> bool {
    addr.len() <= MAX_HELLO_TEXT
        && !addr.contains(|c: char| c.is_whitespace() || c.is_control())
        && crate::config::ws_url_ok(addr)
}
const MAX_CAPS: usize = 16;

impl Hello {
    /// What is malformed in a hello or welcome, if anything, checked before
    /// any of it is logged or kept. A weft node never sends one: its own
    /// names and address were checked when its config was.
    pub fn problem(&self) -> Option<String> {
        let name = |what: &str, name: &str| {
            (!weft_proto::is_valid_name(name)).then(|| format!("{what} {}: {}", shown(name), weft_proto::NAME_RULE))
        };
        let text = |s: &str| s.len() > MAX_HELLO_TEXT || s.chars().any(char::is_control);
        name("node id", self.node.as_str())
            .or_else(|| name("cluster", self.cluster.as_str()))
            .or_else(|| {
                if text(&self.addr) {
                    Some(format!("addr {}: over {MAX_HELLO_TEXT} bytes or with control characters", shown(&self.addr)))
                } else {
                    (!is_peer_addr(&self.addr))
                        .then(|| format!("addr {}: not a ws:// or wss:// URL", shown(&self.addr)))
                }
            })
            .or_else(|| {
                (self.caps.len() > MAX_CAPS || self.caps.iter().any(|c| !weft_proto::is_valid_name(c)))
                    .then(|| format!("caps: at most {MAX_CAPS} names"))
            })
            .or_else(|| {
                let proof = self.proof.iter().flat_map(|p| [&p.key, &p.sig]);
                (self.nonce.iter().chain(proof).any(|s| text(s)))
                    .then(|| format!("nonce or proof over {MAX_HELLO_TEXT} bytes or with control characters"))
            })
    }
}

/// A value from the wire as a message shows it: quoted, escaped, cut short.
fn shown(s: &str) -> String {
    let cut = &s[..s.floor_char_boundary(40)];
    let more = if cut.len() < s.len() { format!("... ({} bytes)", s.len()) } else { String::new() };
    format!("{cut:?}{more}")
}

/// Why a link was refused; both sides log it and `/v1/peers` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectKind {
    /// The peer speaks another protocol version.
    Protocol,
    /// The dialled node is the dialler itself (a seed list naming this node).
    SelfDial,
    /// Another live node already uses this id.
    DuplicateNodeId,
    /// A link between the two nodes already exists; the older one stays.
    DuplicateLink,
    /// Federation policy does not accept the peer's cluster.
    Policy,
    /// The cluster is at its member limit.
    ClusterFull,
    /// The peer did not prove it holds its cluster's key.
    Unauthenticated,
}

impl RejectKind {
    pub const ALL: [RejectKind; 7] = [
        RejectKind::Protocol,
        RejectKind::SelfDial,
        RejectKind::DuplicateNodeId,
        RejectKind::DuplicateLink,
        RejectKind::Policy,
        RejectKind::ClusterFull,
        RejectKind::Unauthenticated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Protocol => "protocol",
            RejectKind::SelfDial => "self-dial",
            RejectKind::DuplicateNodeId => "duplicate-node-id",
            RejectKind::DuplicateLink => "duplicate-link",
            RejectKind::Policy => "policy",
            RejectKind::ClusterFull => "cluster-full",
            RejectKind::Unauthenticated => "unauthenticated",
        }
    }
}

/// A refusal: the kind for programs, the reason for people.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    pub kind: RejectKind,
    pub reason: String,
    /// For policy refusals: the policy rule that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The cluster of the refusing node, so the other side can tell its
    /// callers which cluster said no.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterId>,
}

impl Reject {
    pub fn new(kind: RejectKind, reason: String) -> Reject {
        Reject { kind, reason, rule: None, cluster: None }
    }

    /// A refusal as received, cut to what a weft node sends (a reason of a
    /// few hundred bytes, a rule name, a valid cluster), before it is kept.
    pub fn bounded(mut self) -> Reject {
        self.reason.truncate(self.reason.floor_char_boundary(1024));
        // The reason is logged: no line breaks or terminal escapes of the
        // peer's making.
        if self.reason.contains(char::is_control) {
            self.reason = self.reason.replace(char::is_control, " ");
        }
        self.rule = self.rule.filter(|r| weft_proto::is_valid_name(r));
        self.cluster = self.cluster.filter(|c| weft_proto::is_valid_name(c.as_str()));
        self
    }
}

/// One step of a request, run on the node that has the function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForwardCall {
    pub id: u64,
    /// `plugin/function`.
    pub function: String,
    pub version: String,
    pub args: Vec<Value>,
    /// Time left of the caller's deadline when the call was sent.
    pub deadline_ms: u64,
    /// Nodes the call has passed through, origin first.
    pub routing_path: Vec<NodeId>,
    /// Clusters the call has passed through, origin first.
    #[serde(default)]
    pub federation_path: Vec<ClusterId>,
    /// Cluster crossings left; each one takes one.
    pub hop_budget: u32,
    /// The cluster the caller chose the function in, when not the
    /// receiver's own: the receiver passes the call on rather than run a
    /// same-named function of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cluster: Option<ClusterId>,
    /// Resources the node that runs the call must have (the command's `locs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locs: Vec<String>,
    /// Who the call is made for. Only a member's word is taken: a call from
    /// another cluster is that cluster's, and none is sent over a bridge.
    #[serde(default, skip_serializing_if = "Caller::is_anonymous")]
    pub caller: Caller,
    /// The origin cluster's signature over the call, for a plugin open to
    /// some clusters only, where a cluster on the way may not take its
    /// neighbour's word for where the call started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_proof: Option<OriginProof>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "kebab-case")]
pub enum PeerMsg {
    Hello(Hello),
    Welcome(Hello),
    Reject(Reject),
    /// A SWIM packet (foca, postcard-encoded), base64.
    Swim {
        data: String,
    },
    /// A change of one node's catalog advert, or its withdrawal.
    Catalog {
        delta: CatalogDelta,
    },
    /// Everything the sender's catalog knows; sent once when a link comes up.
    Snapshot {
        snapshot: CatalogSnapshot,
    },
    /// "Send me your current advert": the receiver answers with `catalog`.
    CatalogPull,
    /// Over a bridge: the functions of the sender's cluster that its policy
    /// offers to the receiver's cluster (the whole set, replacing the last).
    Foreign {
        entries: Vec<CatalogEntry>,
    },
    /// Periodic: the sender's advert stamp (keeps its entries from expiring),
    /// the nodes it is linked to (for `/v1/topology`), and the addresses of
    /// nodes outside the cluster it knows (seeds, bridges), which members may
    /// dial; the handshake's policy check decides as for any other dial.
    Beat {
        incarnation: u64,
        version: u64,
        links: Vec<NodeId>,
        #[serde(default)]
        known: Vec<String>,
    },
    /// Over a bridge: the sender's whole route export set (its own cluster,
    /// and with transit the routes it learnt). A destination missing from a
    /// newer set is withdrawn; an older `epoch` is refused.
    Routes {
        epoch: u64,
        routes: Vec<Announcement>,
        /// The sending cluster's signature (routing.security).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sig: Option<crate::signing::RouteSig>,
    },
    /// To members: the foreign functions the sender reaches over its own
    /// bridges (the whole set, replacing the last), so that every member can
    /// call them through it, and (with transit) the sender's own best routes,
    /// paths starting at this cluster, for members to announce onwards;
    /// and the clusters the sender has bridge links to, so that a member
    /// knows the way even to a cluster that offers nothing.
    Relay {
        entries: Vec<CatalogEntry>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        routes: Vec<Announcement>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        bridges: Vec<ClusterId>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        lost: Vec<LossMsg>,
    },
    Call(ForwardCall),
    Reply {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody>,
        /// The node the call ran on (it may have been passed on).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<NodeId>,
    },
    /// The caller no longer wants call `id` (it timed out or its client left).
    Cancel {
        id: u64,
    },
    /// The sender is leaving the cluster.
    Bye,
    /// Link measurement over bridges: answered at once with `pong`.
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
}

impl PeerMsg {
    pub fn reply(id: u64, result: Result<Value, WeftError>, ran_on: NodeId) -> PeerMsg {
        let node = Some(ran_on);
        match result {
            Ok(value) => PeerMsg::Reply { id, value: Some(value), error: None, node },
            Err(e) => PeerMsg::Reply { id, value: None, error: Some(e.to_body()), node },
        }
    }

    /// The label of this message in metrics (a closed set).
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMsg::Hello(_) => "hello",
            PeerMsg::Welcome(_) => "welcome",
            PeerMsg::Reject(_) => "reject",
            PeerMsg::Swim { .. } => "swim",
            PeerMsg::Catalog { .. } => "catalog",
            PeerMsg::Snapshot { .. } => "snapshot",
            PeerMsg::CatalogPull => "catalog-pull",
            PeerMsg::Foreign { .. } => "foreign",
            PeerMsg::Relay { .. } => "relay",
            PeerMsg::Routes { .. } => "routes",
            PeerMsg::Beat { .. } => "beat",
            PeerMsg::Call(_) => "call",
            PeerMsg::Reply { .. } => "reply",
            PeerMsg::Cancel { .. } => "cancel",
            PeerMsg::Bye => "bye",
            PeerMsg::Ping { .. } => "ping",
            PeerMsg::Pong { .. } => "pong",
        }
    }

    /// Gossip (membership and catalog upkeep), as opposed to call traffic.
    pub fn is_gossip(&self) -> bool {
        !matches!(self, PeerMsg::Call(_) | PeerMsg::Reply { .. } | PeerMsg::Cancel { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(weft_proto::fuzzing::cases()))]
        // A peer's frames are as untrusted as a client's: mutated valid
        // frames decode to a message that survives its own encoding, or fail.
        #[test]
        fn fuzz_mutated_peer_frames_decode_or_fail(bytes in weft_proto::fuzzing::mutated(frames())) {
            if let Ok(msg) = serde_json::from_slice::<PeerMsg>(&bytes) {
                let again: PeerMsg = serde_json::from_slice(&serde_json::to_vec(&msg).unwrap()).unwrap();
                proptest::prop_assert_eq!(again, msg);
            }
        }
    }

    fn hello() -> Hello {
        Hello {
            proto: 1,
            node: NodeId::new("a1"),
            cluster: ClusterId::new("alpha"),
            incarnation: 7,
            addr: "wss://a1.example:7700".into(),
            caps: vec!["swim".into()],
            nonce: Some("bg==".into()),
            proof: None,
        }
    }

    #[test]
    fn a_hello_carries_names_and_a_url_of_bounded_size_or_is_refused() {
        assert_eq!(hello().problem(), None);
        let bad = [
            Hello { node: NodeId::new("a".repeat(1 << 20)), ..hello() },
            Hello { node: NodeId::new("a b\n"), ..hello() },
            Hello { cluster: ClusterId::new(""), ..hello() },
            Hello { addr: "javascript:alert(1)".into(), ..hello() },
            Hello { addr: "ws://".into(), ..hello() },
            Hello { addr: format!("ws://{}", "h".repeat(3 << 20)), ..hello() },
            Hello { caps: vec!["x".into(); 17], ..hello() },
            Hello { nonce: Some("n".repeat(4096)), ..hello() },
        ];
        for h in bad {
            let problem = h.problem().expect("refused");
            assert!(problem.len() < 200, "the problem does not repeat the value: {problem}");
        }
    }

    #[test]
    fn a_received_refusal_is_cut_to_size_before_it_is_kept() {
        let huge = Reject {
            kind: RejectKind::Policy,
            reason: "é".repeat(1 << 20),
            rule: Some("no such rule".into()),
            cluster: Some(ClusterId::new("x".repeat(1 << 20))),
        };
        let kept = huge.bounded();
        assert!(kept.reason.len() <= 1024);
        assert_eq!((kept.rule, kept.cluster), (None, None));
    }

    #[test]
    fn a_received_refusal_cannot_break_or_colour_a_log_line() {
        let forged = Reject {
            kind: RejectKind::Policy,
            reason: "no\n2099-01-01T00:00:00Z ERROR weft_node: FORGED\u{1b}[31m".into(),
            rule: None,
            cluster: None,
        };
        let kept = forged.bounded();
        assert_eq!(kept.reason, "no 2099-01-01T00:00:00Z ERROR weft_node: FORGED [31m");
    }

    #[test]
    fn a_dialable_address_is_a_bounded_ws_url_without_spaces() {
        assert!(is_peer_addr("ws://10.0.0.1:7700") && is_peer_addr("wss://node.example:443/weft"));
        for bad in
            ["http://x:1", "ws://", "ws://:7700", "ws://a b:1", "ws://x:1\n", &format!("ws://{}", "a".repeat(600))]
        {
            assert!(!is_peer_addr(bad), "{bad:?}");
        }
    }

    /// One valid frame of each kind the fuzzer starts from.
    fn frames() -> Vec<Vec<u8>> {
        [
            r#"{"t":"hello","proto":1,"node":"a1","cluster":"alpha","incarnation":7,"addr":"ws://127.0.0.1:1","caps":["swim"],"nonce":"bg==","proof":{"key":"k","sig":"s","at_ms":5}}"#,
            r#"{"t":"call","id":3,"function":"echo/echo","version":"0.1.0","args":["hi",{"a":[1,2.5,null]}],"deadline_ms":500,"routing_path":["a1"],"federation_path":["alpha"],"hop_budget":2,"target_cluster":"beta","locs":["gpu"],"caller":{"tenant":"acme"}}"#,
            r#"{"t":"reply","id":3,"ok":"hi","node":"b1"}"#,
            r#"{"t":"routes","epoch":9,"routes":[{"destination":"beta","path":["beta"],"hops":0,"latency_us":0,"reliability":1000,"tags":["eu"]}],"sig":{"key":"k","sig":"s"}}"#,
            r#"{"t":"reject","kind":"policy","reason":"no","rule":"blocked","cluster":"alpha"}"#,
        ]
        .map(|f| f.as_bytes().to_vec())
        .to_vec()
    }

    #[test]
    fn seed_frames_are_valid() {
        for frame in frames() {
            let text = String::from_utf8(frame).unwrap();
            assert!(serde_json::from_str::<PeerMsg>(&text).is_ok(), "{text}");
        }
    }

    #[test]
    fn messages_round_trip_with_their_tag() {
        let hello = Hello {
            proto: PROTOCOL_VERSION,
            node: NodeId::new("a"),
            cluster: ClusterId::new("c"),
            incarnation: 7,
            addr: "ws://127.0.0.1:1".into(),
            caps: vec![],
            nonce: None,
            proof: None,
        };
        let msgs = [
            PeerMsg::Hello(hello.clone()),
            PeerMsg::Reject(Reject::new(RejectKind::DuplicateNodeId, "x".into())),
            PeerMsg::reply(3, Ok(Value::from(1)), NodeId::new("b")),
            PeerMsg::reply(4, Err(WeftError::internal("boom")), NodeId::new("b")),
            PeerMsg::CatalogPull,
            PeerMsg::Bye,
        ];
        for msg in msgs {
            let text = serde_json::to_string(&msg).unwrap();
            assert!(text.starts_with(&format!("{{\"t\":\"{}\"", msg.kind())), "{text}");
            assert_eq!(serde_json::from_str::<PeerMsg>(&text).unwrap(), msg);
        }
    }
}
