//! `--env-file FILE`, as Docker reads it: one `KEY=VALUE` per line, taken as written (no
//! quotes removed, no variables expanded); a line with only `KEY` takes the variable from
//! this process's environment (skipped when unset); blank lines and lines starting with `#`
//! are skipped.

/// The variables of an env file's `text`; `lookup` reads this process's environment.
pub(crate) fn parse_env_file(
    file: &str,
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (line.trim_end(), None),
        };
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            return Err(format!(
                "{file}:{}: '{raw}' is not KEY=VALUE (a key has no spaces)",
                i + 1
            ));
        }
        match value.or_else(|| lookup(key)) {
            Some(v) => out.push((key.to_string(), v)),
            None => continue,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_docker_reads_it() {
        let text = "# comment\n\nA=1\nB=two words\nC=\"quoted\"\nFROM_HOST\nUNSET\n  D=x=y\n";
        let vars = parse_env_file("f", text, |k| (k == "FROM_HOST").then(|| "h".to_string()))
            .expect("valid");
        assert_eq!(
            vars,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "\"quoted\"".into()),
                ("FROM_HOST".into(), "h".into()),
                ("D".into(), "x=y".into()),
            ]
        );
        let e = parse_env_file("f", "OK=1\nBAD KEY=2\n", |_| None).expect_err("bad");
        assert!(e.starts_with("f:2:"), "{e}");
        assert!(parse_env_file("f", "=x\n", |_| None).is_err());
    }
}
