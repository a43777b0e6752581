//! `weft bench`: keep N calls in flight over a few connections and report
//! throughput, latency percentiles and errors by kind.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tokio::task::JoinSet;
use weft_client::Client;
use weft_proto::{Command, ErrorKind, Request};
use weft_runtime::units::parse_duration;

use crate::call::parse_arg;

/// In flight at most: a node answers more than 1024 per connection
/// (`max_in_flight_per_connection`) with RESOURCE_EXHAUSTED anyway.
const MAX_CONCURRENCY: i64 = 100_000;
/// Latency samples kept at most (4 bytes each); later responses still count.
const MAX_SAMPLES: u64 = 5_000_000;
#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    target: crate::trust::WsTarget,
    /// Requests in flight, in total over all connections (at most the
    /// number of --requests).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=MAX_CONCURRENCY))]
    concurrency: u32,
    /// Connections to open [default: min(concurrency, 4)].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    connections: Option<u32>,
    /// How long to run, e.g. "10s", "500ms", "2m" [default: 10s].
    #[arg(long, value_parser = positive_duration, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Stop after this many requests instead of after a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Bearer token naming the tenant the requests are made for.
    #[arg(long, env = "WEFT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// `function` or `plugin/function`.
    function: String,
    /// Arguments, each parsed as JSON; text that is not JSON is a string.
    /// Options may come after them, as with `weft call`.
    #[arg(allow_negative_numbers = true)]
    args: Vec<String>,
}

#[derive(Clone, Copy)]
enum Stop {
    After(u64),
    At(Instant),
}

#[derive(Default)]
struct Counters {
    issued: AtomicU64,
    completed: AtomicU64,
    errors: AtomicU64,
}

/// What one in-flight slot saw.
#[derive(Default)]
struct Tally {
    samples: Vec<u32>,
    errors: BTreeMap<&'static str, u64>,
    /// The message of the first error of each kind, to say why.
    example: BTreeMap<&'static str, String>,
    /// Slots that stopped early: their connection was lost.
    lost: u32,
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

pub async fn run(mut a: BenchArgs) -> anyhow::Result<ExitCode> {
    // More slots than requests would only sit idle.
    a.concurrency = a.concurrency.min(a.requests.map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX)));
    let connections = a.connections.unwrap_or(4).min(a.concurrency);
    let args = a.args.iter().map(|s| parse_arg(s)).collect::<anyhow::Result<_>>()?;
    let mut clients = Vec::new();
    let (url, roots) = a.target.url_and_roots()?;
    for _ in 0..connections {
        let client = Client::connect_with(url, &roots).await?;
        clients.push(Arc::new(client));
    }
    // `u` stays empty: the client gives each request its own.
    let mut template = Request::new("", vec![Command::new("call", a.function.clone(), args)]);
    template.token = a.token.clone();
    // One request first, not counted: an error every request would get
    // alike ends the run before it measures nothing but that error.
    if let Some(e) = clients[0].request(template.clone()).await?.error.filter(|e| repeats(e.kind)) {
        eprintln!("{}: {}", e.kind, e.message);
        eprintln!("(every request would fail the same way, so nothing was measured)");
        return Ok(ExitCode::FAILURE);
    }

    let started = Instant::now();
    let stop = match a.requests {
        Some(n) => Stop::After(n),
        None => Stop::At(started + a.duration.unwrap_or(Duration::from_secs(10))),
    };
    let counters = Arc::new(Counters::default());
    let mut slots = JoinSet::new();
    for i in 0..a.concurrency as usize {
        let client = clients[i % clients.len()].clone();
        slots.spawn(slot(client, template.clone(), stop, counters.clone()));
    }

    let mut total = Tally::default();
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
    let (mut last_at, mut last_done, mut shown) = (started, 0, false);
    loop {
        tokio::select! {
            joined = slots.join_next() => match joined {
                Some(tally) => {
                    let tally = tally?;
                    total.samples.extend(tally.samples);
                    for (kind, n) in tally.errors {
                        *total.errors.entry(kind).or_default() += n;
                    }
                    for (kind, message) in tally.example {
                        total.example.entry(kind).or_insert(message);
                    }
                    total.lost += tally.lost;
                }
                None => break,
            },
            _ = tick.tick() => {
                let done = counters.completed.load(Relaxed);
                let now = Instant::now();
                let rate = (done - last_done) as f64 / (now - last_at).as_secs_f64();
                eprint!(
                    "\r{:>5.0}s  {done} done  {rate:.0} req/s  {} errors    ",
                    (now - started).as_secs_f64(),
                    counters.errors.load(Relaxed),
                );
                let _ = std::io::stderr().flush();
                (last_at, last_done, shown) = (now, done, true);
            }
        }
    }
    if shown {
        eprintln!();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let completed = counters.completed.load(Relaxed);
    let error_count: u64 = total.errors.values().sum();
    let throughput = completed as f64 / elapsed;
    total.samples.sort_unstable();
    let s = &total.samples;
    let (p50, p90, p99, max) = (percentile(s, 50.0), percentile(s, 90.0), percentile(s, 99.0), s.last().copied());

    if a.json {
        let report = json!({
            "function": a.function,
            "concurrency": a.concurrency,
            "connections": connections,
            "elapsed_s": elapsed,
            "completed": completed,
            "ok": completed - error_count,
            "errors": total.errors,
            "error_examples": total.example,
            "throughput": throughput,
            "latency_us": {"p50": p50, "p90": p90, "p99": p99, "max": max},
            "samples": s.len(),
            "slots_lost": total.lost,
        });
        println!("{report}");
        return Ok(outcome(completed, error_count, total.lost, a.concurrency));
    }
    println!("{}: {} in flight over {connections} connection(s), {elapsed:.2} s", a.function, a.concurrency);
    println!("  requests    {completed} ({error_count} errors)");
    println!("  throughput  {throughput:.0} req/s");
    println!("  latency     p50 {}  p90 {}  p99 {}  max {}", fmt_us(p50), fmt_us(p90), fmt_us(p99), fmt_us(max));
    if completed > MAX_SAMPLES {
        println!("              (from the first {} responses)", s.len());
    }
    for (kind, n) in &total.errors {
        let example = total.example.get(kind).map_or_else(String::new, |m| format!("  (first: {m})"));
        println!("  {kind:<22}{n}{example}");
    }
    Ok(outcome(completed, error_count, total.lost, a.concurrency))
}

