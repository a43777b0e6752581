//! The example plugins, embedded in the host binaries.
//!
//! This crate owns the compiled components of plugins/ (built for
//! wasm32-wasip2 by build.rs from plugins/, guest-sdk/ and wit/) and the
//! means to materialise them as a plugins folder. It knows nothing about
//! loading or running them: that is weft-runtime's job, and a node sees these
//! files exactly as it sees any plugin an operator dropped into its folder.

use std::fs;
use std::io;
use std::path::Path;

/// One example plugin: its name (the file stem, `NAME.wasm`) and component bytes.
#[derive(Debug, Clone, Copy)]
pub struct BundledPlugin {
    pub name: &'static str,
    pub wasm: &'static [u8],
}

macro_rules! bundled {
    ($name:literal) => {
        BundledPlugin { name: $name, wasm: include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".wasm")) }
    };
}

/// Every bundled plugin, the test plugins `hostile` and `stall` included.
pub const ALL: &[BundledPlugin] =
    &[bundled!("echo"), bundled!("math"), bundled!("text"), bundled!("hostile"), bundled!("stall")];

/// The plugins a node loads when it is given none: `hostile` and `stall`
/// misbehave on purpose and are only for sandbox tests.
pub const DEFAULT_SET: &[&str] = &["echo", "math", "text"];

/// The component bytes of the bundled plugin `name`.
pub fn get(name: &str) -> Option<&'static [u8]> {
    ALL.iter().find(|plugin| plugin.name == name).map(|plugin| plugin.wasm)
}

/// Writes `NAME.wasm` into `dir` (created if missing) for each of `names`.
///
/// Every name is checked before anything is written. Each file is written
/// under a temporary name and renamed into place, so a node watching `dir`
/// never sees a half-written component.
pub fn write_to(dir: &Path, names: &[&str]) -> io::Result<()> {
    let plugins = names
        .iter()
        .map(|&name| {
            get(name).map(|wasm| (name, wasm)).ok_or_else(|| {
                let known: Vec<&str> = ALL.iter().map(|plugin| plugin.name).collect();
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no bundled plugin named {name:?}; the bundled ones are {}", known.join(", ")),
                )
            })
        })
        .collect::<io::Result<Vec<_>>>()?;

    fs::create_dir_all(dir)?;
    for (name, wasm) in plugins {
        let partial = dir.join(format!(".{name}.wasm.partial"));
        fs::write(&partial, wasm)?;
        fs::rename(&partial, dir.join(format!("{name}.wasm")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// `\0asm` followed by the component-model version and layer (0x0d 0x00,
    /// 0x01 0x00); a core module would have version 1, layer 0.
    const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    /// A fresh directory under the system temp dir, removed on drop.
    struct ScratchDir(PathBuf);

    impl ScratchDir {
        fn new(test: &str) -> Self {
            let path = std::env::temp_dir().join(format!("weft-bundle-{test}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            Self(path)
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn every_bundled_plugin_is_a_component() {
        assert_eq!(ALL.len(), 5);
        for plugin in ALL {
            assert!(
                plugin.wasm.starts_with(&COMPONENT_HEADER),
                "{} does not start with the component header: {:02x?}",
                plugin.name,
                &plugin.wasm[..plugin.wasm.len().min(8)]
            );
        }
    }

    #[test]
    fn default_set_is_bundled_and_leaves_out_hostile() {
        for name in DEFAULT_SET {
            assert!(get(name).is_some(), "{name} is in DEFAULT_SET but not bundled");
        }
        assert!(get("hostile").is_some());
        assert!(!DEFAULT_SET.contains(&"hostile"));
        assert!(get("nope").is_none());
    }

    #[test]
    fn write_to_writes_the_named_components() -> io::Result<()> {
        let scratch = ScratchDir::new("write");
        let dir = scratch.0.join("plugins");
        write_to(&dir, DEFAULT_SET)?;

        let mut written: Vec<String> = fs::read_dir(&dir)?
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<_>>()?;
        written.sort();
        assert_eq!(written, ["echo.wasm", "math.wasm", "text.wasm"]);
        for name in DEFAULT_SET {
            assert_eq!(Some(fs::read(dir.join(format!("{name}.wasm")))?.as_slice()), get(name));
        }
        Ok(())
    }

    #[test]
    fn write_to_refuses_an_unknown_name_before_writing() {
        let scratch = ScratchDir::new("unknown");
        let err = write_to(&scratch.0, &["echo", "nope"]).err();
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::NotFound));
        assert!(!scratch.0.join("echo.wasm").exists());
    }
}
