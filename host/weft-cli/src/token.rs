//! `weft token`: a new bearer token for a tenant, and the config line that
//! names it by digest (so the node's config never holds the secret).

use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub struct TokenArgs {
    /// The tenant the token is for (shown in the config snippet).
    #[arg(long, default_value = "NAME", value_parser = tenant_name)]
    tenant: String,
}

fn tenant_name(name: &str) -> Result<String, String> {
    if weft_proto::is_valid_name(name) { Ok(name.to_owned()) } else { Err(weft_proto::NAME_RULE.to_owned()) }
}

pub fn run(a: TokenArgs) -> anyhow::Result<ExitCode> {
    let (token, entry) = weft_node::tenants::new_token();
    println!("token: {token}");
    println!("(give it to the tenant; it is shown once and stored nowhere)");
    println!("add to the config of every node the tenant calls:\n  [tenants.{}]\n  tokens = [\"{entry}\"]", a.tenant);
    Ok(ExitCode::SUCCESS)
}
