//! Weft benchmarks. `weft-bench [runtime|pipeline|transport|cluster|all] [--smoke]` prints
//! markdown tables of figures measured on this machine. Pairs that are
//! compared are measured interleaved (A, B, A, B, ...) so drift of a shared
//! machine hits both sides alike. `--smoke` runs a few iterations only (CI
//! uses it so the benchmarks cannot rot); its figures mean nothing.

mod cluster;
mod report;
mod transport;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_client::Client;
use weft_proto::{Caller, Command, Request};
use weft_runtime::{CallTarget, NodeLoad, Runtime, RuntimeConfig};

use crate::report::Report;

struct Samples(Vec<Duration>);

impl Samples {
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
    }
    fn median(&self) -> Duration {
        self.pct(0.5)
    }
}

fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64().max(1e-12))
}

#[inline(never)]
fn native_echo(s: String) -> String {
    std::hint::black_box(s)
}

/// The runtime figures come from a single-threaded runtime of their own, so
/// the janitor task that tears a lone call's instance down and builds the
/// next spare (see `Runtime::settled`) runs on the calling thread and is counted,
/// instead of hiding on an idle worker.
fn bench_runtime(smoke: bool, report: &mut Report) -> Result<(), String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(runtime_figures(smoke, report))
        })
        .join()
        .map_err(|_| "the runtime benchmark panicked".to_owned())?
    })
}

async fn runtime_figures(smoke: bool, report: &mut Report) -> Result<(), String> {
    let rounds = if smoke { 3 } else { 50 };
    let batch = if smoke { 20 } else { 400 };
    let cache = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = RuntimeConfig { cache_dir: Some(cache.path().to_owned()), ..RuntimeConfig::default() };
    let echo = weft_bundle::get("echo").ok_or("echo not bundled")?;

    // Compile cold (fresh cache folder each time) vs load from the cache.
    let (mut cold, mut cached) = (Vec::new(), Vec::new());
    for _ in 0..if smoke { 1 } else { 5 } {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        for (into, _) in [(&mut cold, 0), (&mut cached, 1)] {
            let rt = Runtime::new(RuntimeConfig { cache_dir: Some(dir.path().to_owned()), ..RuntimeConfig::default() })
                .map_err(|e| e.to_string())?;
            rt.load_bytes("echo.wasm", "echo", echo, None).map_err(|e| e.to_string())?;
            let ms = rt.plugins().first().map_or(0.0, |p| p.compile_ms);
            into.push(Duration::from_secs_f64(ms / 1e3));
        }
    }

    let rt = Runtime::new(config).map_err(|e| e.to_string())?;
    rt.load_bytes("echo.wasm", "echo", echo, None).map_err(|e| e.to_string())?;
    // The same component again, opted in to warm instances by its manifest.
    rt.load_bytes("warm.wasm", "warm", echo, Some("warm = 1\n")).map_err(|e| e.to_string())?;
    let target = || CallTarget { plugin: "echo", version: None, function: "echo" };
    let warm_target = || CallTarget { plugin: "warm", version: None, function: "echo" };
    let args = [json!("hello")];
    let caller = Caller::Anonymous;
    let (mut fresh, mut answer, mut warm, mut reused, mut native) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (into, target) in [(&mut fresh, target()), (&mut warm, warm_target())] {
            for _ in 0..batch {
                let started = Instant::now();
                rt.call(target.clone(), &args, Instant::now() + Duration::from_secs(5), &caller, NodeLoad::Idle)
                    .await
                    .map_err(|e| e.to_string())?;
                let answered = started.elapsed();
                // A lone fresh call runs on a spare instance built after the
                // call before it, and tears its own down after answering;
                // the cost of a call includes both.
                rt.settled().await;
                into.push(started.elapsed());
                if target.plugin == "echo" {
                    answer.push(answered);
                }
            }
        }
        reused.extend(rt.time_reused_instance(target(), &args, batch).await.map_err(|e| e.to_string())?);
        for _ in 0..batch {
            let started = Instant::now();
            std::hint::black_box(native_echo(String::from("hello")));
            native.push(started.elapsed());
        }
    }
    let (fresh, answer, warm, reused, native) =
        (Samples(fresh), Samples(answer), Samples(warm), Samples(reused), Samples(native));
    println!("### Runtime: `echo(\"hello\")` ({} calls each, interleaved)\n", rounds * batch);
    println!("| variant | median | p99 | vs reused |");
    println!("|---|---|---|---|");
    for (name, s) in [
        ("fresh sandboxed instance + call (JSON in/out), all its work", &fresh),
        ("the same, until the answer (a lone call gets a spare instance, tears down after)", &answer),
        ("warm instance (manifest `warm`) + call, same caller", &warm),
        ("reused instance, call only (JSON in/out)", &reused),
        ("native Rust function", &native),
    ] {
        println!("| {name} | {} | {} | {} |", us(s.median()), us(s.pct(0.99)), ratio(s.median(), reused.median()));
    }
    report.micros("runtime.fresh_echo_us", fresh.median());
    report.micros("runtime.fresh_echo_answer_us", answer.median());
    report.micros("runtime.warm_echo_us", warm.median());
    report.micros("runtime.reused_echo_us", reused.median());
    report.micros("runtime.native_echo_us", native.median());
    let (cold, cached) = (Samples(cold), Samples(cached));
    report.millis("runtime.compile_ms", cold.median());
    report.millis("runtime.cache_load_ms", cached.median());
    println!("\n### Component load: echo.wasm\n");
    println!("| variant | median |\n|---|---|");
    println!("| compile (Cranelift), cold cache | {} |", ms(cold.median()));
    println!("| deserialize from data_dir cache | {} |", ms(cached.median()));
    println!("| ratio | {} |\n", ratio(cold.median(), cached.median()));
    Ok(())
}

