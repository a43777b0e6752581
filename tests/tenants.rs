//! Tenants on real nodes: bearer tokens over WebSocket, HTTP and the CLI,
//! a tenant's plugin refused to other tenants and to foreign clusters on
//! every path (local, forwarded inside the cluster, over a bridge), and warm
//! instances kept apart per caller.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod support;

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{NodeSpec, TestNode, eventually, metric};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use weft_proto::{Command, ErrorKind, Request, WeftError};

const ACME: &str = "acme-secret-0123456789";
const BOB: &str = "bob-secret-0123456789";
const SETTLE: Duration = Duration::from_secs(10);

/// Tenants acme and bob; acme may start 40 commands a minute.
fn tenants() -> String {
    format!(
        "[auth]\nrequired = true\n[tenants.acme]\ntokens = [\"{ACME}\"]\ncalls_per_minute = 40\n[tenants.bob]\ntokens = [\"{BOB}\"]\n"
    )
}

/// A node of `cluster`; with `hostile` it serves acme's copy of the hostile
/// plugin, warm (two instances per caller).
fn node(id: &str, cluster: &str, hostile: bool, seeds: &[&TestNode], extra: &str) -> TestNode {
    let seeds: Vec<String> = seeds.iter().map(|n| format!("{:?}", n.ws)).collect();
    let config = format!(
        "id = \"{id}\"\ncluster = \"{cluster}\"\nseeds = [{}]\n[cluster]\nbeat_interval = \"100ms\"\ncatalog_ttl = \"3s\"\n{extra}\n",
        seeds.join(", ")
    );
    let (plugins, files) = if hostile {
        (vec!["echo", "hostile"], vec![("hostile.toml".to_owned(), b"tenant = \"acme\"\nwarm = 2\n".to_vec())])
    } else {
        (vec!["echo"], vec![])
    };
    TestNode::start(NodeSpec { plugins, files, config })
}

async fn call_as(node: &TestNode, token: Option<&str>, fun: &str, args: Vec<Value>) -> Result<Value, WeftError> {
    let mut req = Request::new("", vec![Command::new("x", fun, args)]);
    req.token = token.map(str::to_owned);
    let r = node.client().await.request(req).await?.into_result()?;
    Ok(r["x"].clone())
}

