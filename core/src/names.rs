//! Names that end up in paths on the host (container ids, rootfs names, cgroup instance
//! names). The agent never trusts them: a name is one path component made of a small
//! alphabet, so `..`, `/`, NUL or an absolute path can never reach the filesystem.

use thiserror::Error;

/// The name every controller certificate carries: clients check for it whatever address
/// they dialed.
pub const CONTROLLER_TLS_NAME: &str = "controller.hutch";

/// Longest accepted name; keeps paths, cgroup names and hostnames short.
pub const MAX_NAME_LEN: usize = 63;

/// Why a name was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// What kind of name this is ("container id", "rootfs name", ...).
        kind: &'static str,
    },
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("{kind} '{name}' is {len} characters long; the limit is {MAX_NAME_LEN}")]
    TooLong {
        /// What kind of name this is.
        kind: &'static str,
        /// The offending name.
        name: String,
        /// Its length.
        len: usize,
    },
    /// The name has a character outside `[A-Za-z0-9_.-]`, or starts with something other
    /// than a letter or digit (which rules out `.`, `..` and hidden files).
    #[error(
        "{kind} '{name}' is not allowed: use letters, digits, '_', '.' and '-', starting with a letter or digit (no '/', no '..')"
    )]
    BadCharacters {
        /// What kind of name this is.
        kind: &'static str,
        /// The offending name.
        name: String,
    },
}

/// Checks that `name` is safe to use as a single path component.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            name: name.to_string(),
            len: name.len(),
        });
    }
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || name.contains("..") {
        return Err(NameError::BadCharacters {
            kind,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Where fresh names take their randomness from.
const RANDOM_SOURCE: &str = "/dev/urandom";

/// A fresh container name, `c-` and 12 random hex digits, for requests that give none.
/// Fails (rather than giving every container the same name) when no randomness can be read.
pub fn random_container_name() -> std::io::Result<String> {
    random_name("c-")
}

/// A fresh name: `prefix` and 12 random hex digits.
pub fn random_name(prefix: &str) -> std::io::Result<String> {
    random_name_from(std::path::Path::new(RANDOM_SOURCE), prefix)
}

fn random_name_from(source: &std::path::Path, prefix: &str) -> std::io::Result<String> {
    let mut bytes = [0u8; 6];
    std::fs::File::open(source)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("no random name: reading {}: {e}", source.display()),
            )
        })?;
    Ok(format!(
        "{prefix}{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in ["debian", "bookworm-minbase", "c1", "a.b_c-d", "X9"] {
            assert_eq!(validate_name("rootfs name", n), Ok(()), "{n}");
        }
    }

    #[test]
    fn refuses_path_tricks() {
        for n in [
            "..", ".", "../etc", "a/b", "/abs", ".hidden", "a..b", "a b", "a\0b", "-x",
        ] {
            assert!(
                validate_name("rootfs name", n).is_err(),
                "{n:?} must be refused"
            );
        }
    }

    #[test]
    fn refuses_empty_and_long() {
        assert!(matches!(
            validate_name("container id", ""),
            Err(NameError::Empty { .. })
        ));
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            validate_name("container id", &long),
            Err(NameError::TooLong { .. })
        ));
        assert_eq!(
            validate_name("container id", &"a".repeat(MAX_NAME_LEN)),
            Ok(())
        );
    }

    #[test]
    fn random_names_differ_and_a_failing_source_is_an_error() {
        let a = random_container_name().expect("random");
        let b = random_container_name().expect("random");
        assert!(a.starts_with("c-") && a.len() == 14, "{a}");
        assert_ne!(a, b);
        for broken in ["/dev/null", "/nonexistent/hutch-random"] {
            let err = random_name_from(std::path::Path::new(broken), "c-")
                .expect_err("an unreadable source must not give a name");
            assert!(err.to_string().contains(broken), "{err}");
        }
    }
}
