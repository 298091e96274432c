//! Kubernetes label selectors in their string form (`app=web,tier!=cache,
//! env in (prod,staging),!legacy`), parsed once and matched against labels.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::error::{Error, Result};

/// A parsed label selector: every requirement must hold. The empty selector
/// matches everything.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    source: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
}

impl LabelSelector {
    /// Parses the string form used by `kubectl -l`.
    ///
    /// # Errors
    /// [`Error::BadSelector`] naming what is wrong.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::BadSelector {
            selector: s.to_owned(),
            reason: reason.to_owned(),
        };
        let mut requirements = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                if s.trim().is_empty() {
                    continue;
                }
                return Err(bad("empty requirement between commas"));
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(check_key(key.trim()).map_err(|r| bad(&r))?)
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(
                    check_key(k.trim()).map_err(|r| bad(&r))?,
                    check_value(v.trim()).map_err(|r| bad(&r))?,
                )
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(
                    check_key(k.trim()).map_err(|r| bad(&r))?,
                    check_value(v.trim()).map_err(|r| bad(&r))?,
                )
            } else if let Some((k, set)) = split_set(part, " notin ") {
                Requirement::NotIn(
                    check_key(k).map_err(|r| bad(&r))?,
                    parse_set(set).map_err(|r| bad(&r))?,
                )
            } else if let Some((k, set)) = split_set(part, " in ") {
                Requirement::In(
                    check_key(k).map_err(|r| bad(&r))?,
                    parse_set(set).map_err(|r| bad(&r))?,
                )
            } else {
                Requirement::Exists(check_key(part).map_err(|r| bad(&r))?)
            };
            requirements.push(req);
        }
        Ok(Self {
            requirements,
            source: s.to_owned(),
        })
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, set) => labels.get(k).is_some_and(|v| set.contains(v)),
            Requirement::NotIn(k, set) => labels.get(k).is_none_or(|v| !set.contains(v)),
        })
    }

    /// Whether the selector has no requirement (matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn split_set<'a>(part: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let (k, rest) = part.split_once(op)?;
    Some((k.trim(), rest.trim()))
}

fn parse_set(s: &str) -> std::result::Result<BTreeSet<String>, String> {
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("set {s:?} must be written (a,b,...)"))?;
    inner.split(',').map(|v| check_value(v.trim())).collect()
}

fn check_key(k: &str) -> std::result::Result<String, String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(crate::object::is_dns_subdomain);
    if name_ok && prefix_ok {
        Ok(k.to_owned())
    } else {
        Err(format!("{k:?} is not a valid label key"))
    }
}

fn check_value(v: &str) -> std::result::Result<String, String> {
    let ok = v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(format!("{v:?} is not a valid label value"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn parses_and_matches_every_form() {
        let s = LabelSelector::parse("app=web, tier!=cache,env in (prod,staging),!legacy,team")
            .unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "dev"), ("team", "a")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("team", "a"),
            ("legacy", "")
        ])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod")])));
        let n = LabelSelector::parse("env notin (prod)").unwrap();
        assert!(n.matches(&labels(&[])));
        assert!(!n.matches(&labels(&[("env", "prod")])));
        assert!(LabelSelector::parse("").unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_forms() {
        assert!(LabelSelector::parse("app=web,,x").is_err());
        assert!(LabelSelector::parse("-bad=1").is_err());
        assert!(LabelSelector::parse("env in prod").is_err());
        assert!(LabelSelector::parse("a=b c").is_err());
    }
}
