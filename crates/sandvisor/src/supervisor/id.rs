//! Sandbox ids: what `create --id` accepts, and fresh ones when it is absent.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The longest id: 64 characters, like a Kata sandbox id.
pub const MAX_ID_LEN: usize = 64;

/// Ids that would collide with something else in the runtime directory:
/// `vm` is where backends keep their VM directories
/// ([`crate::paths::vm_storage_dir`]).
const RESERVED: &[&str] = &["vm"];

/// An id that is not a valid sandbox id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    /// Empty, too long, or with a character outside the allowed set.
    #[error("invalid sandbox id {0:?}: use 1 to 64 of A-Z a-z 0-9 _ . -, starting with a letter or digit")]
    Syntax(String),
    /// A name the runtime directory uses for itself.
    #[error("invalid sandbox id {0:?}: the name is reserved")]
    Reserved(String),
}

/// A validated sandbox id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`, not reserved.
///
/// It names the sandbox directory, so the rules keep it one path component
/// that is neither `.` nor `..`.
///
/// ```
/// use sandvisor::supervisor::SandboxId;
///
/// assert!("web-1".parse::<SandboxId>().is_ok());
/// assert!("../etc".parse::<SandboxId>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxId(String);

impl SandboxId {
    /// A fresh random id: 16 hex digits.
    pub fn generate() -> Self {
        let n: u64 = rand::thread_rng().gen();
        SandboxId(format!("{n:016x}"))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SandboxId {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<Self, InvalidId> {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !first_ok || !rest_ok || s.len() > MAX_ID_LEN {
            return Err(InvalidId::Syntax(s.to_string()));
        }
        if RESERVED.contains(&s) {
            return Err(InvalidId::Reserved(s.to_string()));
        }
        Ok(SandboxId(s.to_string()))
    }
}

impl TryFrom<String> for SandboxId {
    type Error = InvalidId;

    fn try_from(s: String) -> Result<Self, InvalidId> {
        s.parse()
    }
}

impl From<SandboxId> for String {
    fn from(id: SandboxId) -> String {
        id.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl AsRef<str> for SandboxId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let long_ok = "a".repeat(64);
        let too_long = "a".repeat(65);
        let cases: &[(&str, bool)] = &[
            ("a", true),
            ("0", true),
            ("web-1", true),
            ("a_b.c-d", true),
            (&long_ok, true),
            ("", false),
            (&too_long, false),
            ("-a", false),
            (".a", false),
            ("_a", false),
            ("a/b", false),
            ("..", false),
            (".", false),
            ("a b", false),
            ("é", false),
            ("vm", false),
        ];
        for (id, ok) in cases {
            assert_eq!(id.parse::<SandboxId>().is_ok(), *ok, "{id:?}");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_differ() {
        let a = SandboxId::generate();
        let b = SandboxId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().parse::<SandboxId>(), Ok(a.clone()));
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<SandboxId>("\"../x\"").is_err());
        let id: SandboxId = serde_json::from_str("\"x1\"").expect("valid id");
        assert_eq!(id.as_str(), "x1");
    }
}
