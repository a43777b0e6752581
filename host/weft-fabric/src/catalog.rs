//! Function resolution: which catalog entries a command selects through its
//! `fun`, `function_id`, `version_constraint`, `locs` and `target_cluster`.
//!
//! Owns the catalog entry shape and the choice rules (highest matching version
//! wins, two plugins offering one bare name is ambiguous, a miss explains the
//! nearest entry). It does not know where entries come from (local plugins,
//! gossip, federation) nor which node a call finally goes to: it hands every
//! suitable node to the router as `Resolved::candidates`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};
use weft_proto::{Caller, Callers, ClusterId, Command, ErrorKind, FunctionId, FunctionSig, NodeId, WeftError};

/// One function of one plugin version on one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub function: FunctionId,
    pub version: Version,
    /// Shared: entries are cloned into every plan that resolves them.
    pub sig: Arc<FunctionSig>,
    pub resources: Vec<String>,
    pub node: NodeId,
    pub cluster: ClusterId,
    /// The plugin's manifest allows the fabric to retry a call on another
    /// node when the first one vanished mid-call.
    #[serde(default)]
    pub idempotent: bool,
    /// False when the plugin's manifest says `export = false`: never offered
    /// to, nor callable from, other clusters.
    #[serde(default = "yes")]
    pub exported: bool,
    /// The other clusters a call to it may come from or pass through: the
    /// federation policy of the node that has it, narrowed by that of each
    /// cluster that passes the entry on.
    #[serde(default, skip_serializing_if = "Audience::is_everyone")]
    pub audience: Audience,
    /// The other clusters a call to it may start in: its manifest's
    /// `callers`. A cluster outside them may still carry the entry on
    /// toward one of them, but neither lists nor calls it.
    #[serde(default, skip_serializing_if = "Audience::is_everyone")]
    pub origins: Audience,
    /// Who may call it: its manifest's `callers` within its own cluster; in
    /// an offer to another cluster, that cluster's tenants the manifest
    /// names (`Callers::seen_from`), and everyone once passed on further.
    #[serde(default, skip_serializing_if = "Callers::is_anyone")]
    pub callers: Callers,
    /// The tenant that owns its plugin, within its own cluster only, as
    /// `callers`: a plugin name belongs to one tenant (`resolve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl CatalogEntry {
    /// Whether `cluster` lists and may call it, rather than only carry it
    /// toward the clusters its plugin is open to.
    pub fn listed_in(&self, cluster: &ClusterId) -> bool {
        self.cluster == *cluster || self.origins.admits(cluster)
    }
}

fn yes() -> bool {
    true
}

/// A set of clusters, kept small either way: everyone, only some, or all
/// but some.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Audience {
    #[default]
    Everyone,
    Only(BTreeSet<ClusterId>),
    AllBut(BTreeSet<ClusterId>),
}

impl Audience {
    /// The clusters `callers` opens a plugin to (see [`Callers::foreign_clusters`]).
    pub fn origins(callers: &Callers, tenants_of: impl Fn(&str) -> bool) -> Audience {
        callers
            .foreign_clusters(tenants_of)
            .map_or(Audience::Everyone, |clusters| Audience::Only(clusters.iter().map(ClusterId::new).collect()))
    }

    pub fn is_everyone(&self) -> bool {
        *self == Audience::Everyone
    }

    pub fn admits(&self, cluster: &ClusterId) -> bool {
        match self {
            Audience::Everyone => true,
            Audience::Only(set) => set.contains(cluster),
            Audience::AllBut(set) => !set.contains(cluster),
        }
    }

    /// The clusters in both.
    pub fn narrowed(&self, other: &Audience) -> Audience {
        use Audience::{AllBut, Everyone, Only};
        match (self, other) {
            (Everyone, x) | (x, Everyone) => x.clone(),
            (Only(a), Only(b)) => Only(a.intersection(b).cloned().collect()),
            (Only(a), AllBut(b)) | (AllBut(b), Only(a)) => Only(a.difference(b).cloned().collect()),
            (AllBut(a), AllBut(b)) => AllBut(a.union(b).cloned().collect()),
        }
    }
}

