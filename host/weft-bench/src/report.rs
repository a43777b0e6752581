//! The figures a run measured: each benchmark records its key numbers here
//! next to its own table; at the end they make one summary table of Weft
//! against its baselines, and `--json FILE` writes them all for machines.

use std::time::Duration;

use serde_json::{Map, Value, json};

#[derive(Default)]
pub struct Report {
    figures: Vec<Figure>,
}

struct Figure {
    name: &'static str,
    value: f64,
    unit: &'static str,
}

/// One row of the summary: a Weft figure over its baseline, and the target
/// for that ratio (or for the figure itself) where an issue sets one.
struct Comparison {
    what: &'static str,
    weft: &'static str,
    baseline: &'static str,
    target: Target,
}

#[derive(Clone, Copy)]
enum Target {
    None,
    /// The ratio weft / baseline must be at most this.
    RatioAtMost(f64),
    /// The ratio weft / baseline must be at least this.
    RatioAtLeast(f64),
    /// The Weft figure itself must be below this (in its unit).
    Below(f64),
}

const COMPARISONS: &[Comparison] = &[
    Comparison {
        what: "fresh sandboxed instance + echo vs reused instance",
        weft: "runtime.fresh_echo_us",
        baseline: "runtime.reused_echo_us",
        target: Target::RatioAtMost(5.0),
    },
    Comparison {
        what: "warm instance (manifest `warm`) + echo vs reused instance",
        weft: "runtime.warm_echo_us",
        baseline: "runtime.reused_echo_us",
        target: Target::None,
    },
    Comparison {
        what: "fresh sandboxed instance + echo, median",
        weft: "runtime.fresh_echo_us",
        baseline: "runtime.native_echo_us",
        target: Target::Below(10.0),
    },
    // Judged on blocks of requests per server: alternating single requests
    // couples the two servers' figures (docs/BENCHMARKS.md, eleventh session).
    Comparison {
        what: "WebSocket p50 at concurrency 1 vs bare tokio-tungstenite (blocks of requests)",
        weft: "transport.ws_blocks_p50_us",
        baseline: "transport.bare_ws_blocks_p50_us",
        target: Target::RatioAtMost(1.5),
    },
    Comparison {
        what: "the same, alternating single requests",
        weft: "transport.ws_p50_us",
        baseline: "transport.bare_ws_p50_us",
        target: Target::None,
    },
    Comparison {
        what: "WebSocket throughput, 64 connections, vs bare tokio-tungstenite",
        weft: "transport.ws_req_per_s",
        baseline: "transport.bare_ws_req_per_s",
        target: Target::RatioAtLeast(0.6),
    },
    // What the throughput ratio is made of: the client shares the two cores.
    Comparison {
        what: "server CPU per request over those 64 connections",
        weft: "transport.ws_cpu_per_req_us",
        baseline: "transport.bare_ws_cpu_per_req_us",
        target: Target::None,
    },
    Comparison {
        what: "WebSocket p50 at concurrency 1, echo with manifest `warm`, vs bare",
        weft: "transport.ws_warm_p50_us",
        baseline: "transport.bare_ws_p50_us",
        target: Target::None,
    },
    Comparison {
        what: "WebSocket throughput, 64 connections, echo with manifest `warm`, vs bare",
        weft: "transport.ws_warm_req_per_s",
        baseline: "transport.bare_ws_req_per_s",
        target: Target::None,
    },
    Comparison {
        what: "server CPU per request, echo with manifest `warm`",
        weft: "transport.ws_warm_cpu_per_req_us",
        baseline: "transport.bare_ws_cpu_per_req_us",
        target: Target::None,
    },
    Comparison {
        what: "HTTP p50 at concurrency 1 vs bare hyper",
        weft: "transport.http_p50_us",
        baseline: "transport.bare_http_p50_us",
        target: Target::None,
    },
    Comparison {
        what: "HTTP throughput, 64 connections, vs bare hyper",
        weft: "transport.http_req_per_s",
        baseline: "transport.bare_http_req_per_s",
        target: Target::None,
    },
    Comparison {
        what: "10-wide fan-out of echo vs one echo call",
        weft: "pipeline.echo10_us",
        baseline: "pipeline.echo1_us",
        target: Target::RatioAtMost(2.0),
    },
    // CPU-bound steps: on N cores ten of them take at least 10/N step times.
    Comparison {
        what: "10-wide fan-out of hog(2 MiB) vs one step (CPU-bound)",
        weft: "pipeline.fanout10_hog_us",
        baseline: "pipeline.one_hog_us",
        target: Target::None,
    },
    Comparison {
        what: "10-deep chain in one request vs 10 sequential client calls",
        weft: "pipeline.chain10_us",
        baseline: "pipeline.sequential10_us",
        target: Target::RatioAtMost(1.0),
    },
    Comparison {
        what: "echo forwarded inside the cluster vs local",
        weft: "cluster.forward_us",
        baseline: "cluster.local_us",
        target: Target::None,
    },
    Comparison {
        what: "echo over one bridge vs intra-cluster forward",
        weft: "cluster.bridge_us",
        baseline: "cluster.forward_us",
        target: Target::None,
    },
    Comparison {
        what: "catalog convergence, 10 nodes vs 3 nodes (ms)",
        weft: "cluster.convergence_10_ms",
        baseline: "cluster.convergence_3_ms",
        target: Target::Below(1000.0),
    },
];