async fn timed(client: &Client, req: Request) -> Result<Duration, String> {
    let started = Instant::now();
    let response = client.request(req).await.map_err(|e| e.to_string())?;
    if let Some(e) = response.error {
        return Err(format!("{}: {}", e.kind, e.message));
    }
    Ok(started.elapsed())
}

fn cmds(n: usize, fun: &str, args: impl Fn(usize) -> Vec<Value>) -> Vec<Command> {
    (0..n).map(|i| Command::new(format!("c{i}"), fun, args(i))).collect()
}

async fn bench_pipeline(smoke: bool, report: &mut Report) -> Result<(), String> {
    let rounds = if smoke { 3 } else { 200 };
    // The node runs in a process of its own, as it does for its clients: in
    // this one it would share the client's workers (docs/BENCHMARKS.md). Its
    // plugins folder holds a second copy of echo, so names are qualified.
    let node = transport::NodeProcess::start()?;
    let client = Client::connect(&node.ws).await.map_err(|e| e.to_string())?;

    let req = |cmds: Vec<Command>| Request::new("", cmds);
    let echo = |_| vec![json!("x")];
    let work = |_| vec![json!(2)];
    let chain: Vec<Command> = (0..10)
        .map(|i| {
            let arg = if i == 0 { json!("x") } else { json!({"$ref": format!("c{}", i - 1)}) };
            Command::new(format!("c{i}"), "echo/concat", vec![arg, json!("y")])
        })
        .collect();
    let mut s: [Vec<Duration>; 7] = Default::default();
    for _ in 0..rounds {
        s[0].push(timed(&client, req(cmds(1, "echo/echo", echo))).await?);
        s[1].push(timed(&client, req(cmds(10, "echo/echo", echo))).await?);
        s[2].push(timed(&client, req(cmds(100, "echo/echo", echo))).await?);
        s[3].push(timed(&client, req(cmds(1, "hostile/hog", work))).await?);
        s[4].push(timed(&client, req(cmds(10, "hostile/hog", work))).await?);
        s[5].push(timed(&client, req(chain.clone())).await?);
        let started = Instant::now();
        let mut value = json!("x");
        for _ in 0..10 {
            value = client.call("echo/concat", vec![value, json!("y")]).await.map_err(|e| e.to_string())?;
        }
        s[6].push(started.elapsed());
    }
    let [one, ten, hundred, hog1, hog10, chain10, seq10] = s.map(Samples);
    for (name, s) in [
        ("pipeline.echo1_us", &one),
        ("pipeline.echo10_us", &ten),
        ("pipeline.echo100_us", &hundred),
        ("pipeline.one_hog_us", &hog1),
        ("pipeline.fanout10_hog_us", &hog10),
        ("pipeline.chain10_us", &chain10),
        ("pipeline.sequential10_us", &seq10),
    ] {
        report.micros(name, s.median());
    }
    println!("### Pipelines through a node over WebSocket (loopback, {rounds} rounds, interleaved)\n");
    println!("| request | median | p99 | note |\n|---|---|---|---|");
    let per = |s: &Samples, n: u32| us((s.median().saturating_sub(one.median())) / (n - 1));
    println!("| 1 × echo | {} | {} | baseline |", us(one.median()), us(one.pct(0.99)));
    println!(
        "| 10 independent echo | {} | {} | +{} per extra command |",
        us(ten.median()),
        us(ten.pct(0.99)),
        per(&ten, 10)
    );
    println!(
        "| 100 independent echo | {} | {} | +{} per extra command |",
        us(hundred.median()),
        us(hundred.pct(0.99)),
        per(&hundred, 100)
    );
    println!("| 1 × hog(2 MiB) | {} | {} | one step |", us(hog1.median()), us(hog1.pct(0.99)));
    println!(
        "| 10-wide fan-out of hog(2 MiB) | {} | {} | {} of one step |",
        us(hog10.median()),
        us(hog10.pct(0.99)),
        ratio(hog10.median(), hog1.median())
    );
    println!("| 10-deep concat chain, one request | {} | {} | |", us(chain10.median()), us(chain10.pct(0.99)));
    println!(
        "| 10 sequential client calls | {} | {} | chain is {} of this |",
        us(seq10.median()),
        us(seq10.pct(0.99)),
        ratio(chain10.median(), seq10.median())
    );
    println!();
    Ok(())
}