/// The function a command will call.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub function: FunctionId,
    pub version: Version,
    pub sig: Arc<FunctionSig>,
    /// Every entry (one per node) of the chosen plugin version that satisfies
    /// the command's `locs` and `target_cluster`, in catalog order; shared
    /// with the step that runs the command.
    pub candidates: Arc<[CatalogEntry]>,
    /// The command's `locs`: a cluster the call is passed on to must honour
    /// them too when it picks one of its nodes.
    pub locs: Vec<String>,
}

const CATALOG_HINT: &str = "`weft catalog` lists the functions visible from this node";

/// Who a request is resolved for: its caller, in this cluster.
pub struct Asker<'a> {
    pub caller: &'a Caller,
    pub cluster: &'a ClusterId,
}

impl Asker<'_> {
    /// Whether the caller may call `entry` as far as this cluster knows: its
    /// plugin's `callers` (as offered to this cluster, for another one's),
    /// and for another cluster's, whether calls may start here at all.
    fn may_call(&self, entry: &CatalogEntry) -> bool {
        self.sees(entry) && entry.callers.admits(self.caller)
    }

    fn sees(&self, entry: &CatalogEntry) -> bool {
        entry.listed_in(self.cluster)
    }
}

/// Chooses the function `cmd` names among `entries` for `asker`.
///
/// The filters (version, then resources, then cluster) apply before the
/// ambiguity check: a bare name is ambiguous only if several plugins still
/// qualify, so `locs` or `target_cluster` alone may settle it. Among several,
/// plugins the caller may not call do not count, so one tenant's plugin
/// cannot take a name from the others. A `fun` that disagrees with
/// `function_id` is rejected rather than silently ignored.
pub fn resolve(cmd: &Command, entries: &[CatalogEntry], asker: &Asker) -> Result<Resolved, WeftError> {
    let at = |e: WeftError| e.context(format_args!("command {}", cmd.name)).with("command", cmd.name.as_str());
    let wanted = Wanted::of(cmd).map_err(at)?;
    let req = match cmd.version_constraint.as_deref() {
        None => None,
        Some(text) => Some(VersionReq::parse(text).map_err(|e| {
            at(WeftError::invalid_request(format!(
                "version_constraint {text:?} is not a semver requirement ({e}); write e.g. \"^1.2\" or \">=1, <3\""
            )))
        })?),
    };

    let named: Vec<&CatalogEntry> = entries.iter().filter(|e| asker.sees(e) && wanted.matches(&e.function)).collect();
    if named.is_empty() {
        // What another cluster does not offer here may still be there.
        let abroad = match cmd.target_cluster.as_deref() {
            Some(target) if target != asker.cluster.as_str() => {
                let me = asker.cluster;
                format!(
                    " (cluster {target} offers none of that name to cluster {me}: it may not have one, or its federation policy or the plugin's manifest `callers` keep it from {me}, or it takes {me}'s calls through no cluster on the way: {me} signing its calls with a key it trusts in routing.security.trusted_keys, or federation.trusted_transit)"
                )
            }
            _ => String::new(),
        };
        return Err(at(not_found(format!(
            "function {wanted} is not in the catalog{}{}{abroad}",
            wanted.siblings(entries, asker),
            wanted.near_misses(entries, asker)
        ))));
    }
    let named = callable(named, asker, &wanted).map_err(|e| at(e.with("rule", "callers")))?;
    // Each filter that empties the set explains the miss with what it removed.
    let left = narrow(
        named,
        |e| req.as_ref().is_none_or(|r| r.matches(&e.version)),
        |before| {
            let req = req.as_ref().map(ToString::to_string).unwrap_or_default();
            format!("function {wanted} exists but no version matches {req:?} (available: {})", available(before))
        },
    )
    .map_err(at)?;
    let left = narrow(left, |e| cmd.locs.iter().all(|l| e.resources.contains(l)), |before| {
        let offered: BTreeSet<String> = before.iter().map(|e| format!("[{}]", e.resources.join(", "))).collect();
        format!(
            "function {wanted} exists but not with resources [{}] (its nodes have: {}); drop locs or load the plugin where they are",
            cmd.locs.join(", "),
            join(offered)
        )
    })
    .map_err(at)?;
    let left = narrow(
        left,
        |e| cmd.target_cluster.as_ref().is_none_or(|c| e.cluster.as_str() == c),
        |before| {
            let clusters: BTreeSet<&str> = before.iter().map(|e| e.cluster.as_str()).collect();
            format!(
                "function {wanted} exists but not in cluster {} (it is in: {})",
                cmd.target_cluster.as_deref().unwrap_or_default(),
                join(clusters)
            )
        },
    )
    .map_err(at)?;

    owned_by_one_tenant(&left, &wanted).map_err(at)?;
    let left = home_first(left, asker.cluster);

    let plugins: BTreeSet<&FunctionId> = left.iter().map(|e| &e.function).collect();
    if plugins.len() > 1 {
        let candidates: BTreeSet<String> = left.iter().map(|e| format!("{}@{}", e.function, e.version)).collect();
        let candidates: Vec<String> = candidates.into_iter().collect();
        let example = plugins.iter().next().map(ToString::to_string).unwrap_or_default();
        return Err(at(WeftError::new(
            ErrorKind::AMBIGUOUS_FUNCTION,
            format!(
                "function {wanted} is offered by several plugins: {}; set function_id to the one you mean (e.g. \"{example}\")",
                candidates.join(", ")
            ),
        )
        .with("candidates", candidates)));
    }

    let Some(best) = left.iter().max_by(|a, b| a.version.cmp(&b.version)) else {
        return Err(at(WeftError::internal("resolution left no entry")));
    };
    let newest: Vec<&CatalogEntry> = left.iter().copied().filter(|e| e.version == best.version).collect();
    let sig = agreed_signature(&newest).unwrap_or_else(|| best.sig.clone());
    let candidates: Arc<[CatalogEntry]> = newest.iter().filter(|e| e.sig == sig).map(|e| (*e).clone()).collect();
    Ok(Resolved {
        function: best.function.clone(),
        version: best.version.clone(),
        sig,
        candidates,
        locs: cmd.locs.clone(),
    })
}

