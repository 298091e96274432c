//! Bearer tokens for the TCP listener and the roles they carry, as Astra
//! Control has them: owner and admin may do everything; a member is
//! constrained to namespaces, by name or by label selector.
//!
//! The tokens file (TOML) holds only the BLAKE3 hash of each token, so a copy
//! of the file does not grant access. `ferry token hash` prints a token's hash.
//!
//! ```toml
//! [[token]]
//! name = "ci"
//! hash = "blake3:6f0c…"            # or the bare 64 hex digits
//! role = "member"                  # owner | admin | member
//! namespaces = ["shop", "web"]     # members: allowed source namespaces by name
//! namespace_selector = "team=shop" # members: or by the namespace's labels
//! ```
//!
//! A member's access is decided per source namespace ([`Principal::grant`])
//! from facts recorded with the clone when it was submitted
//! ([`SourceNamespace`]: the namespace's name and the labels the daemon read
//! from the source cluster then), so that it never needs the cluster later
//! and cannot change under an existing clone.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ferry_steps::object::RUN_LABEL;
use ferry_steps::selector::LabelSelector;
use serde::{Deserialize, Serialize};

/// A tokens file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("cannot read tokens file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key.
    #[error("tokens file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key and line.
        message: String,
    },
    /// An entry has a bad value.
    #[error("tokens file {}: `token[{index}]` ({name}): key `{key}`: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The entry's position.
        index: usize,
        /// The entry's name.
        name: String,
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// What a principal may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything; the Unix socket is owner.
    Owner,
    /// Everything.
    Admin,
    /// Only clones from its namespaces.
    Member,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    hash: String,
    role: Role,
    #[serde(default)]
    namespaces: Vec<String>,
    namespace_selector: Option<String>,
}

/// Who is asking, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (`unix-socket` for the socket).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// A member's allowed source namespaces, by name.
    pub namespaces: Vec<String>,
    /// A member's allowed source namespaces, by label selector (equality
    /// terms, comma-separated), parsed.
    pub namespace_selector: Option<LabelSelector>,
}

/// A source namespace of a clone as recorded when it was submitted: its
/// name and the labels the daemon read from the source cluster then.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceNamespace {
    /// The namespace.
    pub name: String,
    /// Its labels at submit; `None` when they were not read (the namespace
    /// was absent, the cluster could not be read, or the clone predates
    /// label recording).
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl SourceNamespace {
    /// A namespace known by name only (no labels recorded).
    pub fn named(name: impl Into<String>) -> Self {
        SourceNamespace {
            name: name.into(),
            labels: None,
        }
    }
}

/// Why a principal may use a source namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Grant {
    /// Owner or admin: every namespace.
    Role,
    /// The namespace is among the member's `namespaces`.
    Name,
    /// The namespace's recorded labels match the member's `namespace_selector`.
    Selector,
}

impl Principal {
    /// The owner reached through the Unix socket (file permissions are its
    /// authentication).
    pub fn socket_owner() -> Principal {
        Principal {
            name: "unix-socket".into(),
            role: Role::Owner,
            namespaces: Vec::new(),
            namespace_selector: None,
        }
    }

    /// Why this principal may use source namespace `ns`, if it may.
    ///
    /// Owner and admin: always. A member: when `ns` is among its namespaces
    /// by name, or when its recorded labels match its selector. Labels that
    /// were not recorded match nothing (deny by default). Nor do the labels
    /// of a namespace ferry created (it carries `ferry.dev/run`): they were
    /// copied from its source and chosen by whoever cloned it, so being
    /// allowed a source namespace gives no access to its clones'
    /// destination namespaces; name them to allow them.
    pub fn grant(&self, ns: &SourceNamespace) -> Option<Grant> {
        match self.role {
            Role::Owner | Role::Admin => Some(Grant::Role),
            Role::Member if self.namespaces.contains(&ns.name) => Some(Grant::Name),
            Role::Member => match (&self.namespace_selector, &ns.labels) {
                (Some(sel), Some(labels))
                    if !labels.contains_key(RUN_LABEL) && sel.matches(labels) =>
                {
                    Some(Grant::Selector)
                }
                _ => None,
            },
        }
    }

    /// Whether this principal may see and act on a clone whose source
    /// namespaces are `sources`: owner and admin always; a member when the
    /// clone names at least one source namespace and [`Principal::grant`]
    /// allows every one.
    pub fn may_access(&self, sources: &[SourceNamespace]) -> bool {
        match self.role {
            Role::Owner | Role::Admin => true,
            Role::Member => !sources.is_empty() && sources.iter().all(|s| self.grant(s).is_some()),
        }
    }

