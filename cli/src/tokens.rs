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

use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The token's name (`unix-socket` for the socket).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// A member's allowed source namespaces, by name.
    pub namespaces: Vec<String>,
    /// A member's allowed source namespaces, by label selector (equality
    /// terms, comma-separated).
    pub namespace_selector: Option<String>,
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

    /// Whether this principal may see and act on a clone whose source
    /// namespaces are `sources`.
    ///
    /// Owner and admin: always. A member: only when the clone names at least
    /// one source namespace and every one is allowed by name. Label
    /// constraints are not evaluated yet, because they need the source
    /// namespace's labels, which submit will read from the source cluster
    /// and record with the clone; until then a namespace allowed only by a
    /// selector is denied (deny by default).
    pub fn may_access(&self, sources: &[String]) -> bool {
        match self.role {
            Role::Owner | Role::Admin => true,
            Role::Member => {
                !sources.is_empty()
                    && sources
                        .iter()
                        .all(|s| self.namespaces.iter().any(|n| n == s))
            }
        }
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
            if let Some(sel) = &e.namespace_selector {
                check_selector(sel).map_err(|r| invalid("namespace_selector", r))?;
            }
            let principal = Principal {
                name: e.name.clone(),
                role: e.role,
                namespaces: e.namespaces.clone(),
                namespace_selector: e.namespace_selector.clone(),
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
        assert!(p.may_access(&["shop".into()]));
        assert!(!p.may_access(&["shop".into(), "bank".into()]));
        assert!(!p.may_access(&[]));
        assert!(!p.may_delete());
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