/// A plugin name belongs to one tenant. Where nodes of the cluster serve
/// one name for two tenants (each node refuses that among its own files),
/// picking by version could hand one tenant's call to the other's code:
/// refused instead, naming who claims the name where.
fn owned_by_one_tenant(entries: &[&CatalogEntry], wanted: &Wanted) -> Result<(), WeftError> {
    let mut claims: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for e in entries {
        if let Some(tenant) = e.tenant.as_deref() {
            claims.entry(&e.function.plugin).or_default().entry(tenant).or_default().insert(e.node.as_str());
        }
    }
    let Some((plugin, tenants)) = claims.into_iter().find(|(_, tenants)| tenants.len() > 1) else {
        return Ok(());
    };
    let who: Vec<String> =
        tenants.iter().map(|(tenant, nodes)| format!("tenant {tenant} on {}", join(nodes.iter().copied()))).collect();
    Err(WeftError::new(
        ErrorKind::AMBIGUOUS_FUNCTION,
        format!(
            "function {wanted}: plugin name {plugin} is served for more than one tenant in this cluster ({}); a plugin name belongs to one tenant, so the call is not run: ask the operator to rename one tenant's plugin",
            who.join("; ")
        ),
    )
    .with("tenants", tenants.keys().map(|t| t.to_string()).collect::<Vec<_>>()))
}

/// A plugin this cluster has is not looked for abroad: another cluster's
/// plugin of the same name is that cluster's code (and tenants' names do not
/// cross), so taking it for a higher version, or as a spare, would hand the
/// calls meant for this one to whoever serves the name. `target_cluster`
/// (or a version only the other cluster has) reaches it.
fn home_first<'e>(entries: Vec<&'e CatalogEntry>, home: &ClusterId) -> Vec<&'e CatalogEntry> {
    let here: BTreeSet<&str> = entries.iter().filter(|e| e.cluster == *home).map(|e| &*e.function.plugin).collect();
    entries.into_iter().filter(|e| e.cluster == *home || !here.contains(&*e.function.plugin)).collect()
}

/// The entries the caller may call, first: what it may not call is none of
/// its business (not its versions, resources or signature, nor a clash of
/// names with it), and another tenant's plugin does not make a bare name
/// ambiguous. With none left, the refusal says no more than that.
fn callable<'e>(
    entries: Vec<&'e CatalogEntry>,
    asker: &Asker,
    wanted: &Wanted,
) -> Result<Vec<&'e CatalogEntry>, WeftError> {
    let kept: Vec<&CatalogEntry> = entries.into_iter().filter(|e| asker.may_call(e)).collect();
    if kept.is_empty() {
        return Err(WeftError::new(
            ErrorKind::POLICY_DENIED,
            format!(
                "{} may not call {wanted}: the manifest `callers` of the plugin that has it does not list it; ask the operator to add it",
                asker.caller
            ),
        ));
    }
    Ok(kept)
}