async fn sees(node: &TestNode, function: &str) -> bool {
    let body = node.admin().get("/v1/catalog").await.unwrap().body;
    body["functions"].as_array().unwrap().iter().any(|f| f["name"] == function)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_name_tenants_and_a_tenants_plugin_is_refused_to_others_on_every_path() {
    let allow = |c: &str| format!("[federation]\nmode = \"explicit\"\nallowed_clusters = [\"{c}\"]\n");
    let alpha = format!("{}{}", allow("beta"), tenants());
    let a1 = node("a1", "alpha", true, &[], &alpha);
    let a2 = node("a2", "alpha", false, &[&a1], &alpha);
    let b1 = node("b1", "beta", false, &[&a1], &allow("alpha"));
    eventually("snoop reaches a2", SETTLE, async || sees(&a2, "snoop").await.then_some(())).await;

    // No token, or a wrong one: refused before anything runs.
    for token in [None, Some("not-a-token-of-anyone")] {
        let e = call_as(&a1, token, "echo", vec![json!("hi")]).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::UNAUTHENTICATED, "{e}");
    }
    assert_eq!(call_as(&a1, Some(BOB), "echo", vec![json!("hi")]).await.unwrap(), "hi", "echo is the operator's");

    // acme's plugin: acme's on the node that has it and through a member,
    // where the warm instance it used before still holds its last value.
    assert_eq!(call_as(&a1, Some(ACME), "snoop", vec![json!("one")]).await.unwrap(), Value::Null);
    assert_eq!(call_as(&a2, Some(ACME), "snoop", vec![json!("two")]).await.unwrap(), "one");
    for via in [&a1, &a2] {
        let e = call_as(via, Some(BOB), "snoop", vec![json!("peek")]).await.unwrap_err();
        assert_eq!((e.kind, e.details["rule"].as_str()), (ErrorKind::POLICY_DENIED, Some("callers")), "{e}");
        assert!(e.message.contains("tenant bob") && !e.message.contains("acme"), "names no owner: {e}");
    }
    assert_eq!(call_as(&a1, Some(ACME), "snoop", vec![json!("three")]).await.unwrap(), "two", "bob saw nothing");
    // A function of acme's kept out of the catalog (resource handles) is
    // explained to acme, and to bob not even named.
    let e = call_as(&a1, Some(ACME), "is-ready", vec![json!(1)]).await.unwrap_err();
    assert_eq!(e.details["local_only"], "hostile/is-ready", "{e}");
    let e = call_as(&a1, Some(BOB), "is-ready", vec![json!(1)]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND, "{e}");
    assert!(e.details.get("local_only").is_none() && !e.message.contains("hostile"), "{e}");
    let plugins = a1.admin().get("/v1/plugins").await.unwrap().body;
    let hostile = plugins["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "hostile").unwrap().clone();
    assert_eq!((hostile["tenant"].as_str(), hostile["callers"].clone()), (Some("acme"), json!(["acme"])));
    assert_eq!(hostile["warm_idle"], 1);
    let metrics = a1.admin().get("/metrics").await.unwrap().text;
    assert_eq!(metric(&metrics, "weft_warm_instances_idle"), Some(1.0), "{metrics}");

    // The operator's view: names and quotas, never the tokens.
    let listed = a1.admin().get("/v1/tenants").await.unwrap();
    assert_eq!(listed.body["required"], true);
    let acme = &listed.body["tenants"][0];
    assert_eq!(
        (acme["name"].as_str(), acme["tokens"].as_u64(), acme["calls_per_minute"].as_u64()),
        (Some("acme"), Some(1), Some(40))
    );
    assert!(!listed.text.contains(ACME) && !listed.text.contains(BOB), "{}", listed.text);

    // HTTP: the token in an Authorization header; 401 without one.
    let body = json!({"role": "rpc", "u": "h", "cmds": [{"name": "x", "fun": "echo", "args": ["web"]}]}).to_string();
    let reply = a1.admin().post("/v1/call", body.clone()).await.unwrap();
    assert_eq!((reply.status, reply.body["error"]["kind"].as_str()), (401, Some("UNAUTHENTICATED")), "{}", reply.text);
    assert_eq!(reply.headers.get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"));
    let bearer = format!("Bearer {BOB}");
    let reply = a1.admin().post_with_headers("/v1/call", body, &[("authorization", &bearer)]).await.unwrap();
    assert_eq!((reply.status, reply.body["r"]["x"].as_str()), (200, Some("web")), "{}", reply.text);

    // WebSocket: a token on the upgrade serves requests that carry none.
    let mut upgrade = a1.ws.as_str().into_client_request().unwrap();
    upgrade.headers_mut().insert("authorization", format!("Bearer {ACME}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(upgrade).await.unwrap();
    let request = json!({"role": "rpc", "u": "w", "cmds": [{"name": "x", "fun": "snoop", "args": ["four"]}]});
    ws.send(Message::Text(request.to_string().into())).await.unwrap();
    let Some(Ok(Message::Text(reply))) = ws.next().await else { panic!("no reply") };
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["r"]["x"], "three", "acme's warm instance: {reply}");

    // From another cluster the caller is that cluster: acme's plugin is not
    // open to it, so beta neither lists nor reaches it; the operator's echo
    // it does.
    let alpha_echo = async || {
        let body = b1.admin().get("/v1/catalog").await.unwrap().body;
        body["functions"].as_array().unwrap().iter().any(|f| f["name"] == "echo" && f["cluster"] == "alpha")
    };
    eventually("beta sees alpha's echo", SETTLE, async || alpha_echo().await.then_some(())).await;
    assert!(!sees(&b1, "snoop").await, "acme's plugin is not listed in beta");
    let mut cmd = Command::new("x", "snoop", vec![json!("from beta")]);
    cmd.target_cluster = Some("alpha".into());
    let e = b1.client().await.call_command(cmd).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND, "{e}");
    let mut cmd = Command::new("x", "echo", vec![json!("hi")]);
    cmd.target_cluster = Some("alpha".into());
    assert_eq!(b1.client().await.call_command(cmd).await.unwrap(), "hi");

    // acme shares its plugin with cluster beta by name: beta lists it and
    // its calls pass, other tenants of alpha still do not.
    let manifest = "tenant = \"acme\"\nwarm = 2\ncallers = [\"acme\", \"cluster:beta\"]\n";
    support::write(&a1.plugins_dir().join("hostile.toml"), manifest);
    let reload = a1.admin().post("/v1/plugins/reload", "").await.unwrap();
    assert_eq!(reload.status, 200, "{}", reload.text);
    eventually("beta to list snoop", SETTLE, async || sees(&b1, "snoop").await.then_some(())).await;
    let mut cmd = Command::new("x", "snoop", vec![json!("from beta")]);
    cmd.target_cluster = Some("alpha".into());
    assert_eq!(b1.client().await.call_command(cmd).await.unwrap(), Value::Null, "beta's own instance");
    let e = call_as(&a1, Some(BOB), "snoop", vec![json!("peek")]).await.unwrap_err();
    assert_eq!((e.kind, e.details["rule"].as_str()), (ErrorKind::POLICY_DENIED, Some("callers")), "{e}");
}

/// A tenant's plugin that offers a function name the operator's plugin
/// offers too takes the bare name from no other caller: bob's and anonymous
/// `echo` resolve to the one they may call, on the node that has both and
/// through a member; for acme, who may call both, the name is ambiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_plugin_does_not_take_a_bare_name_from_other_callers() {
    let open = format!("[tenants.acme]\ntokens = [\"{ACME}\"]\n[tenants.bob]\ntokens = [\"{BOB}\"]\n");
    let config = |id: &str, seeds: &[&TestNode]| {
        let seeds: Vec<String> = seeds.iter().map(|n| format!("{:?}", n.ws)).collect();
        format!(
            "id = \"{id}\"\ncluster = \"alpha\"\nseeds = [{}]\n[cluster]\nbeat_interval = \"100ms\"\n{open}",
            seeds.join(", ")
        )
    };
    let echo = weft_bundle::get("echo").unwrap().to_vec();
    let files =
        vec![("acme-echo.wasm".to_owned(), echo), ("acme-echo.toml".to_owned(), b"tenant = \"acme\"\n".to_vec())];
    let a1 = TestNode::start(NodeSpec { plugins: vec!["echo"], files, config: config("a1", &[]) });
    let a2 = TestNode::start(NodeSpec { plugins: vec![], files: vec![], config: config("a2", &[&a1]) });
    let both = async || {
        let body = a2.admin().get("/v1/catalog").await.unwrap().body;
        let functions = body["functions"].as_array().unwrap().clone();
        (functions.iter().filter(|f| f["name"] == "echo").count() == 2).then_some(())
    };
    eventually("a2 to list both echoes", SETTLE, both).await;
    let body = a2.admin().get("/v1/catalog").await.unwrap().body;
    let acme_echo = body["functions"].as_array().unwrap().iter().find(|f| f["plugin"] == "acme-echo").unwrap().clone();
    assert_eq!(acme_echo["callers"], json!(["acme"]), "{acme_echo}");

    for via in [&a1, &a2] {
        assert_eq!(call_as(via, Some(BOB), "echo", vec![json!("b")]).await.unwrap(), "b");
        assert_eq!(call_as(via, None, "echo", vec![json!("anon")]).await.unwrap(), "anon");
        let e = call_as(via, Some(ACME), "echo", vec![json!("a")]).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::AMBIGUOUS_FUNCTION, "{e}");
        assert_eq!(call_as(via, Some(ACME), "acme-echo/echo", vec![json!("a")]).await.unwrap(), "a");
        let e = call_as(via, Some(BOB), "acme-echo/echo", vec![json!("b")]).await.unwrap_err();
        assert_eq!((e.kind, e.details["rule"].as_str()), (ErrorKind::POLICY_DENIED, Some("callers")), "{e}");
    }
}