    /// Whether deciding on `ns` needs its labels: a member with a selector
    /// that does not name it.
    pub fn needs_labels(&self, ns: &str) -> bool {
        self.role == Role::Member
            && self.namespace_selector.is_some()
            && !self.namespaces.iter().any(|n| n == ns)
    }

    /// Whether this principal may act on every clone (owner and admin).
    pub fn unrestricted(&self) -> bool {
        matches!(self.role, Role::Owner | Role::Admin)
    }

    /// Whether this principal may delete records (owner and admin only: a
    /// record is the audit trail).
    pub fn may_delete(&self) -> bool {
        matches!(self.role, Role::Owner | Role::Admin)
    }
}

/// The loaded tokens, by hash.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<String, Principal>,
}

impl Tokens {
    /// Reads and validates a tokens file.
    ///
    /// # Errors
    /// [`Error::Read`], [`Error::Parse`], [`Error::Invalid`] naming the entry and key.
    pub fn load(path: &Path) -> Result<Tokens, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Tokens::parse(&text, path)
    }

    /// Parses tokens file text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Tokens, Error> {
        let file: File = toml::from_str(text).map_err(|e| Error::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let mut by_hash = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for (index, e) in file.token.into_iter().enumerate() {
            let invalid = |key, reason: String| Error::Invalid {
                path: path.to_owned(),
                index,
                name: e.name.clone(),
                key,
                reason,
            };
            if e.name.trim().is_empty() {
                return Err(invalid("name", "is empty".into()));
            }
            if !names.insert(e.name.clone()) {
                return Err(invalid(
                    "name",
                    "is used by an earlier entry; names are unique".into(),
                ));
            }
            let hash = e
                .hash
                .strip_prefix("blake3:")
                .unwrap_or(&e.hash)
                .to_ascii_lowercase();
            if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid(
                    "hash",
                    "is not a BLAKE3 hash (64 hex digits); put `ferry token hash`'s output here, never the token".into(),
                ));
            }
            match e.role {
                Role::Member if e.namespaces.is_empty() && e.namespace_selector.is_none() => {
                    return Err(invalid(
                        "namespaces",
                        "a member needs namespaces or namespace_selector".into(),
                    ));
                }
                Role::Owner | Role::Admin
                    if !e.namespaces.is_empty() || e.namespace_selector.is_some() =>
                {
                    return Err(invalid(
                        "role",
                        "only members take namespace constraints".into(),
                    ));
                }
                _ => {}
            }
            let namespace_selector = match &e.namespace_selector {
                Some(sel) => {
                    check_selector(sel).map_err(|r| invalid("namespace_selector", r))?;
                    Some(
                        LabelSelector::parse(sel)
                            .map_err(|r| invalid("namespace_selector", r.to_string()))?,
                    )
                }
                None => None,
            };
            let principal = Principal {
                name: e.name.clone(),
                role: e.role,
                namespaces: e.namespaces.clone(),
                namespace_selector,
            };
            if by_hash.insert(hash, principal).is_some() {
                return Err(invalid("hash", "is the same as an earlier entry's".into()));
            }
        }
        Ok(Tokens { by_hash })
    }

    /// The principal a presented bearer token authenticates, if any.
    pub fn authenticate(&self, token: &str) -> Option<&Principal> {
        // Looking up the hash, not the token, keeps the comparison free of
        // timing leaks about the token itself.
        self.by_hash.get(&hash_token(token))
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// The hex BLAKE3 hash of a token, as the tokens file stores it.
pub fn hash_token(token: &str) -> String {
    blake3::hash(token.trim().as_bytes()).to_hex().to_string()
}

/// A new random token: 32 random bytes (the OS-seeded CSPRNG), hex, with a
/// `ferry_` prefix so a leaked one is easy to recognise.
pub fn generate_token() -> String {
    use rand::RngCore;
    let mut buf = [0u8; 32];
    rand::rng().fill_bytes(&mut buf);
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    format!("ferry_{hex}")
}

/// Checks an equality-based label selector: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated.
fn check_selector(sel: &str) -> Result<(), String> {
    if sel.trim().is_empty() {
        return Err("is empty".into());
    }
    for term in sel.split(',') {
        let term = term.trim();
        let key = term
            .split_once("!=")
            .or_else(|| term.split_once("=="))
            .or_else(|| term.split_once('='))
            .map(|(k, v)| (k, Some(v)))
            .unwrap_or((term.strip_prefix('!').unwrap_or(term), None));
        let label_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        };
        if !label_ok(key.0.trim())
            || key
                .1
                .is_some_and(|v| !v.trim().is_empty() && !label_ok(v.trim()))
        {
            return Err(format!(
                "term {term:?} is not an equality-based label selector (k=v, k!=v, k, !k)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Tokens, Error> {
        Tokens::parse(text, Path::new("tokens.toml"))
    }

    #[test]
    fn authenticates_by_hash() {
        let text = format!(
            "[[token]]\nname = \"ci\"\nhash = \"blake3:{}\"\nrole = \"member\"\nnamespaces = [\"shop\"]\n",
            hash_token("secret-token")
        );
        let t = parse(&text).unwrap();
        let p = t.authenticate("secret-token").unwrap();
        assert_eq!(p.role, Role::Member);
        assert!(t.authenticate("other").is_none());
        let named = |names: &[&str]| -> Vec<SourceNamespace> {
            names.iter().map(|n| SourceNamespace::named(*n)).collect()
        };
        assert!(p.may_access(&named(&["shop"])));
        assert!(!p.may_access(&named(&["shop", "bank"])));
        assert!(!p.may_access(&[]));
        assert!(!p.may_delete());
    }

    fn labelled(name: &str, labels: &[(&str, &str)]) -> SourceNamespace {
        SourceNamespace {
            name: name.into(),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn a_selector_member_is_granted_by_recorded_labels_only() {
        let text = format!(
            "[[token]]\nname = \"team\"\nhash = \"{}\"\nrole = \"member\"\nnamespaces = [\"web\"]\nnamespace_selector = \"team=shop, tier!=secret, !frozen\"\n",
            hash_token("t")
        );
        let t = parse(&text).unwrap();
        let p = t.authenticate("t").unwrap();
        let shop = labelled("shop", &[("team", "shop")]);
        assert_eq!(p.grant(&shop), Some(Grant::Selector));
        assert_eq!(p.grant(&SourceNamespace::named("web")), Some(Grant::Name));
        // Every term must hold.
        for denied in [
            labelled("bank", &[("team", "bank")]),
            labelled("shop", &[("team", "shop"), ("tier", "secret")]),
            labelled("shop", &[("team", "shop"), ("frozen", "")]),
            labelled("shop", &[]),
            // Labels not recorded (an older clone, or unreadable): deny.
            SourceNamespace::named("shop"),
            // A namespace ferry made: its labels were copied by whoever cloned it.
            labelled("shop-copy", &[("team", "shop"), (RUN_LABEL, "0190")]),
        ] {
            assert_eq!(p.grant(&denied), None, "{denied:?}");
        }
        assert!(p.may_access(&[shop.clone(), SourceNamespace::named("web")]));
        assert!(!p.may_access(&[shop, labelled("bank", &[("team", "bank")])]));
        assert!(p.needs_labels("shop"));
        assert!(!p.needs_labels("web"));
        let owner = Principal::socket_owner();
        assert_eq!(owner.grant(&SourceNamespace::named("x")), Some(Grant::Role));
        assert!(!owner.needs_labels("x"));
    }

    #[test]
    fn bad_entries_are_named() {
        let h = hash_token("x");
        for (text, key) in [
            (
                "[[token]]\nname = \"a\"\nhash = \"plain-token\"\nrole = \"admin\"\n",
                "hash",
            ),
            (
                &format!("[[token]]\nname = \"a\"\nhash = \"{h}\"\nrole = \"member\"\n"),
                "namespaces",
            ),
            (
                &format!(
                    "[[token]]\nname = \"a\"\nhash = \"{h}\"\nrole = \"admin\"\nnamespaces = [\"x\"]\n"
                ),
                "role",
            ),
            (
                &format!(
                    "[[token]]\nname = \"a\"\nhash = \"{h}\"\nrole = \"member\"\nnamespace_selector = \"a b\"\n"
                ),
                "namespace_selector",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{e}");
        }
        let e = parse("[[token]]\nname = \"a\"\nhash = \"x\"\nrole = \"king\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("king"), "{e}");
        let e = parse("[[token]]\nname = \"a\"\ntoken = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("token"), "{e}");
    }

    #[test]
    fn generated_tokens_differ() {
        assert_ne!(generate_token(), generate_token());
    }
}