/// The signature a plugin version is called with. Nodes should agree, but a
/// changed plugin deployed without a new version gives one `name@version`
/// two signatures; then the one most nodes have is used (on a tie, that of
/// the first node by id), and only those nodes are candidates, so that a
/// call never runs against a signature other than the one its arguments
/// were checked against. `weft catalog` lists both.
fn agreed_signature(entries: &[&CatalogEntry]) -> Option<Arc<FunctionSig>> {
    let mut sigs: Vec<(&Arc<FunctionSig>, usize, &NodeId)> = Vec::new();
    for e in entries {
        match sigs.iter_mut().find(|(sig, ..)| **sig == e.sig) {
            Some((_, count, first)) => {
                *count += 1;
                *first = (*first).min(&e.node);
            }
            None => sigs.push((&e.sig, 1, &e.node)),
        }
    }
    let best = sigs.into_iter().max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.2.cmp(a.2)));
    best.map(|(sig, ..)| sig.clone())
}

/// What a command asks for: a pinned `plugin/function` or a bare function name.
enum Wanted {
    Pinned(FunctionId),
    Bare(String),
}

impl Wanted {
    fn of(cmd: &Command) -> Result<Wanted, WeftError> {
        if let Some(text) = &cmd.function_id {
            let id: FunctionId = text.parse().map_err(|e| WeftError::invalid_request(format!("function_id: {e}")))?;
            if !(cmd.fun.is_empty() || *cmd.fun == *id.function || cmd.fun == id.to_string()) {
                return Err(WeftError::invalid_request(format!(
                    "fun {:?} does not name function_id \"{id}\"; make them agree or leave fun empty",
                    cmd.fun
                )));
            }
            return Ok(Wanted::Pinned(id));
        }
        if cmd.fun.is_empty() {
            return Err(WeftError::invalid_request(
                "fun is empty; name a function as \"function\" or \"plugin/function\"",
            ));
        }
        if cmd.fun.contains('/') {
            return cmd.fun.parse().map(Wanted::Pinned).map_err(|e| WeftError::invalid_request(format!("fun: {e}")));
        }
        Ok(Wanted::Bare(cmd.fun.clone()))
    }

    fn matches(&self, id: &FunctionId) -> bool {
        match self {
            Wanted::Pinned(p) => p == id,
            Wanted::Bare(name) => *id.function == **name,
        }
    }

    /// Functions the caller may call whose names are close to the one
    /// asked for: the same name in another plugin or another case, or a
    /// typo or two away.
    fn near_misses(&self, entries: &[CatalogEntry], asker: &Asker) -> String {
        let asked = self.to_string().to_lowercase();
        let close = |id: &FunctionId| {
            let (name, whole) = (id.function.to_lowercase(), id.to_string().to_lowercase());
            let candidate = if matches!(self, Wanted::Pinned(_)) { whole } else { name.clone() };
            // Two letters swapped are one typo.
            let typos = strsim::osa_distance(&asked, &candidate);
            let same_name = match self {
                Wanted::Pinned(p) => p.function.to_lowercase() == name,
                Wanted::Bare(_) => false,
            };
            same_name || typos <= 2.min(asked.chars().count() / 3)
        };
        let ids: BTreeSet<&FunctionId> =
            entries.iter().filter(|e| asker.may_call(e) && close(&e.function)).map(|e| &e.function).collect();
        if ids.is_empty() {
            return String::new();
        }
        let shown: Vec<String> = ids.iter().take(3).map(ToString::to_string).collect();
        format!(" (did you mean {}?)", shown.join(" or "))
    }

    /// For a pinned id whose plugin exists: the functions it does have.
    fn siblings(&self, entries: &[CatalogEntry], asker: &Asker) -> String {
        let Wanted::Pinned(id) = self else {
            return String::new();
        };
        let names: BTreeSet<&str> = entries
            .iter()
            .filter(|e| asker.may_call(e) && e.function.plugin == id.plugin)
            .map(|e| &*e.function.function)
            .collect();
        if names.is_empty() { String::new() } else { format!(" (plugin {} has: {})", id.plugin, join(names)) }
    }
}

