//! `weft cert`: a private CA for a fleet's TLS and certificates it signs
//! for nodes, without other tooling. The CA is made on first use in the
//! output folder (`ca.pem`, `ca.key`) and signs each node's certificate
//! (`NODE.pem`, `NODE.key`) for the hosts others dial it at.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

#[derive(Args)]
pub struct CertArgs {
    /// Folder of the CA and the certificates (the CA is made there if missing).
    #[arg(long)]
    out: PathBuf,
    /// A host name or IP address the node is dialled at (repeatable); its
    /// `advertise` URL must use one of them.
    #[arg(long = "host", required = true)]
    hosts: Vec<String>,
    /// File name of the node's certificate and key [default: the first host].
    #[arg(long)]
    node: Option<String>,
    /// Replace the node's existing certificate and key.
    #[arg(long)]
    force: bool,
}

/// The CA's name, the same whenever its key is loaded again to sign.
const CA_NAME: &str = "weft CA";

pub fn run(a: CertArgs) -> anyhow::Result<ExitCode> {
    weft_node::create_folder(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    if let Some(bad) = a.hosts.iter().find(|h| !host_ok(h)) {
        anyhow::bail!("--host {bad:?} is neither an IP address nor a DNS name (letters, digits, '-' and '.')");
    }
    let node = a.node.clone().unwrap_or_else(|| a.hosts[0].clone());
    anyhow::ensure!(
        !node.contains(['/', '\\']) && !node.starts_with('.'),
        "--node {node:?} names the files NODE.pem and NODE.key; use a plain name"
    );
    let (cert_path, key_path) = (a.out.join(format!("{node}.pem")), a.out.join(format!("{node}.key")));
    for path in [&cert_path, &key_path] {
        if path.exists() && !a.force {
            anyhow::bail!("{} exists; pass --force to replace it", path.display());
        }
    }
    let (ca, made) = ca(&a.out)?;
    let key = KeyPair::generate()?;
    let mut params =
        CertificateParams::new(a.hosts.clone()).context("a --host is not a valid DNS name or IP address")?;
    params.distinguished_name.push(DnType::CommonName, node.as_str());
    params.not_before = rcgen::date_time_ymd(this_year(), 1, 1);
    params.not_after = rcgen::date_time_ymd(this_year() + 2, 1, 1);
    let cert = params.signed_by(&key, &ca)?;
    std::fs::write(&cert_path, cert.pem()).with_context(|| format!("cannot write {}", cert_path.display()))?;
    crate::keygen::write_private(&key_path, &key.serialize_pem())
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    let ca_pem = a.out.join("ca.pem");
    if made {
        println!(
            "made a CA: {} (give it to every node and client) and ca.key (keep it off the nodes)",
            ca_pem.display()
        );
    }
    println!("certificate of {node} for {}, valid until 1 January {}:", a.hosts.join(", "), this_year() + 2);
    println!("  [tls]\n  cert = {:?}\n  key = {:?}\n  ca = {:?}", cert_path, key_path, ca_pem);
    println!(
        "(paths from here; copy the files to the node, and in its config give them relative to the config file, or with --set relative to where the node runs)"
    );
    Ok(ExitCode::SUCCESS)
}

/// An IP address, or a DNS name (a leading `*.` for a wildcard).
fn host_ok(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

/// The folder's CA as an issuer, made first if the folder has none; and
/// whether it was made now.
fn ca(dir: &Path) -> anyhow::Result<(Issuer<'static, KeyPair>, bool)> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    if key_path.exists() {
        let pem = std::fs::read_to_string(&key_path).with_context(|| format!("cannot read {}", key_path.display()))?;
        let key =
            KeyPair::from_pem(&pem).with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
        anyhow::ensure!(cert_path.exists(), "{} has no {} beside it", key_path.display(), cert_path.display());
        return Ok((Issuer::new(params, key), false));
    }
    let key = KeyPair::generate()?;
    params.not_before = rcgen::date_time_ymd(this_year(), 1, 1);
    params.not_after = rcgen::date_time_ymd(this_year() + 10, 1, 1);
    let cert = params.self_signed(&key)?;
    std::fs::write(&cert_path, cert.pem()).with_context(|| format!("cannot write {}", cert_path.display()))?;
    crate::keygen::write_private(&key_path, &key.serialize_pem())
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    Ok((Issuer::new(params, key), true))
}

fn this_year() -> i32 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}
