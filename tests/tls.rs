//! TLS on real nodes: a cluster and a bridge whose links are `wss://`,
//! clients and the CLI that trust the cluster's CA over WebSocket and HTTPS,
//! and what a client or a node sees when it does not trust the certificate
//! or does not speak TLS.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::json;
use support::{NodeSpec, TestNode, eventually, metric};
use weft_client::{Admin, Client, Roots};
use weft_proto::ErrorKind;

const SETTLE: Duration = Duration::from_secs(10);

/// A CA and a certificate it signed for 127.0.0.1 and localhost, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        Pki::with(&["127.0.0.1", "localhost"], false)
    }

    /// A CA and a certificate for `hosts`, long expired if `expired`.
    fn with(hosts: &[&str], expired: bool) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
        if expired {
            (params.not_before, params.not_after) =
                (rcgen::date_time_ymd(2020, 1, 1), rcgen::date_time_ymd(2021, 1, 1));
        }
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("node.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("node.key"), key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn roots(&self) -> Roots {
        Roots::from_pem_file(&self.path("ca.pem")).unwrap()
    }

    /// The `[tls]` section of a node serving this certificate and trusting `ca`.
    fn section(&self, ca: &Path) -> String {
        format!("[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n", self.path("node.pem"), self.path("node.key"), ca)
    }
}

fn node(id: &str, cluster: &str, plugins: Vec<&'static str>, seeds: &[&TestNode], extra: &str) -> TestNode {
    let seeds: Vec<String> = seeds.iter().map(|n| format!("{:?}", n.ws)).collect();
    let config = format!(
        "id = \"{id}\"\ncluster = \"{cluster}\"\nseeds = [{}]\n[cluster]\nbeat_interval = \"100ms\"\ncatalog_ttl = \"3s\"\n{extra}\n",
        seeds.join(", ")
    );
    TestNode::start(NodeSpec { plugins, files: vec![], config })
}