/// Errors about the request itself, which every copy of it gets alike.
fn repeats(kind: ErrorKind) -> bool {
    use ErrorKind::*;
    matches!(
        kind,
        PARSE_ERROR
            | INVALID_REQUEST
            | FUNCTION_NOT_FOUND
            | AMBIGUOUS_FUNCTION
            | INVALID_ARGUMENTS
            | POLICY_DENIED
            | UNAUTHENTICATED
    )
}

/// Failure when nothing succeeded, or when connections were lost: a script
/// running a benchmark learns that it measured only errors, or a run cut
/// short (the client does not reconnect).
fn outcome(completed: u64, errors: u64, lost: u32, slots: u32) -> ExitCode {
    if lost > 0 {
        eprintln!(
            "the run was cut short: {lost} of {slots} in-flight slots lost their connection to the node (UNAVAILABLE above); the figures cover only the requests before"
        );
        ExitCode::FAILURE
    } else if completed > 0 && errors == completed {
        eprintln!("every request failed; see the errors above");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One in-flight slot: sends the next request as soon as the last answered.
async fn slot(client: Arc<Client>, template: Request, stop: Stop, counters: Arc<Counters>) -> Tally {
    let mut tally = Tally::default();
    loop {
        let go = match stop {
            Stop::After(n) => counters.issued.fetch_add(1, Relaxed) < n,
            Stop::At(deadline) => Instant::now() < deadline,
        };
        if !go {
            return tally;
        }
        let sent = Instant::now();
        let outcome = client.request(template.clone()).await;
        let micros = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
        let index = counters.completed.fetch_add(1, Relaxed);
        let (error, lost) = match outcome {
            Ok(response) => {
                if index < MAX_SAMPLES {
                    tally.samples.push(micros);
                }
                (response.error.map(|e| (e.kind, e.message)), false)
            }
            Err(e) => (Some((ErrorKind::UNAVAILABLE, e.message)), true),
        };
        if let Some((kind, message)) = error {
            counters.errors.fetch_add(1, Relaxed);
            *tally.errors.entry(kind.as_str()).or_default() += 1;
            tally.example.entry(kind.as_str()).or_insert(message);
        }
        // The connection is gone (the client does not reconnect): this slot
        // stops, the ones on other connections carry on.
        if lost {
            tally.lost = 1;
            return tally;
        }
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

fn fmt_us(us: Option<u32>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us < 1_000 => format!("{us} µs"),
        Some(us) if us < 1_000_000 => format!("{:.2} ms", f64::from(us) / 1e3),
        Some(us) => format!("{:.2} s", f64::from(us) / 1e6),
    }
}
