//! `weft keygen`: an ed25519 key pair for signing a cluster's routes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct KeygenArgs {
    /// Where to write the private key; the public key goes to FILE.pub.
    #[arg(long)]
    out: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

pub fn run(a: KeygenArgs) -> anyhow::Result<ExitCode> {
    if a.out.extension().is_some_and(|e| e == "pub") {
        anyhow::bail!(
            "--out {} names the private key, which would then look like a public one; name the private key (say {}): its public key is written beside it with .pub added",
            a.out.display(),
            a.out.with_extension("key").display()
        );
    }
    let public_path = PathBuf::from(format!("{}.pub", a.out.display()));
    for path in [&a.out, &public_path] {
        if path.exists() && !a.force {
            anyhow::bail!("{} exists; pass --force to replace it (the old key stops being usable)", path.display());
        }
    }
    if let Some(folder) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        weft_node::create_folder(folder).with_context(|| format!("cannot create {}", folder.display()))?;
    }
    let (private, public) = weft_node::signing::generate();
    write_private(&a.out, &private).with_context(|| format!("cannot write {}", a.out.display()))?;
    std::fs::write(&public_path, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", public_path.display()))?;
    println!("private key: {} (keep it secret; point routing.security.signing_key at it)", a.out.display());
    println!("public key:  {public}");
    println!(
        "trust it on the other clusters with:\n  [routing.security]\n  trusted_keys = {{ YOUR_CLUSTER = [\"{public}\"] }}"
    );
    Ok(ExitCode::SUCCESS)
}

/// The private key file is readable by its owner only, a file it replaces
/// too (`--force`): `mode` applies only to a file the open creates.
pub(crate) fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(format!("{text}\n").as_bytes())
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, format!("{text}\n"))
    }
}