/// `weft-bench [runtime|pipeline|transport|cluster|all] [--smoke] [--json FILE]`
struct Args {
    what: String,
    smoke: bool,
    json: Option<std::path::PathBuf>,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Self { what: "all".into(), smoke: false, json: None };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--smoke" => args.smoke = true,
                "--json" => args.json = Some(it.next().ok_or("--json needs a file name")?.into()),
                flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
                what => args.what = what.to_owned(),
            }
        }
        Ok(args)
    }
}

async fn run(what: &str, smoke: bool, report: &mut Report) -> Result<(), String> {
    match what {
        "runtime" => bench_runtime(smoke, report),
        "pipeline" => bench_pipeline(smoke, report).await,
        "cluster" => cluster::bench_cluster(smoke, report).await,
        "transport" => transport::bench_transport(smoke, report).await,
        other => Err(format!("unknown benchmark {other:?}; use runtime, pipeline, transport, cluster or all")),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}\nusage: weft-bench [runtime|pipeline|transport|cluster|all] [--smoke] [--json FILE]");
            return std::process::ExitCode::from(2);
        }
    };
    if args.what == "bare-servers" {
        // Internal: the transport benchmark's baseline servers (see transport.rs).
        return match transport::serve_bare().await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bare servers failed: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let machine = report::machine();
    println!(
        "<!-- weft-bench {}{}: {} cores, {}, {} MiB -->\n",
        args.what,
        if args.smoke { " --smoke" } else { "" },
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("unknown CPU"),
        machine["memory_mib"]
    );
    let mut report = Report::default();
    let steps: &[&str] =
        if args.what == "all" { &["runtime", "pipeline", "transport", "cluster"] } else { &[args.what.as_str()] };
    let mut result = Ok(());
    for step in steps {
        result = run(step, args.smoke, &mut report).await;
        if result.is_err() {
            break;
        }
    }
    print!("{}", report.summary_markdown());
    if let (Ok(()), Some(path)) = (&result, &args.json) {
        let text = serde_json::to_string_pretty(&report.to_json(&args.what, args.smoke)).unwrap_or_default();
        result = std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()));
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
