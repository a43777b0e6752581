//! Node configuration: the TOML file of the spec, with defaults in one
//! place, `WEFT_*` environment variables and flags on top (the CLI turns
//! both into `Overrides`), and every unknown key or bad value reported with
//! its path and line before the node refuses to start. Unknown keys are
//! collected by serde_ignored (not `deny_unknown_fields`, which would stop at
//! the first one).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use weft_proto::{NAME_RULE, is_valid_name};
use weft_runtime::{CompileLimits, RuntimeConfig, units};

/// The longest sandbox deadline: a call that runs a day is a mistake, and a
/// far larger one would overflow the clock.
const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub node: NodeSection,
    pub federation: FederationSection,
    pub routing: RoutingSection,
    pub limits: LimitsSection,
    pub cluster: ClusterSection,
    pub auth: AuthSection,
    pub tls: TlsSection,
    /// Tenants by name: their tokens, quotas and plugin limits.
    pub tenants: BTreeMap<String, TenantSection>,
    /// The file this came from, read again by a policy reload.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The flags and variables applied over the file, applied again by a reload.
    #[serde(skip)]
    pub overrides: Overrides,
}

/// Who may send client requests.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct AuthSection {
    /// Every client request must carry a token of a `[tenants]` entry.
    pub required: bool,
    /// When set, the admin API answers only requests that carry one of
    /// these tokens (plain, or "sha256:" digests), but for the health
    /// probes and client calls.
    pub operator_tokens: Vec<String>,
}

/// TLS for everything the node serves and for the links it dials.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct TlsSection {
    /// PEM certificate chain of this node; with `key`, the listen and admin
    /// ports speak only TLS (`wss://`, `https://`).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM file of the authorities this node trusts when it dials a
    /// `wss://` peer (default: the public web's authorities).
    pub ca: Option<PathBuf>,
}