impl std::fmt::Display for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wanted::Pinned(id) => write!(f, "{id}"),
            Wanted::Bare(name) => f.write_str(name),
        }
    }
}

fn narrow(
    entries: Vec<&CatalogEntry>,
    keep: impl Fn(&CatalogEntry) -> bool,
    why_none: impl FnOnce(&[&CatalogEntry]) -> String,
) -> Result<Vec<&CatalogEntry>, WeftError> {
    let kept: Vec<&CatalogEntry> = entries.iter().copied().filter(|e| keep(e)).collect();
    if kept.is_empty() { Err(not_found(why_none(&entries))) } else { Ok(kept) }
}

fn not_found(why: String) -> WeftError {
    WeftError::new(ErrorKind::FUNCTION_NOT_FOUND, format!("{why}; {CATALOG_HINT}"))
}

/// Versions on offer: bare versions for one plugin, `plugin/function@version` for several.
fn available(entries: &[&CatalogEntry]) -> String {
    let ids: BTreeSet<&FunctionId> = entries.iter().map(|e| &e.function).collect();
    let mut versions: Vec<(&FunctionId, &Version)> = entries.iter().map(|e| (&e.function, &e.version)).collect();
    versions.sort();
    versions.dedup();
    let shown = versions.iter().map(|(id, v)| if ids.len() == 1 { v.to_string() } else { format!("{id}@{v}") });
    join(shown)
}