/// What a tenant may not call tells it nothing (its functions, signature,
/// versions) and takes no name from it: globex's copy of a plugin name on
/// a2, closed to acme, does not make acme's own ambiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_tenant_may_not_call_tells_it_nothing_and_takes_no_name_from_it() {
    let config = |id: &str, seeds: &[&TestNode]| {
        let seeds: Vec<String> = seeds.iter().map(|n| format!("{:?}", n.ws)).collect();
        format!(
            "id = \"{id}\"\ncluster = \"alpha\"\nseeds = [{}]\n[cluster]\nbeat_interval = \"100ms\"\n{}",
            seeds.join(", "),
            tenants()
        )
    };
    let (echo, math) = (weft_bundle::get("echo").unwrap().to_vec(), weft_bundle::get("math").unwrap().to_vec());
    let a1_files = vec![
        ("acme-echo.wasm".to_owned(), echo.clone()),
        ("acme-echo.toml".to_owned(), b"tenant = \"acme\"\n".to_vec()),
        ("globex-math.wasm".to_owned(), math),
        ("globex-math.toml".to_owned(), b"tenant = \"globex\"\n".to_vec()),
    ];
    let a1 = TestNode::start(NodeSpec { plugins: vec![], files: a1_files, config: config("a1", &[]) });
    let a2_files = vec![
        ("gx.wasm".to_owned(), echo),
        ("gx.toml".to_owned(), b"name = \"acme-echo\"\nversion = \"0.3.0\"\ntenant = \"globex\"\n".to_vec()),
    ];
    let a2 = TestNode::start(NodeSpec { plugins: vec![], files: a2_files, config: config("a2", &[&a1]) });
    let both = async |node: &TestNode| {
        let body = node.admin().get("/v1/catalog").await.unwrap().body;
        let functions = body["functions"].as_array().unwrap().clone();
        (functions.iter().filter(|f| f["plugin"] == "acme-echo" && f["name"] == "echo").count() == 2).then_some(())
    };
    for node in [&a1, &a2] {
        eventually("both acme-echo copies listed", SETTLE, async || both(node).await).await;
    }

    for via in [&a1, &a2] {
        assert_eq!(call_as(via, Some(ACME), "acme-echo/echo", vec![json!("a")]).await.unwrap(), "a");
        let e = call_as(via, Some(ACME), "globex-math/ad", vec![]).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND, "{e}");
        assert!(!e.message.contains("add"), "no sibling of a plugin acme may not call: {e}");
        let e = call_as(via, Some(ACME), "globex-math/add", vec![]).await.unwrap_err();
        assert_eq!((e.kind, e.details["rule"].as_str()), (ErrorKind::POLICY_DENIED, Some("callers")), "{e}");
        assert!(!e.message.contains("func(") && !e.message.contains("tenant globex"), "{e}");
        let mut cmd = Command::new("x", "add", vec![json!(1), json!(2)]);
        cmd.version_constraint = Some("^9".into());
        let mut req = Request::new("", vec![cmd]);
        req.token = Some(ACME.into());
        let e = via.client().await.request(req).await.unwrap().into_result().unwrap_err();
        assert_eq!(e.details["rule"].as_str(), Some("callers"), "no versions told: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_commands_per_minute_is_told_when_to_retry() {
    // `weft token` makes a token and the config line naming it by digest.
    let out = std::process::Command::new(support::WEFT).args(["token", "--tenant", "carol"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text.lines().find_map(|l| l.strip_prefix("token: ")).unwrap().to_owned();
    let entry = text.lines().find_map(|l| l.trim().strip_prefix("tokens = ")).unwrap().to_owned();
    assert!(entry.contains("sha256:") && !entry.contains(&token), "the config holds the digest only: {text}");
    let a1 = node("a1", "alpha", false, &[], &format!("{}[tenants.carol]\ntokens = {entry}\n", tenants()));
    assert_eq!(call_as(&a1, Some(&token), "echo", vec![json!("c")]).await.unwrap(), "c");

    let cmds: Vec<Command> =
        (0..40).map(|i| Command::new(format!("c{i}"), "echo", vec![json!(i.to_string())])).collect();
    let mut req = Request::new("", cmds);
    req.token = Some(ACME.into());
    let client = a1.client().await;
    assert!(client.request(req.clone()).await.unwrap().into_result().is_ok(), "40 commands fit the minute");
    let e = client.request(req).await.unwrap().into_result().unwrap_err();
    assert_eq!(e.kind, ErrorKind::RATE_LIMITED, "{e}");
    assert!(
        e.message.contains("tenants.acme.calls_per_minute") && e.details["retry_after_ms"].as_u64() > Some(0),
        "{e}"
    );
    assert_eq!(call_as(&a1, Some(BOB), "echo", vec![json!("b")]).await.unwrap(), "b", "bob has his own budget");
    let metrics = a1.admin().get("/metrics").await.unwrap().text;
    let commands = |outcome: &str| {
        metric(&metrics, &format!("weft_tenant_commands_total{{tenant=\"acme\",outcome=\"{outcome}\"}}"))
    };
    assert_eq!((commands("admitted"), commands("over_calls_per_minute")), (Some(40.0), Some(40.0)), "{metrics}");

    // The CLI takes the token from --token or WEFT_TOKEN.
    let out = std::process::Command::new(support::WEFT)
        .args(["call", "--node", &a1.ws, "echo", "cli"])
        .env("WEFT_TOKEN", BOB)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"cli\"");
    let out =
        std::process::Command::new(support::WEFT).args(["call", "--node", &a1.ws, "echo", "cli"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"));
}

/// Sandbox slots go to the waiting caller that holds the fewest, not first
/// come, first served: acme's calls queued for the node's one slot do not
/// make bob wait behind all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_queued_calls_do_not_hold_up_another_caller() {
    let a1 = node("a1", "alpha", true, &[], &format!("[limits]\nmax_concurrency = 1\n{}", tenants()));
    // Forty requests of acme's, each a spin until its deadline: 0.1 s, 0.2 s
    // ... 4 s. Served in arrival order they keep the slot busy for 4 s, so
    // each is sent once the one before is in flight: out of order, a late
    // deadline could take the slot first and hold it past bob's.
    let client = std::sync::Arc::new(a1.client().await);
    let admin = a1.admin();
    let mut flood = Vec::new();
    for i in 1..=40 {
        let mut req = Request::new("", vec![Command::new("x", "spin", vec![])]);
        (req.token, req.timeout_ms) = (Some(ACME.into()), Some(100 * i));
        let client = client.clone();
        flood.push(tokio::spawn(async move { client.request(req).await.unwrap().into_result().unwrap_err() }));
        eventually("acme's request in flight", Duration::from_secs(10), async || {
            let metrics = admin.get("/metrics").await.ok()?.text;
            // Requests that ran to their deadline are no longer counted.
            let ended = flood.iter().filter(|spin| spin.is_finished()).count();
            (metric(&metrics, "weft_in_flight_requests")? + ended as f64 >= i as f64).then_some(())
        })
        .await;
    }

    let mut req = Request::new("", vec![Command::new("x", "echo", vec![json!("bob")])]);
    (req.token, req.timeout_ms) = (Some(BOB.into()), Some(2000));
    let answer = a1.client().await.request(req).await.unwrap().into_result();
    assert_eq!(answer.unwrap()["x"], "bob", "bob's call gets the next free slot, not the one after acme's 4 s");
    for spin in flood {
        assert_eq!(spin.await.unwrap().kind, ErrorKind::DEADLINE_EXCEEDED, "each of acme's spins ran to its deadline");
    }
}

/// A node of `cluster` in permissive federation with tenants acme and bob;
/// `keys` (its own key file, and the other cluster and its public key) turn
/// on authenticated links. With `partner`, it serves globex's snoop, open
/// to acme of that cluster only.
fn federated(
    id: &str,
    cluster: &str,
    seeds: &[&TestNode],
    keys: Option<(&Path, &str, &str)>,
    partner: Option<&str>,
) -> TestNode {
    let seeds: Vec<String> = seeds.iter().map(|n| format!("{:?}", n.ws)).collect();
    let mut config = format!(
        "id = \"{id}\"\ncluster = \"{cluster}\"\nseeds = [{}]\n[federation]\nmode = \"permissive\"\n[tenants.acme]\ntokens = [\"{ACME}\"]\n[tenants.bob]\ntokens = [\"{BOB}\"]\n",
        seeds.join(", ")
    );
    if let Some((own, other, public)) = keys {
        config += &format!(
            "[routing.security]\nauthenticate_links = true\nsigning_key = {own:?}\ntrusted_keys = {{ {other} = [{public:?}] }}\n"
        );
    }
    let (plugins, files) = match partner {
        Some(p) => (
            vec!["echo", "hostile"],
            vec![("hostile.toml".to_owned(), format!("tenant = \"globex\"\ncallers = [\"acme@{p}\"]\n").into_bytes())],
        ),
        None => (vec!["echo"], vec![]),
    };
    TestNode::start(NodeSpec { plugins, files, config })
}

async fn snoop_in(node: &TestNode, cluster: &str, token: Option<&str>) -> Result<Value, WeftError> {
    let mut cmd = Command::new("x", "snoop", vec![json!("hi")]);
    cmd.target_cluster = Some(cluster.into());
    let mut req = Request::new("", vec![cmd]);
    req.token = token.map(str::to_owned);
    Ok(node.client().await.request(req).await?.into_result()?["x"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_of_another_cluster_is_named_only_over_authenticated_links() {
    let dir = tempfile::tempdir().unwrap();
    let key = |name: &str| {
        let (private, public) = weft_node::signing::generate();
        let file = dir.path().join(name);
        std::fs::write(&file, private).unwrap();
        (file, public)
    };
    let ((alpha_key, alpha_pub), (beta_key, beta_pub)) = (key("alpha"), key("beta"));
    let a1 = federated("a1", "alpha", &[], Some((&alpha_key, "beta", &beta_pub)), None);
    let b1 = federated("b1", "beta", &[&a1], Some((&beta_key, "alpha", &alpha_pub)), Some("alpha"));
    // The same pair without authenticated links.
    let g1 = federated("g1", "gamma", &[], None, None);
    let d1 = federated("d1", "delta", &[&g1], None, Some("gamma"));
    eventually("alpha sees snoop", SETTLE, async || sees(&a1, "snoop").await.then_some(())).await;
    eventually("gamma sees delta", SETTLE, async || {
        let body = g1.admin().get("/v1/catalog").await.unwrap().body;
        body["functions"].as_array().unwrap().iter().any(|f| f["cluster"] == "delta").then_some(())
    })
    .await;

    // alpha lists it as open to its tenant acme only, as beta offered it.
    let body = a1.admin().get("/v1/catalog").await.unwrap().body;
    let snoop = body["functions"].as_array().unwrap().iter().find(|f| f["name"] == "snoop").unwrap().clone();
    assert_eq!(snoop["callers"], json!(["acme"]), "{snoop}");

    // alpha vouches for its tenant over a link that proved its key: beta
    // runs globex's plugin for acme of alpha, and alpha, which knows that
    // from the offer, refuses it to the others before sending anything.
    assert_eq!(snoop_in(&a1, "beta", Some(ACME)).await.unwrap(), Value::Null);
    let e = snoop_in(&a1, "beta", Some(BOB)).await.unwrap_err();
    assert_eq!((e.kind, e.details["rule"].as_str()), (ErrorKind::POLICY_DENIED, Some("callers")), "{e}");
    assert!(e.message.contains("tenant bob may not call snoop"), "{e}");
    let e = snoop_in(&a1, "beta", None).await.unwrap_err();
    assert!(e.message.contains("an anonymous caller may not call snoop"), "{e}");

    // Without authenticated links no tenant name crosses: acme of gamma is
    // just gamma to delta, which its manifest does not admit, so delta does
    // not offer it to gamma either.
    assert!(!sees(&g1, "snoop").await, "listed where no caller could call it");
    let e = snoop_in(&g1, "delta", Some(ACME)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND, "{e}");
    drop((b1, d1));
}

/// A tenant's name crosses one authenticated link only, so a plugin open to
/// `acme@alpha` is not offered to alpha through a transit cluster, even one
/// gamma trusts to carry calls: alpha would list what none of its callers
/// could call. Gamma's echo, open to
/// everyone, it does list through beta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_open_to_a_tenant_of_another_cluster_is_not_offered_through_transit() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<(String, std::path::PathBuf, String)> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|cluster| {
            let (private, public) = weft_node::signing::generate();
            let file = dir.path().join(cluster);
            std::fs::write(&file, private).unwrap();
            ((*cluster).to_owned(), file, public)
        })
        .collect();
    let node = |cluster: &str, seeds: &[&TestNode], transit: bool, plugins: Vec<&'static str>, files| {
        let (_, own, _) = keys.iter().find(|(c, ..)| c == cluster).unwrap();
        let trusted: Vec<String> =
            keys.iter().filter(|(c, ..)| c != cluster).map(|(c, _, public)| format!("{c} = [{public:?}]")).collect();
        let seeds: Vec<String> = seeds.iter().map(|n| format!("{:?}", n.ws)).collect();
        let config = format!(
            "id = \"{cluster}1\"\ncluster = \"{cluster}\"\nseeds = [{}]\n[federation]\nmode = \"permissive\"\ntrusted_transit = [\"beta\"]\n[tenants.acme]\ntokens = [\"{ACME}\"]\n[routing]\ntransit = {transit}\nannounce_interval = \"200ms\"\n[routing.security]\nauthenticate_links = true\nsigning_key = {own:?}\ntrusted_keys = {{ {} }}\n",
            seeds.join(", "),
            trusted.join(", ")
        );
        TestNode::start(NodeSpec { plugins, files, config })
    };
    let b1 = node("beta", &[], true, vec![], vec![]);
    let a1 = node("alpha", &[&b1], false, vec![], vec![]);
    let snoop = ("hostile.toml".to_owned(), b"tenant = \"globex\"\ncallers = [\"acme@alpha\"]\n".to_vec());
    let _g1 = node("gamma", &[&b1], false, vec!["echo", "hostile"], vec![snoop]);
    let gamma_echo = async || {
        let body = a1.admin().get("/v1/catalog").await.unwrap().body;
        body["functions"].as_array().unwrap().iter().any(|f| f["name"] == "echo" && f["cluster"] == "gamma")
    };
    eventually("alpha to list gamma's echo through beta", SETTLE, async || gamma_echo().await.then_some(())).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!sees(&a1, "snoop").await, "alpha lists a function no caller of alpha could call through beta");
    let e = snoop_in(&a1, "gamma", Some(ACME)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND, "{e}");
    drop(b1);
}