impl TlsSection {
    /// Whether this node serves TLS.
    pub fn serves(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

/// One tenant: the bearer tokens that name it, what its requests may use on
/// each node, and the sandbox of the plugins it owns.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct TenantSection {
    /// Bearer tokens, each as text or as "sha256:" + the hex digest of it.
    pub tokens: Vec<String>,
    /// Commands per minute this tenant may start on a node (0: no limit).
    pub calls_per_minute: u32,
    /// Requests this tenant may have running on a node at once (0: no limit).
    pub max_in_flight: u32,
    /// Sandbox of this tenant's plugins; may only lower `[limits]`.
    pub limits: weft_runtime::ManifestLimits,
}

/// Membership and the shared catalog inside one cluster.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ClusterSection {
    /// A member that stops answering is declared down (and its functions
    /// withdrawn) within about this long.
    #[serde(deserialize_with = "units::duration")]
    pub failure_timeout: Duration,
    /// How often a node tells its peers it is alive at its catalog version.
    #[serde(deserialize_with = "units::duration")]
    pub beat_interval: Duration,
    /// A peer's catalog entries expire when not refreshed for this long.
    #[serde(deserialize_with = "units::duration")]
    pub catalog_ttl: Duration,
    pub max_members: u32,
    pub max_catalog_entries_per_node: u32,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            failure_timeout: Duration::from_secs(3),
            beat_interval: Duration::from_secs(2),
            catalog_ttl: Duration::from_secs(10),
            max_members: 1024,
            max_catalog_entries_per_node: 10_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct NodeSection {
    /// Default: derived from the host name and the listen port.
    pub id: Option<String>,
    pub cluster: String,
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    #[serde(deserialize_with = "socket_addr")]
    pub admin: SocketAddr,
    pub seeds: Vec<String>,
    /// The URL other nodes dial to reach this one (default: ws://, or
    /// wss:// with [tls], and the bound listen address; set it when
    /// listening on 0.0.0.0).
    pub advertise: Option<String>,
    /// None: the bundled example plugins (echo, math, text).
    pub plugins: Option<PathBuf>,
    /// Reload the plugins folder by itself when its files change.
    pub watch_plugins: bool,
    pub resources: Vec<String>,
    pub data_dir: PathBuf,
    /// How long in-flight calls may take to finish after SIGINT/SIGTERM.
    #[serde(deserialize_with = "units::duration")]
    pub shutdown_grace: Duration,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FederationMode {
    #[default]
    Strict,
    Explicit,
    Permissive,
}

#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct FederationSection {
    pub mode: FederationMode,
    pub allowed_clusters: Vec<String>,
    pub blocked_clusters: Vec<String>,
    pub bridges: Vec<Bridge>,
    pub functions: FunctionRules,
    pub trusted_transit: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct Bridge {
    pub cluster: String,
    #[serde(default)]
    pub nodes: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct FunctionRules {
    pub allow: Vec<String>,
    pub block: Vec<String>,
    pub rate_limit_per_minute: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct RoutingSection {
    pub max_hops: u32,
    #[serde(deserialize_with = "units::duration")]
    pub announce_interval: Duration,
    #[serde(deserialize_with = "units::duration")]
    pub route_ttl: Duration,
    /// Whether this cluster carries traffic between other clusters: it then
    /// re-announces the routes it learnt to its other bridges.
    pub transit: bool,
    /// Tags put on the route to this cluster.
    pub tags: Vec<String>,
    /// Per neighbouring cluster: extra import and export rules.
    pub neighbours: BTreeMap<String, NeighbourSection>,
    pub security: RoutingSecurity,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct NeighbourSection {
    pub max_hops: Option<u32>,
    pub deny_on_path: Vec<String>,
    pub require_tags: Vec<String>,
    /// Destinations offered to this neighbour besides this cluster (absent: all).
    pub export: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct RoutingSecurity {
    pub require_signatures: bool,
    /// Every link (members and bridges) must prove its cluster's key at the
    /// handshake, and this node proves its own.
    pub authenticate_links: bool,
    pub signing_key: String,
    pub trusted_keys: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct LimitsSection {
    #[serde(deserialize_with = "units::duration")]
    pub deadline: Duration,
    #[serde(deserialize_with = "units::size")]
    pub memory: u64,
    pub fuel: u64,
    pub max_concurrency: u32,
    /// Idle warm instances a node keeps, all plugins together.
    pub max_warm_instances: u32,
    /// Largest WebSocket frame or HTTP body accepted.
    #[serde(deserialize_with = "units::size")]
    pub max_frame: u64,
    #[serde(deserialize_with = "units::size")]
    pub max_result: u64,
    #[serde(deserialize_with = "units::size")]
    pub max_plugin: u64,
    pub max_in_flight_per_connection: u32,
    /// Host memory the requests a node holds may take, all together.
    #[serde(deserialize_with = "units::size")]
    pub max_request_memory: u64,
    /// Commands in one request.
    pub max_commands: u32,
    /// Connections open on the listen and admin ports together (clients and
    /// peer links).
    pub max_connections: u32,
    /// How long a WebSocket client may leave its replies unread before it is
    /// disconnected and its calls cancelled.
    #[serde(deserialize_with = "units::duration")]
    pub write_timeout: Duration,
    /// How long one plugin may take to compile.
    #[serde(deserialize_with = "units::duration")]
    pub compile_timeout: Duration,
    /// The memory compiling one plugin may take.
    #[serde(deserialize_with = "units::size")]
    pub compile_memory: u64,
    /// The disk space compiled components no loaded plugin uses may keep
    /// in `data_dir/cache`.
    #[serde(deserialize_with = "units::size")]
    pub compile_cache: u64,
}

/// A listen address: numeric, since a node binds before anything resolves
/// names, and a host name would hide which interface it listens on.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        let port = text.trim().rsplit_once(':').and_then(|(_, port)| port.parse::<u64>().ok());
        let why = match port {
            Some(port) if port > u64::from(u16::MAX) => format!("port {port} is over 65535; "),
            _ => String::new(),
        };
        format!("invalid address {text:?}: {why}use a numeric IP:PORT such as \"127.0.0.1:7700\" or \"0.0.0.0:7700\" (host names are not resolved; port 0 picks a free port)")
    })
}

fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parse_addr(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            id: None,
            cluster: "local".into(),
            listen: addr("127.0.0.1:7700"),
            admin: addr("127.0.0.1:7701"),
            seeds: Vec::new(),
            advertise: None,
            plugins: None,
            watch_plugins: true,
            resources: Vec::new(),
            data_dir: PathBuf::from("data"),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Default for RoutingSection {
    fn default() -> Self {
        Self {
            max_hops: 8,
            announce_interval: Duration::from_secs(1),
            route_ttl: Duration::from_secs(10),
            transit: false,
            tags: Vec::new(),
            neighbours: BTreeMap::new(),
            security: RoutingSecurity::default(),
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(5),
            memory: 64 << 20,
            fuel: 0,
            max_concurrency: 256,
            max_warm_instances: 64,
            max_frame: 16 << 20,
            max_result: 16 << 20,
            max_plugin: 64 << 20,
            max_in_flight_per_connection: 1024,
            max_request_memory: 1 << 30,
            max_commands: 1024,
            max_connections: 10_000,
            write_timeout: Duration::from_secs(30),
            compile_timeout: CompileLimits::default().timeout,
            compile_memory: CompileLimits::default().memory_bytes,
            compile_cache: RuntimeConfig::default().cache_max_bytes,
        }
    }
}

/// Values from flags or `WEFT_*` variables; each wins over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub id: Option<String>,
    pub cluster: Option<String>,
    pub listen: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub seeds: Option<Vec<String>>,
    pub plugins: Option<PathBuf>,
    pub resources: Option<Vec<String>>,
    pub data_dir: Option<PathBuf>,
    pub advertise: Option<String>,
    /// Any other key (`--set`, `WEFT_SECTION__KEY`), in the order given:
    /// a later one wins, and the named overrides above win over these.
    pub settings: Vec<Setting>,
}

impl Overrides {
    /// The config keys these set, each with where it was set, as problems
    /// name them.
    fn keys(&self) -> Vec<(String, String)> {
        let named = [
            ("node.id", self.id.is_some()),
            ("node.cluster", self.cluster.is_some()),
            ("node.listen", self.listen.is_some()),
            ("node.admin", self.admin.is_some()),
            ("node.seeds", self.seeds.is_some()),
            ("node.plugins", self.plugins.is_some()),
            ("node.resources", self.resources.is_some()),
            ("node.data_dir", self.data_dir.is_some()),
            ("node.advertise", self.advertise.is_some()),
        ];
        let named = named
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(key, _)| (key.to_owned(), "a flag or WEFT_* variable".into()));
        let set = self.effective_settings().map(|s| (s.key.clone(), s.source.clone()));
        named.chain(set).collect()
    }

    /// The settings that count: the last of each key.
    fn effective_settings(&self) -> impl Iterator<Item = &Setting> {
        let settings = &self.settings;
        settings
            .iter()
            .enumerate()
            .filter(|(i, s)| !settings[i + 1..].iter().any(|later| later.key == s.key))
            .map(|(_, s)| s)
    }

    fn sets(&self, key: &str) -> bool {
        self.settings.iter().any(|s| s.key == key)
    }
}

/// One key set over the file by `--set KEY=VALUE` or a `WEFT_SECTION__KEY`
/// variable, so that every key of the file can come from the command line
/// or the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// The key's dotted path: `limits.deadline`.
    pub key: String,
    /// The value: TOML where it reads as TOML (`4`, `true`, `["a"]`,
    /// `"quoted"`), else the text as a string (`10s`, `alpha`).
    pub value: String,
    /// `--set` or the variable's name, for problems.
    pub source: String,
}

impl Setting {
    /// `KEY=VALUE` as `--set` takes it.
    pub fn from_flag(arg: &str) -> Result<Setting, String> {
        let (key, value) =
            arg.split_once('=').ok_or_else(|| format!("{arg:?} is not KEY=VALUE (such as limits.deadline=10s)"))?;
        Ok(Setting { key: key.trim().to_owned(), value: value.trim().to_owned(), source: "--set".into() })
    }

    /// The `WEFT_*` variables whose names hold `__`, which separates
    /// sections from keys: `WEFT_LIMITS__MAX_RESULT` sets
    /// `limits.max_result`. Names are taken in lowercase. A value that is
    /// not UTF-8 is refused, not mended: a token with one byte replaced
    /// would never match.
    pub fn from_env(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Result<Vec<Setting>, String> {
        let mut settings = Vec::new();
        for (name, value) in vars {
            let Some(name) = name.to_str() else { continue };
            let Some(path) = name.strip_prefix("WEFT_").filter(|rest| rest.contains("__")) else { continue };
            let value = value.into_string().map_err(|_| format!("{name}: its value is not UTF-8 text"))?;
            let key = path.to_lowercase().replace("__", ".");
            settings.push(Setting { key, value: value.trim().to_owned(), source: name.to_owned() });
        }
        // The environment has no order; a stable one keeps problems stable.
        settings.sort_by(|a, b| a.source.cmp(&b.source));
        Ok(settings)
    }

    /// Sets this key in `doc` (`file`, with the settings before it), or
    /// says what is wrong with it: a path that names no key, or a value its
    /// key cannot take. The value is taken as TOML where it reads as TOML
    /// and the key takes that (`4`, `true`, `["a"]`), else as a string
    /// (`10s`, and `123` for `node.id`).
    fn apply(&self, doc: &mut toml_edit::DocumentMut) -> Result<(), Vec<String>> {
        let said =
            |problems: Vec<String>| problems.into_iter().map(|p| format!("{p} (set by {})", self.source)).collect();
        let typed = self.value.parse::<toml_edit::Value>().ok();
        let text = typed.as_ref().is_none_or(|v| !v.is_str()).then(|| self.value.as_str().into());
        let mut first = None;
        for value in typed.into_iter().chain(text) {
            let mut tried = doc.clone();
            self.insert(&mut tried, value).map_err(|e| said(vec![format!("{}: {e}", self.key)]))?;
            let problems = self.problems(&tried.to_string());
            if problems.is_empty() {
                *doc = tried;
                return Ok(());
            }
            first.get_or_insert(problems);
        }
        Err(said(first.unwrap_or_default()))
    }

    /// Unknown keys and values of the wrong kind in `text`: the file,
    /// which parsed alone, with this setting in it.
    fn problems(&self, text: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let parsed: Result<Config, toml::de::Error> = toml::Deserializer::parse(text)
            .and_then(|de| serde_ignored::deserialize(de, |path| problems.push(format!("unknown key `{path}`"))));
        if let Err(e) = parsed {
            problems.push(format!("{}: {}", self.key, e.message().trim()));
        }
        problems
    }

    /// Puts `value` at this key's path in `doc`, making the sections it
    /// names where needed.
    fn insert(&self, doc: &mut toml_edit::DocumentMut, value: toml_edit::Value) -> Result<(), String> {
        // A TOML dotted key, so that a name holding a '.' can be quoted.
        let keys = toml_edit::Key::parse(&self.key).unwrap_or_default();
        let segments: Vec<&str> = keys.iter().map(toml_edit::Key::get).collect();
        let Some((last, sections)) = segments.split_last() else {
            return Err("not a key path: sections and key joined by '.' (such as limits.deadline; quote a name that holds a '.')".into());
        };
        if sections.is_empty() {
            return Err("a section or unknown, not a key: name a key in a section (such as limits.deadline)".into());
        }
        let mut table: &mut dyn toml_edit::TableLike = doc.as_table_mut();
        for (i, section) in sections.iter().enumerate() {
            let path = segments[..=i].join(".");
            let item = table.entry(section).or_insert_with(|| {
                let mut t = toml_edit::Table::new();
                t.set_implicit(true);
                toml_edit::Item::Table(t)
            });
            if item.is_array_of_tables() {
                return Err(format!("{path} is a list of tables ([[{path}]]): set it whole, as {path}=[{{...}}, ...]"));
            }
            table = item.as_table_like_mut().ok_or_else(|| format!("{path} is a value, not a section"))?;
        }
        table.insert(last, toml_edit::Item::Value(value));
        Ok(())
    }
}

/// Every problem found in a config file, each with its key path and line.
#[derive(Debug, thiserror::Error)]
#[error("invalid config {file}:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<String>,
}

impl Config {
    /// Reads a config file; `None` gives the embedded default.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let overridden = overrides.keys();
        let file = match path {
            None => "(flags and WEFT_* variables over the defaults)".to_owned(),
            Some(p) if overridden.is_empty() => p.display().to_string(),
            Some(p) => format!("{} (with flags and WEFT_* variables over it)", p.display()),
        };
        // The file's text, so that problems can name their line.
        let text = match path {
            None => String::new(),
            Some(p) => std::fs::read_to_string(p).map_err(|e| ConfigError {
                file: p.display().to_string(),
                problems: vec![format!("cannot read the file: {e}")],
            })?,
        };
        let mut config = Config::parse(&file, &text)?;
        if !overrides.settings.is_empty() {
            // The file is checked alone first, so that its problems name
            // their lines; then each setting over it, so that each problem
            // names the setting that caused it.
            let fail = |problems| ConfigError { file: file.clone(), problems };
            let mut doc: toml_edit::DocumentMut =
                text.parse().map_err(|e: toml_edit::TomlError| fail(vec![e.to_string().trim().to_owned()]))?;
            let mut problems = Vec::new();
            for setting in overrides.effective_settings() {
                if let Err(mut more) = setting.apply(&mut doc) {
                    problems.append(&mut more);
                }
            }
            if !problems.is_empty() {
                return Err(fail(problems));
            }
            config = toml::from_str(&doc.to_string()).map_err(|e| fail(vec![e.message().trim().to_owned()]))?;
        }
        if let Some(p) = path {
            // Relative paths in a file are relative to the file; those set
            // by flags and variables, to the working directory.
            let base = p.parent().unwrap_or(Path::new("."));
            let of_file = |key: &str| !overrides.sets(key);
            if of_file("node.plugins") {
                config.node.plugins = config.node.plugins.map(|d| base.join(d));
            }
            if of_file("node.data_dir") {
                config.node.data_dir = base.join(&config.node.data_dir);
            }
            let tls = &mut config.tls;
            for (key, path) in [("tls.cert", &mut tls.cert), ("tls.key", &mut tls.key), ("tls.ca", &mut tls.ca)] {
                if of_file(key) {
                    *path = path.take().map(|p| base.join(p));
                }
            }
            let key = &mut config.routing.security.signing_key;
            if of_file("routing.security.signing_key") && !key.is_empty() {
                *key = base.join(&*key).display().to_string();
            }
        }
        config.apply(overrides);
        config.source = path.map(Path::to_owned);
        config.overrides = overrides.clone();
        config.validate().map_err(|problems| {
            // Say which problems came from a flag or variable, not the file.
            let set_by = |p: &str| {
                // The key itself, one under it, the section it is in, or
                // the key named in the problem of another it bears on.
                let by_key = |(key, _): &&(String, String)| {
                    let named = p.match_indices(key.as_str()).any(|(at, _)| {
                        let before = p[..at].chars().next_back();
                        let after = p[at + key.len()..].chars().next();
                        before.is_none_or(|c| c == ' ') && after.is_none_or(|c| [':', ' ', '.', '[', ','].contains(&c))
                    });
                    let section = p
                        .split_once(':')
                        .is_some_and(|(of, _)| key.strip_prefix(of).is_some_and(|rest| rest.starts_with('.')));
                    named || section
                };
                overridden.iter().find(by_key).map(|(_, source)| source)
            };
            let problems = problems
                .into_iter()
                .map(|p| match set_by(&p) {
                    Some(source) => format!("{p} (set by {source})"),
                    None if path.is_some() => with_line(&text, p),
                    None => p,
                })
                .collect();
            ConfigError { file, problems }
        })?;
        Ok(config)
    }

    /// Parses TOML text and reports every unknown key and every bad value,
    /// each with its line, and what validation finds in the rest. serde
    /// stops at the first bad value, so after one is found its lines are
    /// blanked (line numbers stay put) and the text is parsed again, until
    /// it parses or nothing more can be blanked.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError { file: file.to_owned(), problems };
        let mut text = text.to_owned();
        let mut bad_values = Vec::new();
        for _ in 0..32 {
            let de = toml::Deserializer::parse(&text).map_err(|e| fail(vec![e.to_string().trim().to_owned()]))?;
            let mut unknown = Vec::new();
            let parsed: Result<Config, toml::de::Error> =
                serde_ignored::deserialize(de, |path| unknown.push(path.to_string()));
            match parsed {
                Err(e) => {
                    let span = e.span();
                    let at = span.clone().and_then(|s| Some((key_at(&text, s.start)?, line_at(&text, s.start))));
                    bad_values.push(match at {
                        Some((key, line)) => format!("{key}: {} (line {line})", e.message().trim()),
                        None => e.to_string().trim().replace('\n', "\n    "),
                    });
                    if span.is_some_and(|span| blank_lines(&mut text, span)) {
                        continue;
                    }
                }
                Ok(config) if unknown.is_empty() && bad_values.is_empty() => return Ok(config),
                Ok(config) => {
                    let problems = config.validate().err().unwrap_or_default();
                    bad_values.extend(problems.into_iter().map(|p| with_line(&text, p)));
                }
            }
            let mut problems: Vec<String> = unknown
                .iter()
                .map(|key| match line_of(&text, key) {
                    Some(line) => format!("unknown key `{key}` at line {line}"),
                    None => format!("unknown key `{key}`"),
                })
                .collect();
            problems.append(&mut bad_values);
            return Err(fail(problems));
        }
        Err(fail(bad_values))
    }