fn join<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{catalog, entry, resolve, sig};
    use weft_proto::WitType;

    fn cmd(fun: &str) -> Command {
        Command::new("c1", fun, vec![])
    }

    #[test]
    fn bare_name_and_plugin_slash_function_both_resolve() {
        let cat = catalog();
        assert_eq!(resolve(&cmd("concat"), &cat).unwrap().function, FunctionId::new("echo", "concat"));
        assert_eq!(resolve(&cmd("math/add"), &cat).unwrap().function, FunctionId::new("math", "add"));
        let mut c = cmd("add");
        c.function_id = Some("math/add".into());
        assert_eq!(resolve(&c, &cat).unwrap().function, FunctionId::new("math", "add"));
    }

    #[test]
    fn unknown_function_is_not_found_naming_command_and_function_and_pointing_at_the_catalog() {
        let e = resolve(&cmd("frob"), &catalog()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND);
        assert!(e.message.starts_with("command c1: function frob is not in the catalog"), "{}", e.message);
        assert!(e.message.contains("weft catalog"), "{}", e.message);
        assert_eq!(e.details["command"], json!("c1"));
        let e = resolve(&cmd("echo/frob"), &catalog()).unwrap_err();
        assert!(e.message.contains("plugin echo has: concat, echo, echos"), "{}", e.message);
        // Asked of another cluster, the miss says what may hide it from this one.
        let mut abroad = cmd("greet");
        abroad.target_cluster = Some("beta".into());
        let e = resolve(&abroad, &catalog()).unwrap_err();
        assert!(
            e.message.contains("cluster beta offers none of that name to cluster alpha")
                && e.message.contains("manifest `callers`"),
            "{}",
            e.message
        );
    }

    /// One plugin name served for two tenants in the cluster (each node
    /// loads its own file) is refused, not resolved by version: the higher
    /// version would take the other tenant's calls.
    #[test]
    fn a_plugin_name_served_for_two_tenants_is_refused() {
        let on = |node: &str, version: &str, tenant: &str| CatalogEntry {
            node: NodeId::new(node),
            tenant: Some(tenant.into()),
            ..entry("acme/greet", version, sig(&[("who", WitType::String)], WitType::String))
        };
        let e = resolve(&cmd("greet"), &[on("n1", "0.1.0", "acme"), on("n2", "9.9.9", "globex")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::AMBIGUOUS_FUNCTION, "{}", e.message);
        assert!(e.message.contains("tenant acme on n1; tenant globex on n2"), "{}", e.message);
        assert_eq!(e.details["tenants"], json!(["acme", "globex"]));
        let one = resolve(&cmd("greet"), &[on("n1", "0.1.0", "acme"), on("n2", "9.9.9", "acme")]).unwrap();
        assert_eq!(one.version.to_string(), "9.9.9", "one tenant's versions resolve as ever");
    }

    /// A miss names functions the caller may call with a close name: the
    /// same name in another plugin or case, or a typo away; nothing for a
    /// name like none of them.
    #[test]
    fn a_miss_suggests_close_names_the_caller_may_call() {
        let says = |fun: &str| resolve(&cmd(fun), &catalog()).unwrap_err().message;
        for (fun, meant) in [
            ("Upper", "text/upper"),
            ("echo/upper", "text/upper"),
            ("TEXT/Upper", "text/upper"),
            ("wordcount", "text/word-count"),
            ("math/divid", "math/divide"),
            ("ecoh", "echo/echo"),
        ] {
            assert!(says(fun).contains(&format!("(did you mean {meant}?)")), "{fun}: {}", says(fun));
        }
        assert!(says("echo/upper").contains("plugin echo has: concat, echo, echos"), "{}", says("echo/upper"));
        for far in ["frob", "ad", "math/frob"] {
            assert!(!says(far).contains("did you mean"), "{far}: {}", says(far));
        }
        // Another tenant's plugin is not offered.
        let mut cat = catalog();
        cat.iter_mut().filter(|e| *e.function.plugin == *"text").for_each(|e| e.callers = Callers::tenants(["acme"]));
        let e = resolve(&cmd("Upper"), &cat).unwrap_err();
        assert!(!e.message.contains("did you mean"), "{}", e.message);
    }

    #[test]
    fn one_version_with_two_signatures_is_called_only_where_the_most_nodes_agree() {
        let on = |node: &str, result: WitType| {
            let mut e = entry("shapes/zero", "0.1.0", sig(&[], result));
            e.node = NodeId::new(node);
            e
        };
        let cat = vec![on("n1", WitType::U32), on("n2", WitType::String), on("n3", WitType::String)];
        let r = resolve(&cmd("zero"), &cat).unwrap();
        assert_eq!(r.sig.result, Some(WitType::String));
        let nodes: Vec<&str> = r.candidates.iter().map(|e| e.node.as_str()).collect();
        assert_eq!(nodes, ["n2", "n3"], "n1 would answer with another type");

        // A tie goes to the signature of the first node by id, on every node.
        for cat in [&cat[..2], &[cat[1].clone(), cat[0].clone()][..]] {
            let r = resolve(&cmd("zero"), cat).unwrap();
            assert_eq!(r.sig.result, Some(WitType::U32));
            assert_eq!(r.candidates.len(), 1);
        }
    }

    #[test]
    fn highest_matching_version_wins() {
        let mut cat = catalog();
        cat.push(entry(
            "echo/concat",
            "1.4.0",
            sig(&[("a", WitType::String), ("b", WitType::String)], WitType::String),
        ));
        cat.push(entry(
            "echo/concat",
            "2.0.0",
            sig(&[("a", WitType::String), ("b", WitType::String)], WitType::String),
        ));
        assert_eq!(resolve(&cmd("concat"), &cat).unwrap().version, Version::new(2, 0, 0));
        let mut c = cmd("concat");
        c.version_constraint = Some("^1".into());
        assert_eq!(resolve(&c, &cat).unwrap().version, Version::new(1, 4, 0));
    }

    #[test]
    fn constraint_excluding_every_version_says_which_exist() {
        let mut c = cmd("concat");
        c.version_constraint = Some("^2".into());
        let e = resolve(&c, &catalog()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND);
        assert!(e.message.contains("no version matches \"^2\" (available: 1.0.0)"), "{}", e.message);
        assert!(e.message.starts_with("command c1:"), "{}", e.message);
    }

    #[test]
    fn bad_version_constraint_is_an_invalid_request_naming_the_command() {
        let mut c = cmd("concat");
        c.version_constraint = Some("one point oh".into());
        let e = resolve(&c, &catalog()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::INVALID_REQUEST);
        assert!(e.message.starts_with("command c1: version_constraint"), "{}", e.message);
    }

    #[test]
    fn locs_keep_only_entries_with_every_resource() {
        let mut cat = catalog();
        let mut gpu = entry("math/add", "1.0.0", sig(&[("a", WitType::S64), ("b", WitType::S64)], WitType::S64));
        gpu.resources = vec!["gpu".into(), "ssd".into()];
        gpu.node = NodeId::new("g1");
        cat.push(gpu);
        let mut c = cmd("add");
        c.locs = vec!["gpu".into()];
        let r = resolve(&c, &cat).unwrap();
        assert_eq!(r.candidates.iter().map(|e| e.node.as_str()).collect::<Vec<_>>(), ["g1"]);
        c.locs = vec!["gpu".into(), "tpu".into()];
        let e = resolve(&c, &cat).unwrap_err();
        assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND);
        assert!(e.message.contains("exists but not with resources [gpu, tpu]"), "{}", e.message);
    }

    /// Node b1 of cluster beta offering `math/add@version`.
    fn beta_add(version: &str) -> CatalogEntry {
        let mut beta = entry("math/add", version, sig(&[("a", WitType::S64), ("b", WitType::S64)], WitType::S64));
        beta.cluster = ClusterId::new("beta");
        beta.node = NodeId::new("b1");
        beta
    }

    #[test]
    fn target_cluster_keeps_only_that_cluster_and_misses_say_where_it_is() {
        let mut cat = catalog();
        cat.push(beta_add("1.0.0"));
        let mut c = cmd("add");
        c.target_cluster = Some("beta".into());
        assert_eq!(resolve(&c, &cat).unwrap().candidates[0].node.as_str(), "b1");
        let home = resolve(&cmd("add"), &cat).unwrap().candidates;
        assert_eq!(home.iter().map(|e| e.cluster.as_str()).collect::<Vec<_>>(), ["alpha"], "found at home");
        c.target_cluster = Some("gamma".into());
        let e = resolve(&c, &cat).unwrap_err();
        assert!(e.message.contains("not in cluster gamma (it is in: alpha, beta)"), "{}", e.message);
    }

    /// Another cluster's plugin of a name this cluster has is another's
    /// code: a higher version there does not take this cluster's calls,
    /// though a version only it has, or `target_cluster`, reaches it.
    #[test]
    fn a_plugin_found_at_home_is_not_looked_for_abroad_whatever_the_version() {
        let mut cat = catalog();
        cat.push(beta_add("9.0.0"));
        let r = resolve(&cmd("math/add"), &cat).unwrap();
        assert_eq!((r.version.to_string(), r.candidates.len()), ("1.0.0".into(), 1));
        assert_eq!(r.candidates[0].cluster.as_str(), "alpha");
        let mut newer = cmd("add");
        newer.version_constraint = Some("^9".into());
        assert_eq!(resolve(&newer, &cat).unwrap().candidates[0].node.as_str(), "b1");
        let mut pinned = cmd("add");
        pinned.target_cluster = Some("beta".into());
        assert_eq!(resolve(&pinned, &cat).unwrap().version.to_string(), "9.0.0");
    }

    #[test]
    fn same_bare_name_in_two_plugins_is_ambiguous_until_function_id_pins_one() {
        let mut cat = catalog();
        cat.push(entry(
            "text/concat",
            "3.1.0",
            sig(&[("a", WitType::String), ("b", WitType::String)], WitType::String),
        ));
        let e = resolve(&cmd("concat"), &cat).unwrap_err();
        assert_eq!(e.kind, ErrorKind::AMBIGUOUS_FUNCTION);
        assert_eq!(e.details["candidates"], json!(["echo/concat@1.0.0", "text/concat@3.1.0"]));
        assert!(e.message.contains("echo/concat@1.0.0, text/concat@3.1.0"), "{}", e.message);
        assert!(e.message.contains("function_id"), "{}", e.message);
        let mut c = cmd("concat");
        c.function_id = Some("text/concat".into());
        assert_eq!(resolve(&c, &cat).unwrap().version, Version::new(3, 1, 0));
    }

    /// A tenant's plugin does not make a bare name ambiguous for callers who
    /// may not call it; a foreign cluster's entries keep counting.
    #[test]
    fn a_bare_name_resolves_among_the_plugins_the_caller_may_call() {
        let mut cat = catalog();
        let concat = sig(&[("a", WitType::String), ("b", WitType::String)], WitType::String);
        let mut acme = entry("acme-text/concat", "1.0.0", concat.clone());
        acme.callers = Callers::tenants(["acme"]);
        cat.push(acme);
        let alpha = ClusterId::new("alpha");
        let as_ = |caller: &Caller, cat: &[CatalogEntry]| {
            super::resolve(&cmd("concat"), cat, &Asker { caller, cluster: &alpha })
        };
        let bob = Caller::Tenant("bob".into());
        assert_eq!(as_(&bob, &cat).unwrap().function, FunctionId::new("echo", "concat"));
        assert_eq!(as_(&Caller::Anonymous, &cat).unwrap().function, FunctionId::new("echo", "concat"));
        let acme = Caller::Tenant("acme".into());
        assert_eq!(as_(&acme, &cat).unwrap_err().kind, ErrorKind::AMBIGUOUS_FUNCTION, "acme may call both");

        // Only plugins nobody here may call: refused, naming the rule.
        for e in cat.iter_mut().filter(|e| &*e.function.plugin == "echo") {
            e.callers = Callers::tenants(["ops"]);
        }
        let e = as_(&bob, &cat).unwrap_err();
        assert_eq!((e.kind, e.details["rule"].as_str()), (ErrorKind::POLICY_DENIED, Some("callers")), "{e}");
        assert!(e.message.contains("tenant bob may not call concat: the manifest `callers`"), "{e}");
        // A lone plugin too, and nothing tells what it has.
        let lone: Vec<CatalogEntry> = cat.iter().filter(|e| &*e.function.plugin == "echo").cloned().collect();
        let e = as_(&bob, &lone).unwrap_err();
        assert_eq!(e.details["rule"].as_str(), Some("callers"), "{e}");
        assert!(!e.message.contains("echo/") && !e.message.contains("1.0.0"), "{e}");

        // Another cluster's entries carry the callers it offered them with:
        // this cluster's tenants its manifest names (`ops@alpha`), or anyone.
        for e in cat.iter_mut().filter(|e| &*e.function.plugin == "echo") {
            e.cluster = ClusterId::new("beta");
        }
        assert_eq!(as_(&bob, &cat).unwrap_err().kind, ErrorKind::POLICY_DENIED);
        for e in cat.iter_mut().filter(|e| &*e.function.plugin == "echo") {
            e.callers = Callers::default();
        }
        assert_eq!(as_(&bob, &cat).unwrap().function, FunctionId::new("echo", "concat"));

        // Unless their plugin is open to other clusters than this one: then
        // this cluster only carries them, and no one here finds them.
        for e in cat.iter_mut().filter(|e| &*e.function.plugin == "echo") {
            e.origins = Audience::Only([ClusterId::new("gamma")].into());
        }
        let asker = Asker { caller: &bob, cluster: &alpha };
        let e = super::resolve(&cmd("echo/concat"), &cat, &asker).unwrap_err();
        assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND, "{e}");
        assert!(!e.message.contains("plugin echo has") && !e.message.contains("did you mean"), "{e}");
        let e = super::resolve(&cmd("concat"), &cat, &asker).unwrap_err();
        assert_eq!(e.details["rule"].as_str(), Some("callers"), "only acme's is left: {e}");
    }

    #[test]
    fn filters_may_settle_an_otherwise_ambiguous_name() {
        let mut cat = catalog();
        let mut t =
            entry("text/concat", "1.0.0", sig(&[("a", WitType::String), ("b", WitType::String)], WitType::String));
        t.resources = vec!["gpu".into()];
        cat.push(t);
        let mut c = cmd("concat");
        c.locs = vec!["gpu".into()];
        assert_eq!(resolve(&c, &cat).unwrap().function, FunctionId::new("text", "concat"));
    }

    #[test]
    fn fun_disagreeing_with_function_id_or_malformed_is_an_invalid_request() {
        let mut c = cmd("upper");
        c.function_id = Some("echo/concat".into());
        assert_eq!(resolve(&c, &catalog()).unwrap_err().kind, ErrorKind::INVALID_REQUEST);
        for bad in ["", "a/b/c", "/x"] {
            let e = resolve(&cmd(bad), &catalog()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::INVALID_REQUEST, "{bad}");
            assert!(e.message.starts_with("command c1:"), "{}", e.message);
        }
    }

    #[test]
    fn catalog_entries_round_trip_through_json() {
        let e = catalog().remove(0);
        let back: CatalogEntry = serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }
}