/// A tenant's limits, changed in the config file, apply to its plugins at
/// the reload: nothing has to restart, and other tenants' plugins stay.
#[tokio::test]
async fn a_reload_applies_changed_tenant_limits_to_the_tenants_plugins() {
    let limits = |deadline: &str| format!("{}[tenants.acme.limits]\ndeadline = \"{deadline}\"\n", tenants());
    let n = node("a1", "alpha", true, &[], &limits("2s"));
    let deadline_of = async |plugin: &str| {
        let body = n.admin().get("/v1/plugins").await.unwrap().body;
        let p = body["plugins"].as_array().unwrap().iter().find(|p| p["name"] == plugin).unwrap().clone();
        p["limits"]["deadline_ms"].as_u64().unwrap()
    };
    assert_eq!(deadline_of("hostile").await, 2000);

    let path = n.dir.path().join("weft.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace("deadline = \"2s\"", "deadline = \"300ms\"");
    support::write(&path, &text);
    let reply = n.admin().post("/v1/federation/reload", "").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["plugins_relimited"], json!(["hostile@0.1.0"]), "{}", reply.text);
    assert_eq!(reply.body["needs_restart"], json!([]), "{}", reply.text);
    assert_eq!((deadline_of("hostile").await, deadline_of("echo").await), (300, 5000));
    let e = call_as(&n, Some(ACME), "spin", vec![]).await.unwrap_err();
    assert!(e.message.contains("its deadline of 300ms"), "{e}");

    // Without its tenant, the plugin falls back to the node's limits, and
    // the log says so.
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.split("[auth]").next().unwrap().to_owned();
    support::write(&path, &text);
    let reply = n.admin().post("/v1/federation/reload", "").await.unwrap();
    assert_eq!(reply.body["plugins_relimited"], json!(["hostile@0.1.0"]), "{}", reply.text);
    assert_eq!(deadline_of("hostile").await, 5000);
    assert!(n.stderr().contains("the plugin's tenant has no [tenants] entry any more"), "{}", n.stderr());
}