    fn apply(&mut self, o: &Overrides) {
        let n = &mut self.node;
        if let Some(v) = &o.id {
            n.id = Some(v.clone());
        }
        if let Some(v) = &o.cluster {
            n.cluster = v.clone();
        }
        if let Some(v) = o.listen {
            n.listen = v;
        }
        if let Some(v) = o.admin {
            n.admin = v;
        }
        if let Some(v) = &o.seeds {
            n.seeds = v.clone();
        }
        if let Some(v) = &o.plugins {
            n.plugins = Some(v.clone());
        }
        if let Some(v) = &o.resources {
            n.resources = v.clone();
        }
        if let Some(v) = &o.data_dir {
            n.data_dir = v.clone();
        }
        if let Some(v) = &o.advertise {
            n.advertise = Some(v.clone());
        }
    }

    fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let mut problems_later = Vec::new();
        let mut check = |ok: bool, msg: &str| {
            if !ok {
                problems.push(msg.to_owned());
            }
        };
        check(is_valid_name(&self.node.cluster), &format!("node.cluster {:?}: {NAME_RULE}", self.node.cluster));
        let id = self.node.id.as_deref().unwrap_or_default();
        check(self.node.id.as_deref().is_none_or(is_valid_name), &format!("node.id {id:?}: {NAME_RULE}"));
        let (listen, admin) = (self.node.listen, self.node.admin);
        // An unspecified address (0.0.0.0, ::) takes the port on every address.
        let overlap = listen.ip() == admin.ip() || listen.ip().is_unspecified() || admin.ip().is_unspecified();
        check(
            !(overlap && listen.port() == admin.port() && listen.port() != 0),
            "node.admin: the same port as node.listen on an address they share (0.0.0.0 and :: cover every address); the admin API needs a port of its own",
        );
        check(self.limits.max_concurrency > 0, "limits.max_concurrency: must be at least 1");
        check(self.limits.memory >= 1 << 20, "limits.memory: must be at least 1MiB");
        check(self.limits.deadline >= Duration::from_millis(1), "limits.deadline: must be at least 1ms");
        check(self.limits.deadline <= MAX_DEADLINE, "limits.deadline: must be at most 24h");
        check(self.limits.max_frame >= 1024, "limits.max_frame: must be at least 1KiB");
        check(self.limits.max_in_flight_per_connection > 0, "limits.max_in_flight_per_connection: must be at least 1");
        check(self.limits.max_request_memory >= 1 << 20, "limits.max_request_memory: must be at least 1MiB");
        check(!self.limits.write_timeout.is_zero(), "limits.write_timeout: must be more than 0");
        check(self.limits.max_connections >= 16, "limits.max_connections: must be at least 16");
        check(self.routing.max_hops > 0, "routing.max_hops: must be at least 1");
        check(self.routing.announce_interval > Duration::ZERO, "routing.announce_interval: must be more than 0");
        check(
            self.routing.route_ttl > self.routing.announce_interval * 2,
            "routing.route_ttl: must be more than twice routing.announce_interval, or routes expire between announcements",
        );
        check(self.limits.max_commands > 0, "limits.max_commands: must be at least 1");
        check(self.limits.max_result >= 1024, "limits.max_result: must be at least 1KiB");
        check(self.limits.max_plugin >= 1024, "limits.max_plugin: must be at least 1KiB");
        check(
            self.limits.compile_timeout >= Duration::from_millis(100),
            "limits.compile_timeout: must be at least 100ms",
        );
        check(self.limits.compile_memory >= 64 << 20, "limits.compile_memory: must be at least 64MiB");
        let sec = &self.routing.security;
        check(
            !sec.require_signatures || !sec.signing_key.is_empty(),
            "routing.security.signing_key: required when require_signatures = true (make one with `weft keygen --out FILE`)",
        );
        check(
            !sec.authenticate_links || !sec.signing_key.is_empty(),
            "routing.security.signing_key: required when authenticate_links = true (every node of a cluster holds the cluster's key; make one with `weft keygen --out FILE`)",
        );
        for (cluster, keys) in &sec.trusted_keys {
            for key in keys {
                if let Err(e) = crate::signing::parse_public(key) {
                    problems_later.push(format!("routing.security.trusted_keys.{cluster}: {e}"));
                }
            }
        }
        let c = &self.cluster;
        check(c.failure_timeout >= Duration::from_millis(100), "cluster.failure_timeout: must be at least 100ms");
        check(c.beat_interval > Duration::ZERO, "cluster.beat_interval: must be more than 0");
        check(
            c.catalog_ttl > c.beat_interval * 2,
            "cluster.catalog_ttl: must be more than twice cluster.beat_interval, or entries expire between beats",
        );
        check(c.max_members >= 1, "cluster.max_members: must be at least 1");
        check(c.max_catalog_entries_per_node >= 1, "cluster.max_catalog_entries_per_node: must be at least 1");
        check(
            self.node.advertise.as_deref().is_none_or(ws_url_ok),
            "node.advertise: must be a ws:// or wss:// URL with a host, e.g. ws://10.0.0.5:7700",
        );
        for seed in &self.node.seeds {
            check(ws_url_ok(seed), &format!("node.seeds: {seed:?} is not a ws:// or wss:// URL with a host"));
        }
        // With [tls] every link is encrypted: a plain address would be dialled
        // (or handed to others) in the clear.
        if self.tls.cert.is_some() {
            let plain = self
                .node
                .seeds
                .iter()
                .map(|s| ("node.seeds", s))
                .chain(self.node.advertise.iter().map(|a| ("node.advertise", a)));
            for (key, url) in plain.filter(|(_, url)| url.starts_with("ws://")) {
                check(
                    false,
                    &format!(
                        "{key}: {url:?} is plain ws://, but this node has [tls] and links only over wss://; write wss://{}",
                        &url[5..]
                    ),
                );
            }
        }
        for label in &self.node.resources {
            check(is_valid_name(label), &format!("node.resources: {label:?} is not a label; {NAME_RULE}"));
        }
        let paths = [
            ("tls.cert", self.tls.cert.as_deref()),
            ("tls.key", self.tls.key.as_deref()),
            ("tls.ca", self.tls.ca.as_deref()),
            ("node.plugins", self.node.plugins.as_deref()),
            ("node.data_dir", Some(self.node.data_dir.as_path())),
        ];
        for (key, _) in paths.iter().filter(|(_, path)| path.is_some_and(|p| p.as_os_str().is_empty())) {
            check(false, &format!("{key}: is empty; name a file or folder, or leave the key out"));
        }
        check(
            self.tls.cert.is_some() == self.tls.key.is_some(),
            "tls: give both cert and key (the node's certificate chain and its private key, PEM files), or neither",
        );
        problems.extend(self.tenant_problems());
        problems.extend(self.federation_problems());
        problems.extend(self.routing_problems());
        problems.append(&mut problems_later);
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    fn tenant_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.auth.required && self.tenants.values().all(|t| t.tokens.is_empty()) {
            problems
                .push("auth.required: no [tenants.NAME] with tokens is configured, so no request could be made".into());
        }
        let mut owners: BTreeMap<[u8; 32], String> = BTreeMap::new();
        for (i, token) in self.auth.operator_tokens.iter().enumerate() {
            match crate::tenants::token_digest(token) {
                Err(why) => problems.push(format!("auth.operator_tokens[{i}]: {why}")),
                Ok(digest) => {
                    owners.insert(digest, "the operators (auth.operator_tokens)".into());
                }
            }
        }
        for (name, tenant) in &self.tenants {
            if !is_valid_name(name) {
                problems.push(format!("tenants.{name}: {NAME_RULE} in tenant names"));
            }
            problems.extend(tenant.limits.problems().into_iter().map(|p| format!("tenants.{name}.limits.{p}")));
            for (i, token) in tenant.tokens.iter().enumerate() {
                match crate::tenants::token_digest(token) {
                    Err(why) => problems.push(format!("tenants.{name}.tokens[{i}]: {why}")),
                    Ok(digest) => {
                        if let Some(other) = owners.insert(digest, format!("tenant {name}")) {
                            problems.push(format!(
                                "tenants.{name}.tokens[{i}]: the same token is given to {other}; a token names one tenant"
                            ));
                        }
                    }
                }
            }
        }
        problems
    }

    /// Names in `[federation]` that could never match, and bridges that
    /// contradict each other. (A cluster both bridged or allowed and
    /// blocked, or bridges under `mode = "strict"`, are not errors: blocking
    /// and strict mode are how an operator cuts federation off for a while.)
    fn federation_problems(&self) -> Vec<String> {
        let f = &self.federation;
        let mut problems = Vec::new();
        for (key, list) in [
            ("allowed_clusters", &f.allowed_clusters),
            ("blocked_clusters", &f.blocked_clusters),
            ("trusted_transit", &f.trusted_transit),
        ] {
            for c in list.iter().filter(|c| !is_valid_name(c)) {
                problems.push(format!("federation.{key}: {c:?} is not a cluster name; {NAME_RULE}"));
            }
        }
        for (i, b) in f.bridges.iter().enumerate() {
            let key = format!("federation.bridges[{i}]");
            if !is_valid_name(&b.cluster) {
                problems.push(format!("{key}.cluster: {:?} is not a cluster name; {NAME_RULE}", b.cluster));
            } else if b.cluster == self.node.cluster {
                problems.push(format!(
                    "{key}.cluster: {} is this node's own cluster; a bridge links to another one",
                    b.cluster
                ));
            } else if f.bridges[..i].iter().any(|earlier| earlier.cluster == b.cluster) {
                problems
                    .push(format!("{key}.cluster: a second bridge to {}; list all its nodes in one bridge", b.cluster));
            }
            for n in b.nodes.iter().filter(|n| !is_valid_name(n)) {
                problems.push(format!("{key}.nodes: {n:?} is not a node id; {NAME_RULE}"));
            }
        }
        for (key, list) in [("allow", &f.functions.allow), ("block", &f.functions.block)] {
            for name in list.iter().filter(|name| !is_function_entry(name)) {
                problems.push(format!(
                    "federation.functions.{key}: {name:?} is not FUNCTION or PLUGIN/FUNCTION (a WIT function name: words joined by '-', each all lowercase or all uppercase)"
                ));
            }
        }
        problems
    }

    /// Settings that are allowed but probably not what was meant; the node
    /// logs each at its start.
    pub fn warnings(&self) -> Vec<String> {
        let f = &self.federation;
        let mut warnings = Vec::new();
        if self.auth.required && !self.routing.security.authenticate_links {
            warnings.push("auth.required is on but routing.security.authenticate_links is off: anything that can reach node.listen can join as a member and pass calls without a token; give the cluster a key (weft keygen) and turn authenticate_links on".to_owned());
        }
        if matches!(f.mode, FederationMode::Strict) && !(f.bridges.is_empty() && f.allowed_clusters.is_empty()) {
            warnings.push(
                "federation.mode is strict: its bridges and allowed_clusters are not used until the mode is explicit"
                    .to_owned(),
            );
        }
        for c in f.allowed_clusters.iter().chain(f.bridges.iter().map(|b| &b.cluster)) {
            if f.blocked_clusters.contains(c) {
                warnings
                    .push(format!("federation: cluster {c} is both allowed (or bridged) and blocked; blocked wins"));
            }
        }
        if f.blocked_clusters.contains(&self.node.cluster) {
            warnings.push(format!(
                "federation.blocked_clusters lists this node's own cluster {}, which has no effect: members are never refused by policy",
                self.node.cluster
            ));
        }
        if self.node.advertise.as_deref().is_some_and(|a| dialled_host(a).is_none()) {
            warnings.push(
                "node.advertise names no host other nodes can dial (0.0.0.0 or ::); give this machine's address"
                    .to_owned(),
            );
        }
        // With keys required, a neighbour with none listed can never link
        // (authenticate_links) or have its routes taken (require_signatures).
        let sec = &self.routing.security;
        if sec.authenticate_links || sec.require_signatures {
            let what = if sec.authenticate_links { "link" } else { "route update" };
            let neighbours: BTreeSet<&String> =
                f.allowed_clusters.iter().chain(f.bridges.iter().map(|b| &b.cluster)).collect();
            for c in neighbours.into_iter().filter(|c| sec.trusted_keys.get(*c).is_none_or(Vec::is_empty)) {
                warnings.push(format!(
                    "routing.security.trusted_keys lists no key for cluster {c}, which federation allows or bridges: every {what} from it will be refused"
                ));
            }
        }
        warnings
    }

    /// Names in `[routing]` that no cluster or tag could have.
    fn routing_problems(&self) -> Vec<String> {
        let r = &self.routing;
        let mut problems = Vec::new();
        if r.tags.len() > weft_fabric::routes::MAX_TAGS {
            problems.push(format!("routing.tags: at most {} tags (routes carry them)", weft_fabric::routes::MAX_TAGS));
        }
        let mut names = |key: String, what: &str, list: &[String]| {
            for name in list.iter().filter(|n| !is_valid_name(n)) {
                problems.push(format!("{key}: {name:?} is not a {what}; {NAME_RULE}"));
            }
        };
        names("routing.tags".into(), "tag", &r.tags);
        for (key, clusters) in [
            ("routing.neighbours", r.neighbours.keys().collect::<Vec<_>>()),
            ("routing.security.trusted_keys", r.security.trusted_keys.keys().collect()),
        ] {
            for cluster in clusters {
                names(format!("{key}.{cluster}"), "cluster name", std::slice::from_ref(cluster));
            }
        }
        for (cluster, n) in &r.neighbours {
            let key = format!("routing.neighbours.{cluster}");
            names(format!("{key}.deny_on_path"), "cluster name", &n.deny_on_path);
            names(format!("{key}.require_tags"), "tag", &n.require_tags);
            names(format!("{key}.export"), "cluster name", n.export.as_deref().unwrap_or_default());
        }
        for (cluster, n) in &r.neighbours {
            if n.max_hops == Some(0) {
                problems.push(format!("routing.neighbours.{cluster}.max_hops: must be at least 1"));
            }
        }
        problems
    }

    /// The sections a running node reads only at its start, each as text
    /// to compare: a reload that finds them changed says they need a restart.
    pub fn restart_only(&self) -> Vec<(&'static str, String)> {
        vec![
            ("node", format!("{:?}", self.node)),
            ("routing", format!("{:?}", self.routing)),
            ("limits", format!("{:?}", self.limits)),
            ("cluster", format!("{:?}", self.cluster)),
        ]
    }

    /// The sandbox limits of each tenant's plugins (each within `[limits]`).
    pub fn tenant_limits(&self) -> BTreeMap<String, weft_runtime::Limits> {
        let node = self.sandbox_limits();
        self.tenants.iter().map(|(name, t)| (name.clone(), node.lowered_by(&t.limits))).collect()
    }

    /// `[limits]` as the runtime takes them.
    pub fn sandbox_limits(&self) -> weft_runtime::Limits {
        weft_runtime::Limits {
            deadline: self.limits.deadline,
            memory_bytes: self.limits.memory,
            fuel: self.limits.fuel,
        }
    }

    /// The route table's settings from `[routing]`.
    pub fn route_config(&self) -> weft_fabric::RouteConfig {
        use weft_proto::ClusterId;
        let r = &self.routing;
        let clusters = |v: &[String]| v.iter().map(|c| ClusterId::new(c.clone())).collect::<Vec<_>>();
        weft_fabric::RouteConfig {
            max_hops: r.max_hops,
            route_ttl: r.route_ttl,
            tags: r.tags.clone(),
            neighbours: r
                .neighbours
                .iter()
                .map(|(c, n)| {
                    let rules = weft_fabric::NeighbourRules {
                        max_hops: n.max_hops,
                        deny_on_path: clusters(&n.deny_on_path),
                        require_tags: n.require_tags.clone(),
                        export: n.export.as_deref().map(clusters),
                    };
                    (ClusterId::new(c.clone()), rules)
                })
                .collect(),
            ..weft_fabric::RouteConfig::default()
        }
    }

    /// The route-signing trust of `[routing.security]` (keys were checked by `load`).
    pub fn trust(&self) -> crate::signing::Trust {
        let sec = &self.routing.security;
        crate::signing::Trust {
            require: sec.require_signatures,
            keys: sec
                .trusted_keys
                .iter()
                .map(|(c, keys)| {
                    let keys = keys.iter().filter_map(|k| crate::signing::parse_public(k).ok()).collect();
                    (weft_proto::ClusterId::new(c.clone()), keys)
                })
                .collect(),
        }
    }

    /// The federation section as the policy module takes it.
    pub fn policy(&self) -> weft_fabric::Policy {
        use weft_fabric::policy::{Bridge as PolicyBridge, Mode};
        use weft_proto::{ClusterId, NodeId};
        let f = &self.federation;
        let clusters = |v: &[String]| v.iter().map(|c| ClusterId::new(c.clone())).collect();
        weft_fabric::Policy {
            cluster: ClusterId::new(self.node.cluster.clone()),
            mode: match f.mode {
                FederationMode::Strict => Mode::Strict,
                FederationMode::Explicit => Mode::Explicit,
                FederationMode::Permissive => Mode::Permissive,
            },
            allowed_clusters: clusters(&f.allowed_clusters),
            blocked_clusters: clusters(&f.blocked_clusters),
            bridges: f
                .bridges
                .iter()
                .map(|b| PolicyBridge {
                    cluster: ClusterId::new(b.cluster.clone()),
                    nodes: b.nodes.iter().map(|n| NodeId::new(n.clone())).collect(),
                })
                .collect(),
            allow_functions: f.functions.allow.clone(),
            block_functions: f.functions.block.clone(),
            trusted_transit: clusters(&f.trusted_transit),
        }
    }

    /// The node id: configured, or derived from the host name and listen port.
    pub fn node_id(&self, listen_port: u16) -> String {
        self.node.id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
                .unwrap_or_default();
            default_id(&host, listen_port)
        })
    }
}