impl Report {
    pub fn record(&mut self, name: &'static str, value: f64, unit: &'static str) {
        self.figures.push(Figure { name, value, unit });
    }

    /// Records a duration in microseconds.
    pub fn micros(&mut self, name: &'static str, d: Duration) {
        self.record(name, d.as_secs_f64() * 1e6, "us");
    }

    /// Records a duration in milliseconds.
    pub fn millis(&mut self, name: &'static str, d: Duration) {
        self.record(name, d.as_secs_f64() * 1e3, "ms");
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.figures.iter().rev().find(|f| f.name == name).map(|f| f.value)
    }

    /// The comparisons whose two figures this run measured:
    /// (comparison, weft, baseline, ratio, target met).
    fn comparisons(&self) -> impl Iterator<Item = (&'static Comparison, f64, f64, f64, Option<bool>)> + '_ {
        COMPARISONS.iter().filter_map(|c| {
            let (weft, baseline) = (self.get(c.weft)?, self.get(c.baseline)?);
            let ratio = weft / baseline.max(f64::MIN_POSITIVE);
            let met = match c.target {
                Target::None => None,
                Target::RatioAtMost(t) => Some(ratio <= t),
                Target::RatioAtLeast(t) => Some(ratio >= t),
                Target::Below(t) => Some(weft < t),
            };
            Some((c, weft, baseline, ratio, met))
        })
    }

    /// The summary table in markdown (empty when no pair was measured).
    pub fn summary_markdown(&self) -> String {
        let rows: Vec<String> = self
            .comparisons()
            .map(|(c, weft, baseline, ratio, met)| {
                let unit = self.figures.iter().find(|f| f.name == c.weft).map_or("", |f| f.unit);
                let target = match c.target {
                    Target::None => String::new(),
                    Target::RatioAtMost(t) => format!("<= {t}x"),
                    Target::RatioAtLeast(t) => format!(">= {t}x"),
                    Target::Below(t) => format!("< {t} {unit}"),
                };
                let met = match met {
                    None => "",
                    Some(true) => "yes",
                    Some(false) => "no",
                };
                let (weft, baseline) = (figure(weft), figure(baseline));
                format!("| {} | {weft} {unit} | {baseline} {unit} | {ratio:.2}x | {target} | {met} |", c.what)
            })
            .collect();
        if rows.is_empty() {
            return String::new();
        }
        format!(
            "### Summary: Weft against its baselines (same run)\n\n| comparison | Weft | baseline | ratio | target | met? |\n|---|---|---|---|---|---|\n{}\n",
            rows.join("\n")
        )
    }

    pub fn to_json(&self, suite: &str, smoke: bool) -> Value {
        let figures: Map<String, Value> =
            self.figures.iter().map(|f| (f.name.to_owned(), json!({ "value": f.value, "unit": f.unit }))).collect();
        let comparisons: Vec<Value> = self
            .comparisons()
            .map(|(c, weft, baseline, ratio, met)| {
                json!({
                    "comparison": c.what,
                    "weft": c.weft,
                    "baseline": c.baseline,
                    "weft_value": weft,
                    "baseline_value": baseline,
                    "ratio": ratio,
                    "target_met": met,
                })
            })
            .collect();
        json!({
            "suite": suite,
            "smoke": smoke,
            "machine": machine(),
            "figures": figures,
            "comparisons": comparisons,
        })
    }
}

/// A figure with the precision it deserves: 27660 req/s, 9.75 µs.
fn figure(value: f64) -> String {
    if value >= 1000.0 { format!("{value:.0}") } else { format!("{value:.2}") }
}

/// Cores, CPU model and memory of this machine (Linux `/proc`; fields this
/// system does not show are left out).
pub fn machine() -> Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    json!({ "cores": cores, "cpu": model, "memory_mib": mem_kib.map(|k| k / 1024) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_need_both_figures_and_judge_their_targets() {
        let mut r = Report::default();
        r.record("transport.ws_req_per_s", 30_000.0, "req/s");
        assert!(r.summary_markdown().is_empty(), "one side alone makes no row");
        r.record("transport.bare_ws_req_per_s", 100_000.0, "req/s");
        r.micros("runtime.fresh_echo_us", Duration::from_micros(9));
        r.micros("runtime.reused_echo_us", Duration::from_micros(1));
        let json = r.to_json("all", false);
        let rows = json["comparisons"].as_array().expect("rows");
        let row = |name: &str| rows.iter().find(|c| c["comparison"] == name).expect(name).clone();
        let ws = row("WebSocket throughput, 64 connections, vs bare tokio-tungstenite");
        assert_eq!(ws["ratio"], 0.3);
        assert_eq!(ws["target_met"], false);
        let fresh = row("fresh sandboxed instance + echo vs reused instance");
        assert_eq!(fresh["target_met"], false, "9x is over the 5x target");
        assert_eq!(json["figures"]["runtime.fresh_echo_us"]["unit"], "us");
        assert!(r.summary_markdown().contains("| 0.30x | >= 0.6x | no |"), "{}", r.summary_markdown());
    }
}