/// A plugin name belongs to one tenant: a file of acme's that claims the
/// name of the operator's `echo` (at a higher version, open to everyone)
/// would otherwise take every bare `echo` call. Neither loads, both say
/// why, and renaming one brings the other back.
#[tokio::test]
async fn a_plugin_name_claimed_by_two_tenants_loads_for_neither() {
    let node = TestNode::start(NodeSpec {
        plugins: vec!["echo", "math"],
        files: vec![
            ("aaa.wasm".to_owned(), weft_bundle::get("echo").unwrap().to_vec()),
            (
                "aaa.toml".to_owned(),
                b"name = \"echo\"\nversion = \"9.9.9\"\ntenant = \"acme\"\ncallers = [\"*\"]\n".to_vec(),
            ),
        ],
        config: "watch_plugins = false\n".into(),
    });
    let e = call_as(&node, None, "echo", vec![json!("hi")]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND, "{}", e.message);
    let plugins = node.admin().get("/v1/plugins").await.unwrap().body;
    let failed = plugins["failed"].as_array().unwrap();
    for file in ["aaa.wasm", "echo.wasm"] {
        let reason = failed.iter().find(|f| f["file"] == file).map(|f| f["reason"].to_string()).unwrap_or_default();
        assert!(reason.contains("tenant acme in aaa.wasm; tenant default in echo.wasm"), "{file}: {plugins}");
    }
    assert_eq!(call_as(&node, None, "add", vec![json!(1), json!(2)]).await.unwrap(), json!(3), "the others load");
    std::fs::remove_file(node.plugins_dir().join("aaa.toml")).unwrap();
    std::fs::rename(node.plugins_dir().join("aaa.wasm"), node.plugins_dir().join("acme-echo.wasm")).unwrap();
    let reply = node.admin().post("/v1/plugins/reload", "").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    // The catalog takes up a reload a moment after it answers.
    let e = eventually("echo in the catalog again", SETTLE, async || {
        call_as(&node, None, "echo", vec![json!("hi")]).await.err().filter(|e| e.kind != ErrorKind::FUNCTION_NOT_FOUND)
    })
    .await;
    assert_eq!(e.kind, ErrorKind::AMBIGUOUS_FUNCTION, "both echo plugins serve again: {}", e.message);
    let mut req = Request::new("", vec![Command::new("x", "echo", vec![json!("hi")])]);
    req.cmds[0].function_id = Some("echo/echo".into());
    assert_eq!(node.client().await.request(req).await.unwrap().into_result().unwrap()["x"], json!("hi"));
}