/// `HOST-PORT`, kept to the name rules whatever the host name holds: other
/// characters become '-', and the host is cut so the id fits 128 bytes.
fn default_id(host: &str, port: u16) -> String {
    let host: String =
        host.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).take(120).collect();
    let host = if host.is_empty() { "node" } else { &host };
    format!("{host}-{port}")
}

/// A ws:// or wss:// URL with a host (config, and a peer's `hello`).
impl Config {
    /// The host other nodes dial this one at: `node.advertise`'s, else the
    /// listen address's.
    pub(crate) fn dialled_host(&self) -> Option<String> {
        match &self.node.advertise {
            Some(url) => dialled_host(url),
            None => dialled_host(&format!("ws://{}", self.node.listen)),
        }
    }
}

/// The host of a `ws://` or `wss://` URL, unless it is an unspecified
/// address (0.0.0.0 or ::), which names no host to check a certificate for.
pub(crate) fn dialled_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    let unspecified = host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified());
    (!host.is_empty() && !unspecified).then(|| host.to_owned())
}

pub(crate) fn ws_url_ok(url: &str) -> bool {
    let rest = url.strip_prefix("ws://").or_else(|| url.strip_prefix("wss://"));
    rest.is_some_and(|rest| !rest.starts_with([':', '/']) && !rest.is_empty())
}