async fn client(node: &TestNode, pki: &Pki) -> Client {
    Client::connect_with(&node.ws, &pki.roots()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_and_a_bridge_over_tls_serve_calls_to_clients_that_trust_the_ca() {
    let pki = Pki::new();
    let tls = pki.section(&pki.path("ca.pem"));
    let allow = |c: &str| format!("[federation]\nmode = \"explicit\"\nallowed_clusters = [\"{c}\"]\n{tls}");
    let a1 = node("a1", "alpha", vec!["echo"], &[], &allow("beta"));
    let a2 = node("a2", "alpha", vec!["text"], &[&a1], &allow("beta"));
    let b1 = node("b1", "beta", vec!["math"], &[&a1], &allow("alpha"));
    for n in [&a1, &a2, &b1] {
        assert!(n.ws.starts_with("wss://127.0.0.1:"), "{}", n.ws);
        assert!(n.admin_url.starts_with("https://127.0.0.1:"), "{}", n.admin_url);
    }

    // a2 reaches echo on its member a1 and add on b1 over a bridge: every
    // link is TLS, dialled to the peers' advertised wss:// addresses.
    let c = client(&a2, &pki).await;
    let add = eventually("add reaches a2 over the bridge", SETTLE, async || {
        c.call("add", vec![json!(2), json!(3)]).await.ok()
    })
    .await;
    assert_eq!(add, json!(5));
    assert_eq!(c.call("echo", vec![json!("over tls")]).await.unwrap(), json!("over tls"));
    let peers = Admin::new(&a2.admin_url).with_roots(pki.roots()).get("/v1/peers").await.unwrap();
    assert_eq!(peers.status, 200);
    let links: Vec<&str> =
        peers.body["links"].as_array().unwrap().iter().map(|l| l["addr"].as_str().unwrap_or_default()).collect();
    assert!(links.iter().all(|a| a.starts_with("wss://")), "{links:?}");

    // The CLI over WebSocket and HTTPS, trusting the CA through --ca.
    let ca = pki.path("ca.pem");
    let out = Command::new(support::WEFT)
        .args(["call", "--node", &a1.ws, "--ca", ca.to_str().unwrap(), "echo", "hello"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"hello\"");
    let out = Command::new(support::WEFT)
        .args(["catalog", "--admin", &a1.admin_url, "--json"])
        .env("WEFT_CA", &ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"add\""));

    // Without the CA (public authorities only) the certificate is refused,
    // with an error that says so; the CLI exits non-zero.
    let e = Client::connect(&a1.ws).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::UNAVAILABLE);
    assert!(e.message.contains("certificate"), "{e}");
    let e = Admin::new(&a1.admin_url).get("/health").await.unwrap_err();
    assert!(e.message.contains("TLS handshake") && e.message.contains("certificate"), "{e}");
    let out = Command::new(support::WEFT).args(["call", "--node", &a1.ws, "echo", "x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca"), "{}", String::from_utf8_lossy(&out.stderr));

    // Plain WebSocket to a TLS port: no connection, and the node counts it.
    let plain = a1.ws.replace("wss://", "ws://");
    let e = Client::connect(&plain).await.err().unwrap();
    assert!(e.message.contains("the other side may serve TLS, so dial wss://"), "{e}");
    // And the other way round.
    let plain_node = TestNode::start(NodeSpec::default());
    let e = Client::connect_with(&plain_node.ws.replace("ws://", "wss://"), &pki.roots()).await.err().unwrap();
    assert!(e.message.contains("the other side may not serve TLS, so dial ws://"), "{e}");
    let admin = Admin::new(&a1.admin_url).with_roots(pki.roots());
    let failures = eventually("the failed handshake is counted", SETTLE, async || {
        let text = admin.get("/metrics").await.unwrap().text;
        metric(&text, "weft_tls_handshake_failures_total").filter(|n| *n >= 1.0)
    })
    .await;
    assert!(failures >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_trust_its_seeds_certificate_does_not_link_and_says_why() {
    let pki = Pki::new();
    let other = Pki::new();
    let a1 = node("a1", "alpha", vec!["echo"], &[], &pki.section(&pki.path("ca.pem")));
    // a2 serves a certificate of its own CA and trusts only that CA.
    let a2 = node("a2", "alpha", vec!["text"], &[&a1], &other.section(&other.path("ca.pem")));
    let why = eventually("a2 reports the refused certificate", SETTLE, async || {
        a2.stderr().lines().find(|l| l.contains("seed dial failed")).map(str::to_owned)
    })
    .await;
    assert!(why.contains(&a1.ws) && why.contains("certificate"), "{why}");
    let peers = Admin::new(&a2.admin_url).with_roots(other.roots()).get("/v1/peers").await.unwrap().body;
    assert_eq!(peers["links"].as_array().unwrap().len(), 0, "{peers}");
}

#[test]
fn tls_settings_that_cannot_work_stop_the_node_with_the_reason() {
    let pki = Pki::new();
    let not_pem = pki.path("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let stranger = pki.path("stranger.key");
    std::fs::write(&stranger, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    // Certificates that peers dialling 127.0.0.1 would refuse.
    let (elsewhere, expired) = (Pki::with(&["localhost"], false), Pki::with(&["127.0.0.1"], true));
    let cases = [
        (elsewhere.section(&elsewhere.path("ca.pem")), "does not name 127.0.0.1, where other nodes dial this one"),
        (expired.section(&expired.path("ca.pem")), "is out of its validity dates"),
        (format!("[tls]\ncert = {:?}\n", pki.path("node.pem")), "give both cert and key"),
        (format!("[tls]\ncert = {:?}\nkey = {:?}\n", not_pem, pki.path("node.key")), "tls.cert"),
        (format!("[tls]\ncert = {:?}\nkey = {:?}\n", pki.path("node.pem"), not_pem), "tls.key"),
        (format!("[tls]\ncert = {:?}\nkey = {:?}\n", pki.path("node.pem"), stranger), "the key does not fit"),
        (format!("[tls]\nca = {:?}\n", pki.path("missing.pem")), "tls.ca"),
        ("[node]\nseeds = [\"https://127.0.0.1:1\"]\n".to_owned(), "not a ws:// or wss:// URL"),
    ];
    for (section, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("weft.toml");
        let text = if section.starts_with("[node]") {
            format!("{section}listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n")
        } else {
            format!("[node]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{section}")
        };
        std::fs::write(&config, text).unwrap();
        let out = Command::new(support::WEFT).args(["node", "--config", config.to_str().unwrap()]).output().unwrap();
        assert!(!out.status.success(), "{section}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{section}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_a_new_certificate_to_new_connections_and_refuses_one_that_cannot_work() {
    let old = Pki::new();
    let live = tempfile::tempdir().unwrap();
    let install = |pki: &Pki| {
        for file in ["node.pem", "node.key", "ca.pem"] {
            std::fs::copy(pki.path(file), live.path().join(file)).unwrap();
        }
    };
    install(&old);
    let section = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
        live.path().join("node.pem"),
        live.path().join("node.key"),
        live.path().join("ca.pem")
    );
    let a1 = node("a1", "alpha", vec!["echo"], &[], &section);
    let before = client(&a1, &old).await;

    // A certificate of another CA: new connections get it, open ones keep going.
    let new = Pki::new();
    install(&new);
    let reload = Admin::new(&a1.admin_url).with_roots(old.roots()).post("/v1/federation/reload", "").await.unwrap();
    assert_eq!((reload.status, &reload.body["tls"]), (200, &json!(true)), "{}", reload.text);
    assert_eq!(client(&a1, &new).await.call("echo", vec![json!("new")]).await.unwrap(), json!("new"));
    let e = Client::connect_with(&a1.ws, &old.roots()).await.err().unwrap();
    assert!(e.message.contains("certificate"), "{e}");
    assert_eq!(before.call("echo", vec![json!("still")]).await.unwrap(), json!("still"));

    // A key that is not PEM, or turning TLS off: refused whole, the
    // certificate in force stays.
    let admin = Admin::new(&a1.admin_url).with_roots(new.roots());
    std::fs::write(live.path().join("node.key"), "not a key").unwrap();
    let refused = admin.post("/v1/federation/reload", "").await.unwrap();
    assert_eq!(refused.status, 400);
    assert!(refused.text.contains("tls.key") && refused.text.contains("nothing was applied"), "{}", refused.text);
    // So is a certificate that does not name the address peers dial.
    install(&Pki::with(&["localhost"], false));
    let refused = admin.post("/v1/federation/reload", "").await.unwrap();
    assert_eq!(refused.status, 400);
    assert!(refused.text.contains("does not name 127.0.0.1"), "{}", refused.text);
    install(&new);
    let config = a1.dir.path().join("weft.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&section, "")).unwrap();
    let refused = admin.post("/v1/federation/reload", "").await.unwrap();
    assert_eq!(refused.status, 400);
    assert!(refused.text.contains("turning TLS off needs a restart"), "{}", refused.text);
    assert_eq!(client(&a1, &new).await.call("echo", vec![json!("kept")]).await.unwrap(), json!("kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_cert_makes_a_ca_once_and_certificates_nodes_serve() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let cert = |node: &str| {
        let args = ["cert", "--out", out.to_str().unwrap(), "--host", "127.0.0.1", "--node", node];
        Command::new(support::WEFT).args(args).output().unwrap()
    };
    let first = cert("n1");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("made a CA"));
    // The second certificate is signed by the CA the first run made.
    let second = cert("n2");
    assert!(second.status.success() && !String::from_utf8_lossy(&second.stdout).contains("made a CA"));
    let again = cert("n2");
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--force"));
    let args = ["cert", "--out", out.to_str().unwrap(), "--host", "bad host!"];
    let bad = Command::new(support::WEFT).args(args).output().unwrap();
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("neither an IP address nor a DNS name")
    );

    let section = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
        out.join("n2.pem"),
        out.join("n2.key"),
        out.join("ca.pem")
    );
    let n2 = node("n2", "alpha", vec!["echo"], &[], &section);
    let n1_section = section.replace("n2.pem", "n1.pem").replace("n2.key", "n1.key");
    let n1 = node("n1", "alpha", vec!["text"], &[&n2], &n1_section);
    let c = Client::connect_with(&n1.ws, &Roots::from_pem_file(&out.join("ca.pem")).unwrap()).await.unwrap();
    let echoed =
        eventually("n1 links to n2", SETTLE, async || c.call("echo", vec![json!("made here")]).await.ok()).await;
    assert_eq!(echoed, json!("made here"));
}
