//! Kubernetes resource quantities (`100m`, `1.5`, `128Mi`, `1G`, `2e3`) as
//! numbers in their base unit (cores, bytes), for quota arithmetic.

/// The value of quantity `q` in its base unit; `None` when it is not one.
pub fn parse(q: &str) -> Option<f64> {
    let q = q.trim();
    // The suffix is the trailing letters, unless they are an exponent's
    // `e` with digits after it (`2e3`); a lone trailing `E` is exa.
    let split = q
        .rfind(|c: char| !c.is_ascii_alphabetic())
        .map_or(0, |i| i + 1);
    let (num, suffix) = q.split_at(split);
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    if num.is_empty() || num.starts_with('+') {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some(n * mult)
}

/// A quantity written back for messages: millicores below one core,
/// binary units for whole KiB and above, else the plain number.
pub fn display(v: f64, memory: bool) -> String {
    // An empty sum of floats is -0.
    let v = v + 0.0;
    if memory {
        for (s, m) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
            let m = m as f64;
            if v >= m && (v / m).fract() == 0.0 {
                return format!("{}{s}", v / m);
            }
        }
        return format!("{}", v.ceil());
    }
    if v.fract() == 0.0 {
        format!("{v}")
    } else {
        format!("{}m", (v * 1000.0).round())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_and_print() {
        assert_eq!(parse("100m"), Some(0.1));
        assert_eq!(parse("2"), Some(2.0));
        assert_eq!(parse("1.5"), Some(1.5));
        assert_eq!(parse("128Mi"), Some(134_217_728.0));
        assert_eq!(parse("1G"), Some(1e9));
        assert_eq!(parse("2e3"), Some(2000.0));
        assert_eq!(parse("1E"), Some(1e18));
        assert_eq!(parse("2Ei"), Some(2.0 * 1024f64.powi(6)));
        for bad in ["", "Mi", "1Xi", "-1", "+1", "1 Gi", "abc"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(display(0.25, false), "250m");
        assert_eq!(display(2.0, false), "2");
        assert_eq!(display(1.5 * 1024.0 * 1024.0 * 1024.0, true), "1536Mi");
        assert_eq!(display(1000.0, true), "1000");
        assert_eq!(display(std::iter::empty::<f64>().sum(), true), "0");
    }
}