/// A validation problem (`limits.memory: must be ...`) with the line of its
/// key, where the file sets it; `bridges[0]` is looked up as `bridges.0`.
fn with_line(text: &str, problem: String) -> String {
    // `tenants.bad name: ...` (a key may hold spaces), `node.id "x y": ...`.
    let key = problem.split_once(": ").map_or("", |(key, _)| key);
    let key = key.split(" \"").next().unwrap_or_default();
    let path = key.replace('[', ".").replace(']', "");
    match line_of(text, &path) {
        Some(line) if key.contains('.') => format!("{problem} (line {line})"),
        _ => problem,
    }
}

/// Line (1-based) of a dotted key path such as `federation.bridges.0.clustr`;
/// the deepest part of the path that can be found gives the line.
fn line_of(text: &str, path: &str) -> Option<usize> {
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut array: Option<&toml_edit::ArrayOfTables> = None;
    let mut span = None;
    for segment in path.split('.') {
        if let Some(a) = array.take() {
            let Some(t) = segment.parse::<usize>().ok().and_then(|i| a.get(i)) else {
                break;
            };
            span = t.span().or(span);
            table = t;
            continue;
        }
        let Some((key, value)) = table.get_key_value(segment) else {
            break;
        };
        span = key.span().or(span);
        match value {
            toml_edit::Item::ArrayOfTables(a) => array = Some(a),
            other => match other.as_table_like() {
                Some(t) => table = t,
                None => break,
            },
        }
    }
    span.map(|s| line_at(text, s.start))
}

