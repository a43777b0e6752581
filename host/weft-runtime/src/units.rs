//! Human units in config files: durations ("500ms", "30s") and sizes
//! ("64MiB"), parsed by humantime and bytesize with errors that show the
//! accepted forms.

use std::time::Duration;

use serde::Deserializer;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); use forms like \"500ms\", \"30s\", \"2m\""))
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size {text:?} ({e}); use forms like \"64MiB\", \"512KiB\", \"1GiB\""))
}

pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = d.deserialize_str(Text("a duration such as \"500ms\", \"30s\" or \"2m\""))?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = d.deserialize_str(Text("a size such as \"64MiB\", \"512KiB\" or \"1GiB\""))?;
    parse_size(&text).map_err(serde::de::Error::custom)
}

/// A string; anything else is refused naming the form expected (`5` where
/// a duration goes: "expected a duration such as ...").
struct Text(&'static str);

impl serde::de::Visitor<'_> for Text {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
}

pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

pub fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    size(d).map(Some)
}

/// Formats a byte count the way config files write it ("64MiB").
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    UNITS
        .iter()
        .find(|(unit, _)| bytes >= *unit && bytes.is_multiple_of(*unit))
        .map_or_else(|| format!("{bytes}B"), |(unit, name)| format!("{}{name}", bytes / unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_config_units_and_explains_bad_ones() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert!(parse_duration("fast").unwrap_err().contains("500ms"));
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1000), "1000B");
        assert!(parse_size("lots").unwrap_err().contains("MiB"));
    }
}
