//! Finds the Debian mirror this host already uses, so hutch never hard-codes one: the first
//! `deb` archive URI in `/etc/apt/sources.list.d/*.sources` (deb822 format), then in
//! `/etc/apt/sources.list` (one-line format). Security, updates and backports entries are
//! passed over: they do not carry the base suites `debootstrap` needs.

use std::fs;
use std::path::Path;

/// Returns the first Debian archive URI configured on this host, if any.
pub fn host_debian_mirror() -> Option<String> {
    host_debian_mirror_in(Path::new("/etc/apt"))
}

/// As [`host_debian_mirror`], reading the apt configuration below `apt_dir`.
pub fn host_debian_mirror_in(apt_dir: &Path) -> Option<String> {
    let mut files: Vec<_> = fs::read_dir(apt_dir.join("sources.list.d"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "sources"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    for f in files {
        if let Some(uri) = fs::read_to_string(&f)
            .ok()
            .and_then(|t| first_uri_deb822(&t))
        {
            return Some(uri);
        }
    }
    fs::read_to_string(apt_dir.join("sources.list"))
        .ok()
        .and_then(|t| first_uri_one_line(&t))
}

fn is_base_suite(suite: &str) -> bool {
    !["-security", "-updates", "-backports", "-proposed-updates"]
        .iter()
        .any(|s| suite.ends_with(s))
        && !suite.contains('/')
}

/// First base-suite `deb` URI in a deb822 `.sources` file.
pub fn first_uri_deb822(text: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let mut types = "";
        let mut uris = "";
        let mut suites = "";
        let mut enabled = true;
        for line in stanza.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types = value.trim(),
                "uris" => uris = value.trim(),
                "suites" => suites = value.trim(),
                "enabled" => enabled = !value.trim().eq_ignore_ascii_case("no"),
                _ => {}
            }
        }
        if enabled
            && types.split_whitespace().any(|t| t == "deb")
            && suites.split_whitespace().any(is_base_suite)
        {
            if let Some(uri) = uris.split_whitespace().next() {
                return Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

/// First base-suite `deb` URI in a one-line `sources.list`.
pub fn first_uri_one_line(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let end = rest.iter().position(|w| w.ends_with(']')).unwrap_or(0);
            rest.drain(..=end);
        }
        if let (Some(uri), Some(suite)) = (rest.first(), rest.get(1)) {
            if is_base_suite(suite) {
                return Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_skips_security_and_src() {
        let text = "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n\
                    Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\n\n\
                    Types: deb\n# comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n";
        assert_eq!(
            first_uri_deb822(text).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn deb822_respects_enabled_no() {
        let text = "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\n";
        assert_eq!(first_uri_deb822(text), None);
    }

    #[test]
    fn one_line_with_options() {
        let text = "# deb http://commented.example/debian bookworm main\n\
                    deb http://sec.example/debian-security bookworm-security main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            first_uri_one_line(text).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn reads_a_directory() {
        let dir = std::env::temp_dir().join(format!("hutch-apt-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sources.list.d")).expect("mkdir");
        std::fs::write(
            dir.join("sources.list"),
            "deb http://list.example/debian bookworm main\n",
        )
        .expect("write");
        assert_eq!(
            host_debian_mirror_in(&dir).as_deref(),
            Some("http://list.example/debian")
        );
        std::fs::write(
            dir.join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://d822.example/debian\nSuites: bookworm\n",
        )
        .expect("write");
        assert_eq!(
            host_debian_mirror_in(&dir).as_deref(),
            Some("http://d822.example/debian")
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
