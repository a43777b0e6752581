//! Test harness: real `weft node` processes (the binary of this build) on
//! loopback port 0, each with its own temp folder, killed when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use weft_client::{Admin, Client};

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// What a test node starts with.
pub struct NodeSpec {
    pub plugins: Vec<&'static str>,
    /// Extra files in the plugins folder: (file name, bytes).
    pub files: Vec<(String, Vec<u8>)>,
    /// Extra TOML appended to the node's config file.
    pub config: String,
}

impl Default for NodeSpec {
    fn default() -> Self {
        Self {
            plugins: vec!["echo", "math", "text", "hostile"],
            files: vec![("hostile.toml".into(), b"[limits]\ndeadline = \"1s\"\nmemory = \"32MiB\"\n".to_vec())],
            config: String::new(),
        }
    }
}

pub struct TestNode {
    child: Child,
    pub dir: tempfile::TempDir,
    pub ws: String,
    pub admin_url: String,
    pub id: String,
    stderr_log: PathBuf,
}

impl TestNode {
    pub fn start(spec: NodeSpec) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins = dir.path().join("plugins");
        weft_bundle::write_to(&plugins, &spec.plugins).expect("write plugins");
        for (name, bytes) in &spec.files {
            std::fs::write(plugins.join(name), bytes).expect("write plugin file");
        }
        let config = dir.path().join("weft.toml");
        let grace = if spec.config.contains("shutdown_grace") { "" } else { "shutdown_grace = \"5s\"\n" };
        let text = format!(
            "[node]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nplugins = \"plugins\"\ndata_dir = \"data\"\n{grace}{}",
            spec.config
        );
        std::fs::write(&config, text).expect("write config");
        Self::spawn(dir, &["node", "--config", config.to_str().expect("utf-8 path")])
    }

    pub fn spawn(dir: tempfile::TempDir, args: &[&str]) -> TestNode {
        Self::spawn_with_env(dir, args, &[])
    }

    pub fn spawn_with_env(dir: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> TestNode {
        let stderr_log = dir.path().join("stderr.log");
        let mut child = Command::new(WEFT)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .env("WEFT_LOG", "info,weft::guest=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).expect("stderr log"))
            .spawn()
            .expect("spawn weft");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read ready line");
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
            panic!("node did not start ({e}): stdout {line:?}\nstderr:\n{log}")
        });
        TestNode {
            child,
            ws: ready["ws"].as_str().expect("ws").to_owned(),
            admin_url: ready["admin"].as_str().expect("admin").to_owned(),
            id: ready["node"].as_str().expect("node").to_owned(),
            dir,
            stderr_log,
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws).await.expect("connect")
    }

    pub fn admin(&self) -> Admin {
        Admin::new(&self.admin_url)
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the process; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal_term();
        self.wait()
    }

    /// SIGKILL: the node vanishes without a goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().ok().and_then(|s| s.code())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns Some or the deadline passes.
pub async fn eventually<T>(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The peak resident memory of process `pid` so far, in MiB.
pub fn peak_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse::<u64>().ok()).expect("a size in kB") / 1024
}

/// Reads a counter/gauge sample from Prometheus text: the value of the first
/// line starting with `prefix` (name plus labels as printed).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
}

/// A hand-made peer: says hello as `node` of `cluster`, then sends what the
/// test says, to provoke exactly what real nodes would only do by chance.
pub struct FakePeer {
    pub ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    pub cluster: String,
    pub node: String,
    /// The cluster its updates are signed for (the target's, unless a test changes it).
    pub to: String,
}

impl FakePeer {
    pub async fn join(target: &TestNode, node: &str, cluster: &str) -> FakePeer {
        let (mut ws, _) = tokio_tungstenite::connect_async(&target.ws).await.unwrap();
        let hello = serde_json::json!({"t": "hello", "proto": 1, "node": node, "cluster": cluster, "incarnation": 1, "addr": "ws://127.0.0.1:9", "caps": []});
        ws.send(Message::Text(hello.to_string().into())).await.unwrap();
        let answer = ws.next().await.unwrap().unwrap();
        let answer: Value = serde_json::from_str(answer.to_text().unwrap()).unwrap();
        assert_eq!(answer["t"], "welcome", "{answer}");
        let to = answer["cluster"].as_str().unwrap().to_owned();
        FakePeer { ws, cluster: cluster.to_owned(), node: node.to_owned(), to }
    }

    pub async fn send(&mut self, msg: &Value) {
        self.ws.send(Message::Text(msg.to_string().into())).await.unwrap();
    }

    /// The next message of kind `t`; the others (beats, membership) pass.
    pub async fn next_of(&mut self, t: &str) -> Value {
        loop {
            let msg = self.ws.next().await.expect("the link stays open").unwrap();
            if let Message::Text(text) = msg {
                let msg: Value = serde_json::from_str(&text).unwrap();
                if msg["t"] == t {
                    return msg;
                }
            }
        }
    }
}
