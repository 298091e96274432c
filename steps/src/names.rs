//! Deterministic names of the objects ferry makes (DESIGN §5).

/// The longest name a DNS-1123 label allows.
pub const MAX_NAME: usize = 63;

/// The name of an object ferry makes: `ferry-<short>-<thing>`, lowercased
/// and with characters a DNS-1123 label forbids turned into `-`; when longer
/// than 63 characters, cut to exactly 63, ending with `-` and 8 hex digits of the BLAKE3
/// hash of the full name, so distinct long names stay distinct and the same
/// input always gives the same name.
pub fn ferry_name(short: &str, thing: &str) -> String {
    let raw = format!("ferry-{short}-{thing}");
    let mut full: String = raw
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    while full.ends_with('-') {
        full.pop();
    }
    if full.len() <= MAX_NAME {
        return full;
    }
    let hash = blake3::hash(raw.as_bytes()).to_hex();
    let suffix = &hash.as_str()[..8];
    // Always exactly 63 characters; a cut ending in `-` gives `--`, which a
    // DNS-1123 label allows.
    let cut = &full[..MAX_NAME - suffix.len() - 1];
    format!("{cut}-{suffix}")
}

/// The VolumeSnapshot ferry takes of source PVC `pvc`, in its source
/// namespace.
pub fn source_snapshot(short: &str, pvc: &str) -> String {
    ferry_name(short, pvc)
}

/// The pre-provisioned VolumeSnapshotContent (cluster-scoped, so the
/// destination namespace is part of the name) for `pvc` cloned into
/// `dst_ns` (clone-semantics §6.1).
pub fn snapshot_content(short: &str, dst_ns: &str, pvc: &str) -> String {
    ferry_name(short, &format!("{dst_ns}-{pvc}"))
}

/// The VolumeSnapshot in the destination namespace bound to
/// [`snapshot_content`]; the destination PVC's data source.
pub fn destination_snapshot(short: &str, pvc: &str) -> String {
    ferry_name(short, pvc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::is_dns_label;

    #[test]
    fn short_names_are_kept() {
        assert_eq!(
            ferry_name("abcd2345", "data-db-0"),
            "ferry-abcd2345-data-db-0"
        );
        assert_eq!(
            ferry_name("abcd2345", "Shop.Data_x"),
            "ferry-abcd2345-shop-data-x"
        );
    }

    #[test]
    fn long_names_are_cut_with_a_hash() {
        let a = ferry_name("abcd2345", &"x".repeat(80));
        let b = ferry_name("abcd2345", &format!("{}y", "x".repeat(80)));
        assert_eq!(a.len(), 63);
        assert!(is_dns_label(&a) && is_dns_label(&b));
        assert_ne!(a, b);
        assert_eq!(a, ferry_name("abcd2345", &"x".repeat(80)));
    }
}
