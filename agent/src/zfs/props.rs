//! The staging dataset's properties (DESIGN.md, "ZFS"): staging holds whole 16 MiB
//! segments written sequentially, fsynced, read once and deleted, so large records, no
//! access-time updates and throughput-biased ZIL use suit it; objects are zstd already, so
//! ZFS compression is off or the cheap lz4.

use std::collections::BTreeMap;

/// One property that is not what staging wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyFinding {
    /// The property.
    pub property: &'static str,
    /// Its value now.
    pub have: String,
    /// What it should be.
    pub want: &'static str,
    /// The command that fixes it.
    pub fix: String,
}

/// The properties staging wants and what `zfs create` is given for them.
pub const STAGING_PROPERTIES: &[(&str, &str)] = &[
    ("recordsize", "128K"),
    ("atime", "off"),
    ("logbias", "throughput"),
    ("compression", "off"),
];

/// Compares `props` (name → value, from `zfs get`) of `dataset` with what staging wants.
/// `compression` may be `off` or `lz4`; `recordsize` may print as `128K` or `131072`.
pub fn check_staging(dataset: &str, props: &BTreeMap<String, String>) -> Vec<PropertyFinding> {
    STAGING_PROPERTIES
        .iter()
        .filter_map(|(name, want)| {
            let have = props.get(*name).map_or("(unknown)", String::as_str);
            let ok = match *name {
                "recordsize" => matches!(have, "128K" | "131072"),
                "compression" => matches!(have, "off" | "lz4"),
                _ => have == *want,
            };
            (!ok).then(|| PropertyFinding {
                property: name,
                have: have.to_string(),
                want: if *name == "compression" {
                    "off or lz4"
                } else {
                    want
                },
                fix: format!("zfs set {name}={want} {dataset}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn good_properties_pass() {
        let p = props(&[
            ("recordsize", "131072"),
            ("atime", "off"),
            ("logbias", "throughput"),
            ("compression", "lz4"),
        ]);
        assert!(check_staging("tank/staging", &p).is_empty());
    }

    #[test]
    fn defaults_are_reported_with_fixes() {
        let p = props(&[
            ("recordsize", "128K"),
            ("atime", "on"),
            ("logbias", "latency"),
            ("compression", "gzip"),
        ]);
        let f = check_staging("tank/staging", &p);
        assert_eq!(
            f.iter().map(|f| f.property).collect::<Vec<_>>(),
            ["atime", "logbias", "compression"]
        );
        assert_eq!(f[0].fix, "zfs set atime=off tank/staging");
        assert_eq!(f[2].want, "off or lz4");
        assert_eq!(
            check_staging("x", &props(&[])).len(),
            4,
            "unknown values are findings"
        );
    }
}
