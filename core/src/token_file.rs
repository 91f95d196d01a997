//! Secrets read from files: a token given as a flag shows in `ps` to every user of the host,
//! so every flag that takes a token has a `*-file` twin (and an environment variable).

use std::path::Path;

/// The largest token file read: a token is a line, not a document.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// The token in `path`: its content with surrounding whitespace (the final newline) trimmed.
/// Errors name the file and say what is wrong with it.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let fail = |e: &dyn std::fmt::Display| format!("token file {}: {e}", path.display());
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| fail(&e))?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(fail(&format_args!(
            "longer than {MAX_TOKEN_FILE_BYTES} bytes: it should hold one token"
        )));
    }
    let token = text.trim();
    if token.is_empty() {
        return Err(fail(&"empty"));
    }
    if token.contains(char::is_whitespace) {
        return Err(fail(&"holds more than one word: it should hold one token"));
    }
    Ok(token.to_string())
}

/// The token given either directly or in a file (at most one of the two; clap's
/// `conflicts_with` keeps users from giving both).
pub fn token_from(direct: Option<String>, file: Option<&Path>) -> Result<Option<String>, String> {
    match (direct, file) {
        (Some(token), _) => Ok(Some(token)),
        (None, Some(path)) => read_token_file(path).map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_holds_one_token() {
        let path = std::env::temp_dir().join(format!("hutch-token-{}", std::process::id()));
        std::fs::write(&path, "  abc123\n").expect("write");
        assert_eq!(read_token_file(&path), Ok("abc123".into()));
        assert_eq!(token_from(None, Some(&path)), Ok(Some("abc123".into())));
        assert_eq!(token_from(Some("x".into()), None), Ok(Some("x".into())));
        std::fs::write(&path, "\n").expect("write");
        assert!(read_token_file(&path).expect_err("empty").contains("empty"));
        std::fs::write(&path, "a b").expect("write");
        assert!(read_token_file(&path)
            .expect_err("two")
            .contains("one token"));
        std::fs::write(&path, "a".repeat(5000)).expect("write");
        assert!(read_token_file(&path).expect_err("long").contains("longer"));
        let _ = std::fs::remove_file(&path);
        assert!(read_token_file(&path)
            .expect_err("missing")
            .contains(&path.display().to_string()));
    }
}