/// Across the cluster too: two members serving one plugin name for two
/// tenants refuse the call rather than pick the higher version, which
/// would hand one tenant's calls to the other's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_serving_one_plugin_name_for_two_tenants_refuse_the_call() {
    let manifest = |extra: &str| ("echo.toml".to_owned(), format!("callers = [\"*\"]\n{extra}").into_bytes());
    let spec = |id: &str, seeds: &[&TestNode], extra: &str| {
        let seeds: Vec<String> = seeds.iter().map(|n| format!("{:?}", n.ws)).collect();
        NodeSpec {
            plugins: vec!["echo"],
            files: vec![manifest(extra)],
            config: format!("id = \"{id}\"\ncluster = \"c\"\nseeds = [{}]\n", seeds.join(", ")),
        }
    };
    let a = TestNode::start(spec("a", &[], "tenant = \"acme\"\n"));
    let b = TestNode::start(spec("b", &[&a], "tenant = \"globex\"\nversion = \"9.9.9\"\n"));
    eventually("a to list b's echo", SETTLE, async || {
        let body = a.admin().get("/v1/catalog").await.ok()?.body;
        body["functions"].as_array()?.iter().any(|f| f["node"] == "b").then_some(())
    })
    .await;
    let e = call_as(&a, None, "echo", vec![json!("hi")]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::AMBIGUOUS_FUNCTION, "{}", e.message);
    assert_eq!(e.details["tenants"], json!(["acme", "globex"]), "{}", e.message);
    drop(b);
}