/// The dotted path of the key whose value starts at `offset`
/// (`limits.deadline`, `federation.bridges[1].cluster`).
fn key_at(text: &str, offset: usize) -> Option<String> {
    fn find(table: &dyn toml_edit::TableLike, offset: usize, path: &str) -> Option<String> {
        table.iter().find_map(|(key, item)| {
            let path = if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
            match item {
                toml_edit::Item::Value(v) if v.span().is_some_and(|s| s.contains(&offset)) => Some(path),
                toml_edit::Item::ArrayOfTables(tables) => {
                    tables.iter().enumerate().find_map(|(i, t)| find(t, offset, &format!("{path}[{i}]")))
                }
                other => find(other.as_table_like()?, offset, &path),
            }
        })
    }
    find(toml_edit::Document::parse(text).ok()?.as_table(), offset, "")
}

/// Replaces the lines covering `span` with spaces (keeping newlines, so
/// every other line keeps its number). False if there was nothing to blank.
fn blank_lines(text: &mut String, span: std::ops::Range<usize>) -> bool {
    let start = text[..span.start.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let end = text[span.end.min(text.len())..].find('\n').map_or(text.len(), |i| span.end + i);
    if text[start..end].trim().is_empty() {
        return false;
    }
    let blank: String = text[start..end].chars().map(|c| if c == '\n' { '\n' } else { ' ' }).collect();
    text.replace_range(start..end, &blank);
    true
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// `FUNCTION` or `PLUGIN/FUNCTION` with a WIT function name (words joined
/// by '-', each all lowercase or all uppercase, starting with a letter),
/// which is all a policy entry can ever match.
fn is_function_entry(entry: &str) -> bool {
    let (plugin, function) = entry.split_once('/').map_or((None, entry), |(p, f)| (Some(p), f));
    let wit_word = |w: &str| {
        let lower = w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let upper = w.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        w.starts_with(|c: char| c.is_ascii_alphabetic()) && (lower || upper)
    };
    plugin.is_none_or(is_valid_name) && function.split('-').all(wit_word)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What parsing and validating `text` finds wrong.
    fn problems(text: &str) -> Vec<String> {
        Config::parse("w.toml", text).map_or_else(|e| e.problems, |c| c.validate().err().unwrap_or_default())
    }

    #[test]
    fn the_default_id_keeps_to_the_name_rules_whatever_the_host_name() {
        assert_eq!(default_id("vm", 7700), "vm-7700");
        assert_eq!(default_id("bad host/x", 7700), "bad-host-x-7700");
        assert_eq!(default_id("", 7700), "node-7700");
        let long = default_id(&"h".repeat(300), 65535);
        assert!(is_valid_name(&long) && long.len() <= 128, "{long}");
    }

    #[test]
    fn the_spec_example_parses_with_every_key() {
        let text = r#"
[node]
id = "a1"
cluster = "alpha"
listen = "127.0.0.1:7700"
admin = "127.0.0.1:7701"
seeds = ["ws://127.0.0.1:7710"]
plugins = "plugins"
resources = ["gpu"]
data_dir = "data"

[federation]
mode = "strict"
allowed_clusters = []
blocked_clusters = []
[[federation.bridges]]
cluster = "beta"
nodes = []
[federation.functions]
allow = []
block = []
rate_limit_per_minute = 0

[routing]
max_hops = 8
announce_interval = "1s"
route_ttl = "10s"
[routing.security]
require_signatures = false
signing_key = ""
trusted_keys = {}

[limits]
deadline = "5s"
memory = "64MiB"
fuel = 0
max_concurrency = 256
"#;
        let c = Config::parse("weft.toml", text).unwrap();
        assert_eq!(c.node.id.as_deref(), Some("a1"));
        assert_eq!(c.node.cluster, "alpha");
        assert_eq!(c.federation.bridges[0].cluster, "beta");
        assert_eq!(c.limits.memory, 64 << 20);
        assert_eq!(c.routing.route_ttl, Duration::from_secs(10));
    }

    #[test]
    fn neighbour_route_rules_parse_into_the_route_config() {
        let text = "[routing]\ntags = [\"eu\"]\n[routing.neighbours.beta]\nmax_hops = 2\ndeny_on_path = [\"x\"]\nrequire_tags = [\"eu\"]\nexport = [\"gamma\"]\n";
        let c = Config::parse("w.toml", text).unwrap();
        let r = c.route_config();
        assert_eq!(r.tags, ["eu"]);
        let beta = &r.neighbours[&weft_proto::ClusterId::new("beta")];
        assert_eq!((beta.max_hops, beta.require_tags.clone()), (Some(2), vec!["eu".to_owned()]));
        assert_eq!(beta.export.as_ref().map(Vec::len), Some(1));
        let bad = "[routing]\ntags = [\"a b\"]\n[routing.neighbours.\"bad cl\"]\nmax_hops = 0\ndeny_on_path = [\"x/y\"]\n[routing.security]\ntrusted_keys = { \"c d\" = [] }\n";
        let err = problems(bad).join("\n");
        for want in [
            "routing.tags: \"a b\" is not a tag",
            "\"bad cl\" is not a cluster name",
            "\"c d\" is not a cluster name",
            "routing.neighbours.bad cl.deny_on_path: \"x/y\"",
            "routing.neighbours.bad cl.max_hops: must be at least 1",
        ] {
            assert!(err.contains(want), "{want}: {err}");
        }
        let err = Config::parse("w.toml", "[routing.neighbours.beta]\nmax_hop = 2\n").unwrap_err().to_string();
        assert!(err.contains("routing.neighbours.beta.max_hop") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_line() {
        let text = "[node]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n\n[limits]\nmemroy = \"1MiB\"\n[[federation.bridges]]\ncluster = \"b\"\nnodez = []\n";
        let err = Config::parse("x.toml", text).unwrap_err();
        let all = err.to_string();
        assert!(all.contains("unknown key `node.lisen` at line 3"), "{all}");
        assert!(all.contains("unknown key `limits.memroy` at line 6"), "{all}");
        assert!(all.contains("nodez") && all.contains("line 9"), "{all}");
    }

    #[test]
    fn values_that_fail_validation_name_the_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.toml");
        std::fs::write(&path, "[node]\ncluster = \"c\"\n\n[limits]\nmemory = \"512KiB\"\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("limits.memory: must be at least 1MiB (line 5)"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        let err = Config::parse("x.toml", "[limits]\ndeadline = \"soon\"\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("500ms"), "{err}");
        let err = Config::parse("x.toml", "[federation]\nmode = \"open\"\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("strict"), "{err}");
        let err = Config::parse("x.toml", "[node]\nlisten = \"localhost:7700\"\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("use a numeric IP:PORT"), "{err}");
        // Several bad values and unknown keys are all reported at once.
        let err = Config::parse("x.toml", "[node]\nlisten = 5\nbogus = 1\n[limits]\nmemory = \"lots\"\n").unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
        // A value of the wrong type is named by its key, with the form expected.
        let err = Config::parse("x.toml", "[node]\n\n[limits]\ndeadline = 5\n").unwrap_err().to_string();
        let expected = "limits.deadline: invalid type: integer `5`, expected a duration such as \"500ms\", \"30s\" or \"2m\" (line 4)";
        assert!(err.contains(expected), "{err}");
        let err =
            Config::parse("x.toml", "[[federation.bridges]]\ncluster = \"b\"\n[[federation.bridges]]\ncluster = 7\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("federation.bridges[1].cluster: invalid type: integer `7`") && err.contains("(line 4)"),
            "{err}"
        );
    }

    /// Keys that need quotes (a space in a tenant's name) and the cluster
    /// names keyed in `[routing]` are found at their own lines.
    #[test]
    fn the_admin_port_may_not_share_the_listen_port_on_any_address() {
        let clash = |listen: &str, admin: &str| {
            problems(&format!("[node]\nlisten = \"{listen}\"\nadmin = \"{admin}\"\n"))
                .iter()
                .any(|p| p.starts_with("node.admin: the same port as node.listen"))
        };
        assert!(clash("127.0.0.1:7700", "127.0.0.1:7700"));
        assert!(clash("127.0.0.1:7700", "0.0.0.0:7700"), "0.0.0.0 covers 127.0.0.1");
        assert!(clash("[::]:7700", "127.0.0.1:7700"));
        assert!(!clash("127.0.0.1:7700", "127.0.0.2:7700"));
        assert!(!clash("0.0.0.0:0", "0.0.0.0:0"), "port 0 picks two ports");
    }

    #[test]
    fn problems_with_quoted_keys_name_their_own_line() {
        let text = "[tenants.good]\ntokens = []\n\n[tenants.\"bad name\"]\ntokens = []\n\n[routing]\n\n[routing.security]\ntrusted_keys = { \"g h\" = [] }\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.toml");
        std::fs::write(&path, text).unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("tenants.bad name: use 1 to 128") && err.contains("tenant names (line 4)"), "{err}");
        assert!(err.contains("routing.security.trusted_keys.g h: \"g h\" is not a cluster name"), "{err}");
        assert!(err.contains("(line 10)") && !err.contains("routing.neighbours"), "{err}");
    }

    #[test]
    fn unknown_keys_and_values_out_of_range_are_reported_together() {
        let err =
            Config::parse("x.toml", "[node]\nclustr = \"a\"\n[limits]\nmax_concurrency = 0\nmax_frame = \"1B\"\n")
                .unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
        assert!(err.problems[0].contains("node.clustr"), "{err}");
        assert!(err.problems.iter().any(|p| p.starts_with("limits.max_frame")), "{err}");
    }

    #[test]
    fn federation_names_that_could_never_match_are_errors() {
        let text = r#"
[node]
cluster = "alpha"
[federation]
mode = "explicit"
allowed_clusters = ["bad name!"]
blocked_clusters = ["gamma"]
trusted_transit = ["beta", "no/such"]
[[federation.bridges]]
cluster = "alpha"
[[federation.bridges]]
cluster = "beta"
nodes = ["b1", ""]
[[federation.bridges]]
cluster = "beta"
[federation.functions]
allow = ["echo", "math/add", "a/b/c", "", "get-URL", "word-count"]
block = ["/x", "Upper", "text/snake_case"]
"#;
        let found = problems(text);
        let expected = [
            "federation.allowed_clusters: \"bad name!\" is not a cluster name",
            "federation.trusted_transit: \"no/such\" is not a cluster name",
            "federation.bridges[0].cluster: alpha is this node's own cluster",
            "federation.bridges[1].nodes: \"\" is not a node id",
            "federation.bridges[2].cluster: a second bridge to beta",
            "federation.functions.allow: \"a/b/c\" is not FUNCTION or PLUGIN/FUNCTION",
            "federation.functions.allow: \"\" is not FUNCTION or PLUGIN/FUNCTION",
            "federation.functions.block: \"/x\" is not FUNCTION or PLUGIN/FUNCTION",
            "federation.functions.block: \"Upper\" is not FUNCTION or PLUGIN/FUNCTION (a WIT function name",
            "federation.functions.block: \"text/snake_case\" is not FUNCTION or PLUGIN/FUNCTION",
        ];
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        for (problem, start) in found.iter().zip(expected) {
            assert!(problem.starts_with(start), "{problem} (expected {start})");
        }
        // Blocking a bridged cluster, or strict mode with bridges, is how
        // federation is cut off for a while: not an error.
        let kill_switch = "[federation]\nmode = \"strict\"\nblocked_clusters = [\"beta\"]\n[[federation.bridges]]\ncluster = \"beta\"\n";
        assert_eq!(problems(kill_switch), Vec::<String>::new());
        // But the node says so when it starts.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(
            &path,
            format!("[auth]\nrequired = true\n[tenants.a]\ntokens = [\"a-token-of-twenty-chars\"]\n{kill_switch}"),
        )
        .unwrap();
        let warnings = Config::load(Some(&path), &Overrides::default()).unwrap().warnings();
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert!(warnings[0].starts_with("auth.required is on but routing.security.authenticate_links is off"));
        assert!(warnings[1].contains("mode is strict"));
        assert!(warnings[2].contains("cluster beta is both allowed (or bridged) and blocked"));

        // Settings that load but cannot work as meant.
        std::fs::write(
            &path,
            "[node]\ncluster = \"alpha\"\nadvertise = \"ws://0.0.0.0:7700\"\n[federation]\nmode = \"explicit\"\nallowed_clusters = [\"gamma\"]\nblocked_clusters = [\"alpha\"]\n[[federation.bridges]]\ncluster = \"beta\"\n[routing.security]\nrequire_signatures = true\nsigning_key = \"k\"\ntrusted_keys = { gamma = [] }\n",
        )
        .unwrap();
        let warnings = Config::load(Some(&path), &Overrides::default()).unwrap().warnings();
        let expected = [
            "federation.blocked_clusters lists this node's own cluster alpha",
            "node.advertise names no host",
            "trusted_keys lists no key for cluster beta, which federation allows or bridges: every route update from it will be refused",
            "trusted_keys lists no key for cluster gamma",
        ];
        assert_eq!(warnings.len(), expected.len(), "{warnings:#?}");
        for (warning, expected) in warnings.iter().zip(expected) {
            assert!(warning.contains(expected), "{warning}");
        }
    }

    #[test]
    fn the_dialled_host_is_the_one_a_certificate_must_name() {
        assert_eq!(dialled_host("wss://a1.internal:7700/x").as_deref(), Some("a1.internal"));
        assert_eq!(dialled_host("wss://[::1]:7700").as_deref(), Some("::1"));
        assert_eq!(dialled_host("wss://10.0.0.5").as_deref(), Some("10.0.0.5"));
        assert_eq!(dialled_host("wss://0.0.0.0:7700"), None, "0.0.0.0 names no host");
        assert_eq!(dialled_host("wss://[::]:7700"), None);
    }

    #[test]
    fn seeds_and_advertised_urls_need_a_host_and_resources_a_name() {
        let found = problems(
            "[node]\nadvertise = \"ws://\"\nseeds = [\"wss://:7700\", \"ws://10.0.0.1:7700\"]\nresources = [\"gpu\", \"\"]\n",
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("node.advertise"), "{found:?}");
        assert!(found[1].contains("\"wss://:7700\""), "{found:?}");
        assert!(found[2].starts_with("node.resources: \"\""), "{found:?}");
        let found = problems("[node]\nplugins = \"\"\n[tls]\ncert = \"\"\nkey = \"k.pem\"\n");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().any(|p| p.starts_with("tls.cert: is empty; name a file")), "{found:?}");
        assert!(found.iter().any(|p| p.starts_with("node.plugins: is empty")), "{found:?}");
        // With [tls], plain addresses would carry the cluster's traffic in the clear.
        let tls = "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
        let found = problems(&format!(
            "[node]\nadvertise = \"ws://10.0.0.1:7700\"\nseeds = [\"wss://10.0.0.2:7700\", \"ws://10.0.0.3:7700\"]\n{tls}"
        ));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("node.seeds: \"ws://10.0.0.3:7700\" is plain ws://, but this node has [tls]")
                    && p.ends_with("write wss://10.0.0.3:7700")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.starts_with("node.advertise: \"ws://10.0.0.1:7700\" is plain ws://")),
            "{found:?}"
        );
    }

    #[test]
    fn tenant_and_link_settings_are_checked_before_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        let problems = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(Some(&path), &Overrides::default()).map_or_else(|e| e.problems, |_| Vec::new())
        };
        let found = problems(
            "[auth]\nrequired = true\n[tenants.owner]\nmax_in_flight = 1\n[routing.security]\nauthenticate_links = true\n",
        );
        assert!(found.iter().any(|p| p.starts_with("auth.required")), "{found:?}");
        assert!(found.iter().any(|p| p.contains("required when authenticate_links")), "{found:?}");
        let token = "a-token-of-twenty-chars";
        let found = problems(&format!(
            "[tenants.\"bad name\"]\ntokens = [\"short\"]\n[tenants.a]\ntokens = [\"{token}\"]\n[tenants.b]\ntokens = [\"{token}\", \"sha256:xyz\"]\n"
        ));
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found.iter().any(|p| p.contains("tenants.bad name: use 1 to 128 ASCII letters")), "{found:?}");
        assert!(found.iter().any(|p| p.contains("tokens[0]: a token of fewer than 16")), "{found:?}");
        assert!(
            found.iter().any(|p| p.contains("tenants.b.tokens[0]: the same token is given to tenant a")),
            "{found:?}"
        );
        assert!(found.iter().any(|p| p.contains("tenants.b.tokens[1]: a \"sha256:\" token needs")), "{found:?}");
        assert_eq!(problems("[limits]\ndeadline = \"25h\"\n"), ["limits.deadline: must be at most 24h (line 2)"]);
        let bridge = "[federation]\nmode = \"explicit\"\n\n[[federation.bridges]]\ncluster = \"x\"\nnodes = [\"a\"]\n\n[[federation.bridges]]\ncluster = \"local\"\n";
        let found = problems(bridge);
        assert!(
            found.iter().any(|p| p.starts_with("federation.bridges[1].cluster: ") && p.ends_with("(line 9)")),
            "{found:?}"
        );
        let found = problems("[tenants.a.limits]\ndeadline = \"0s\"\nmemory = \"512KiB\"\n");
        assert!(found.iter().any(|p| p == "tenants.a.limits.deadline: must be at least 1ms (line 2)"), "{found:?}");
        assert!(found.iter().any(|p| p.starts_with("tenants.a.limits.memory: must be at least 1MiB")), "{found:?}");
        let fine = format!(
            "[auth]\nrequired = true\n[tenants.a]\ntokens = [\"{token}\"]\n[tenants.a.limits]\nmemory = \"8MiB\"\n"
        );
        assert_eq!(problems(&fine), Vec::<String>::new());
        let config = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(config.tenant_limits()["a"].memory_bytes, 8 << 20, "a tenant's limits lower the node's");
    }

    #[test]
    fn overrides_win_over_the_file_and_validation_catches_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(
            &path,
            "[node]\ncluster = \"alpha\"\nplugins = \"p\"\n[tls]\ncert = \"c.pem\"\nkey = \"/k.pem\"\nca = \"ca/ca.pem\"\n",
        )
        .unwrap();
        let o = Overrides { cluster: Some("beta".into()), ..Overrides::default() };
        let c = Config::load(Some(&path), &o).unwrap();
        assert_eq!(c.node.cluster, "beta");
        assert_eq!(c.node.plugins, Some(dir.path().join("p")));
        let tls = [c.tls.cert, c.tls.key, c.tls.ca];
        assert_eq!(tls, [Some(dir.path().join("c.pem")), Some("/k.pem".into()), Some(dir.path().join("ca/ca.pem"))]);
        std::fs::write(&path, "[limits]\nmax_concurrency = 0\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("limits.max_concurrency"), "{err}");
    }

    #[test]
    fn settings_come_from_weft_variables_with_sections_and_from_set_flags() {
        let vars = [("WEFT_ID", "n1"), ("WEFT_LIMITS__MAX_RESULT", "1MiB "), ("HOME", "/"), ("WEFT_A__B__C_D", "x")];
        let settings = Setting::from_env(vars.map(|(k, v)| (k.into(), v.into()))).unwrap();
        assert_eq!(settings[1].value, "1MiB", "trimmed as a flag's is");
        let keys: Vec<(&str, &str)> = settings.iter().map(|s| (s.key.as_str(), s.source.as_str())).collect();
        assert_eq!(keys, [("a.b.c_d", "WEFT_A__B__C_D"), ("limits.max_result", "WEFT_LIMITS__MAX_RESULT")]);
        let flag = Setting::from_flag("routing.max_hops = 3").unwrap();
        assert_eq!((flag.key.as_str(), flag.value.as_str()), ("routing.max_hops", "3"));
        assert!(Setting::from_flag("routing.max_hops").unwrap_err().contains("KEY=VALUE"));
        use std::os::unix::ffi::OsStringExt;
        let bytes = OsString::from_vec(b"abc\xff".to_vec());
        let e = Setting::from_env([("WEFT_AUTH__OPERATOR_TOKENS".into(), bytes)]).unwrap_err();
        assert_eq!(e, "WEFT_AUTH__OPERATOR_TOKENS: its value is not UTF-8 text");
    }

    #[test]
    fn settings_take_toml_or_text_the_last_of_a_key_wins_and_their_paths_are_the_caller_s() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(&path, "[node]\nplugins = \"p\"\n[limits]\ndeadline = \"2s\"\n").unwrap();
        let set = |key: &str, value: &str| Setting { key: key.into(), value: value.into(), source: "--set".into() };
        let o = Overrides {
            settings: vec![
                set("limits.deadline", "nonsense"),
                set("limits.deadline", "9s"),
                set("federation.allowed_clusters", "[\"b\", \"c\"]"),
                set("node.data_dir", "d"),
                set("routing.max_hops", "3"),
                set("node.cluster", "true"),
                set("node.id", "\"quoted\""),
                set("tenants.\"team.x\".tokens", "[\"a-token-of-sixteen-chars-or-more\"]"),
            ],
            ..Overrides::default()
        };
        let c = Config::load(Some(&path), &o).unwrap();
        assert_eq!(c.limits.deadline, Duration::from_secs(9), "only the last setting of a key counts");
        assert_eq!(c.federation.allowed_clusters, ["b", "c"]);
        assert_eq!((c.routing.max_hops, c.node.cluster.as_str()), (3, "true"));
        assert_eq!(c.node.id.as_deref(), Some("quoted"), "a TOML string is the text it quotes");
        assert!(c.tenants.contains_key("team.x"), "a quoted name holds its '.'");
        assert_eq!(c.node.plugins, Some(dir.path().join("p")), "the file's path is the file's");
        assert_eq!(c.node.data_dir, PathBuf::from("d"), "a setting's path is the working directory's");

        let o = Overrides { settings: vec![set("federation.bridges.cluster", "b"), set("node", "x")], ..o };
        let err = Config::load(Some(&path), &o).unwrap_err().to_string();
        assert!(
            err.contains("federation.bridges.cluster: invalid type: map, expected a sequence (set by --set)"),
            "{err}"
        );
        assert!(err.contains("node: a section or unknown, not a key"), "{err}");
    }
}
