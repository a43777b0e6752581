//! `weft call`: one function, or a whole request from a file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::Value;
use weft_client::Client;
use weft_proto::{Command, ErrorKind, Request, WeftError};

#[derive(Args)]
pub struct CallArgs {
    #[command(flatten)]
    target: crate::trust::WsTarget,
    /// A whole request (JSON with "cmds"), instead of FUNCTION [ARG...]. Its
    /// commands carry their own "kwargs", "target_cluster", "locs" and
    /// "version_constraint" (see docs/PROTOCOL.md).
    #[arg(long, conflicts_with_all = ["function", "args", "kwargs", "cluster", "locs", "version"])]
    request: Option<PathBuf>,
    /// `function` or `plugin/function`.
    #[arg(required_unless_present = "request")]
    function: Option<String>,
    /// Arguments, each parsed as JSON; text that is not JSON is a string.
    #[arg(allow_negative_numbers = true)]
    args: Vec<String>,
    /// Named argument NAME=JSON (repeatable).
    #[arg(long = "kw", value_name = "NAME=JSON")]
    kwargs: Vec<String>,
    /// Only this cluster's functions qualify; another cluster is reached over
    /// a bridge or a route, if this node's federation policy admits it.
    #[arg(long)]
    cluster: Option<String>,
    /// Required resources, comma-separated.
    #[arg(long, value_delimiter = ',')]
    locs: Vec<String>,
    /// Semver requirement on the plugin version, e.g. "^1".
    #[arg(long)]
    version: Option<String>,
    /// Deadline of the whole request in milliseconds [default: the node's, 30 s].
    #[arg(long, allow_hyphen_values = true, value_parser = milliseconds)]
    timeout_ms: Option<u64>,
    /// Bearer token naming the tenant the requests are made for.
    #[arg(long, env = "WEFT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the whole response as JSON.
    #[arg(long)]
    json: bool,
}

fn milliseconds(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(ms),
        _ => Err("expected a whole number of milliseconds, 1 or more, such as 5000".into()),
    }
}

/// A command-line argument as a JSON value; text that is not JSON is a
/// string. A number JSON cannot hold (such as 1e400) is refused rather than
/// sent as text.
pub(crate) fn parse_arg(text: &str) -> anyhow::Result<Value> {
    match serde_json::from_str(text) {
        Ok(value) => Ok(value),
        Err(e) if e.to_string().starts_with("number out of range") => {
            anyhow::bail!(
                "argument {text} is a number out of the range JSON numbers hold here (f64); quote it as '\"{text}\"' to pass it as text"
            )
        }
        Err(_) => Ok(Value::String(text.to_owned())),
    }
}

/// The node ignores fields it does not know (PROTOCOL), so a misspelt one
/// would change nothing without a word: say so before sending.
fn warn_unknown_fields(path: &std::path::Path, request: &Value) {
    let mut unknown = Vec::new();
    let _: Result<Request, _> = serde_ignored::deserialize(request, |field| unknown.push(field.to_string()));
    for field in unknown {
        let name = field.rsplit('.').next().unwrap_or(&field);
        let meant = match name {
            "kw" | "kwarg" => " (named arguments are \"kwargs\")",
            "cluster" => " (the cluster is \"target_cluster\")",
            "version" => " (the version requirement is \"version_constraint\")",
            "timeout" => " (the deadline is \"timeout_ms\")",
            _ => "",
        };
        eprintln!("warning: {}: {field} is not a request field and is ignored{meant}", path.display());
    }
}

pub async fn run(a: CallArgs) -> anyhow::Result<ExitCode> {
    let single = a.request.is_none();
    let request = match &a.request {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let mut req: Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
            // Let files omit the envelope fields.
            if let Some(obj) = req.as_object_mut() {
                obj.entry("role").or_insert("rpc".into());
                obj.entry("u").or_insert("cli".into());
            }
            // Decoded as the node decodes it, so a problem names its command and field.
            let bytes = serde_json::to_vec(&req)?;
            let request = Request::decode(&bytes)
                .map_err(|(_, e)| anyhow::anyhow!("{} is not a request: {}", path.display(), e.message))?;
            warn_unknown_fields(path, &req);
            request
        }
        None => {
            let fun = a.function.clone().unwrap_or_default();
            let args = a.args.iter().map(|s| parse_arg(s)).collect::<anyhow::Result<_>>()?;
            let mut cmd = Command::new("call", fun, args);
            for kw in &a.kwargs {
                let (k, v) = kw.split_once('=').with_context(|| format!("--kw {kw:?} is not NAME=JSON"))?;
                anyhow::ensure!(!k.is_empty(), "--kw {kw:?} has no name: write NAME=JSON");
                if cmd.kwargs.insert(k.to_owned(), parse_arg(v)?).is_some() {
                    anyhow::bail!("--kw {k} is given twice; give each argument once");
                }
            }
            // `--locs ''` requires nothing, not a resource named "".
            cmd.locs = a.locs.iter().filter(|l| !l.is_empty()).cloned().collect();
            cmd.target_cluster = a.cluster.clone();
            cmd.version_constraint = a.version.clone();
            Request::new("cli", vec![cmd])
        }
    };
    let mut request = request;
    if a.timeout_ms.is_some() {
        request.timeout_ms = a.timeout_ms;
    }
    if a.token.is_some() {
        request.token.clone_from(&a.token);
    }
    let (url, roots) = a.target.url_and_roots()?;
    let client = Client::connect_with(url, &roots).await?;
    // The node enforces the deadline; this bounds the wait on something
    // that accepted the connection but is not answering.
    let response = match a.timeout_ms {
        Some(ms) => {
            let wait = std::time::Duration::from_millis(ms) + std::time::Duration::from_secs(5);
            tokio::time::timeout(wait, client.request(request)).await.map_err(|_| {
                WeftError::new(
                    ErrorKind::UNAVAILABLE,
                    format!("no answer from {url} within --timeout-ms {ms} and 5 s more; is it a Weft node?"),
                )
            })??
        }
        None => client.request(request).await?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&response)?);
        return Ok(if response.error.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS });
    }
    match response.into_result() {
        Ok(r) => {
            let shown = if single { r.get("call").cloned().unwrap_or(Value::Null) } else { r };
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {}", e.kind, e.message);
            // Arguments are read as JSON, so `42` is a number, not text.
            let text_expected =
                e.message.contains("expected string, got number") || e.message.contains("expected string, got boolean");
            if single && e.kind == ErrorKind::INVALID_ARGUMENTS && text_expected {
                eprintln!("(each argument is read as JSON: quote a number or boolean meant as text, as in '\"42\"')");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
