//! Plugin names belong to one tenant. Two tenants' plugins under one name
//! would let a caller who names `acme/greet` (and may call both) reach the
//! other tenant's code, chosen by version, so a contested name is loaded
//! for neither: the operator renames one.

use std::collections::{BTreeMap, BTreeSet};

/// Which plugin name and tenant each file of a plugins folder claims.
#[derive(Default)]
pub(crate) struct Claims {
    /// Plugin name -> tenant -> files.
    by_name: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// File -> the plugin name it claims.
    names: BTreeMap<String, String>,
}

impl Claims {
    pub fn add(&mut self, file: &str, name: &str, tenant: &str) {
        let tenants = self.by_name.entry(name.to_owned()).or_default();
        tenants.entry(tenant.to_owned()).or_default().insert(file.to_owned());
        self.names.insert(file.to_owned(), name.to_owned());
    }

    /// Whether a file of the folder claims plugin name `name`.
    pub fn claimed(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Why `file` may not load, when its plugin name is claimed by more
    /// than one tenant.
    pub fn contest(&self, file: &str) -> Option<String> {
        let name = self.names.get(file)?;
        let tenants = &self.by_name[name];
        if tenants.len() < 2 {
            return None;
        }
        let owners: Vec<String> = tenants
            .iter()
            .map(|(tenant, files)| {
                format!("tenant {tenant} in {}", files.iter().cloned().collect::<Vec<_>>().join(", "))
            })
            .collect();
        Some(format!(
            "plugin name {name} is claimed by more than one tenant ({}); a plugin name belongs to one tenant, so that no caller reaches another tenant's code under it, and none of these loads until all but one tenant's files are renamed (`name` in the manifest, or the file name)",
            owners.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::Claims;

    #[test]
    fn a_name_claimed_by_two_tenants_loads_for_neither_and_says_who_claims_it() {
        let mut claims = Claims::default();
        claims.add("acme.wasm", "acme", "acme");
        claims.add("acme-2.wasm", "acme", "acme");
        claims.add("aaa.wasm", "acme", "globex");
        claims.add("echo.wasm", "echo", "default");
        let reason = claims.contest("acme.wasm").expect("contested");
        assert!(reason.contains("tenant acme in acme-2.wasm, acme.wasm; tenant globex in aaa.wasm"), "{reason}");
        assert_eq!(claims.contest("aaa.wasm"), Some(reason.clone()));
        assert_eq!(claims.contest("acme-2.wasm"), Some(reason));
        assert_eq!(claims.contest("echo.wasm"), None, "one tenant's name");
        assert_eq!(claims.contest("other.wasm"), None, "a file that claims nothing");
    }
}
