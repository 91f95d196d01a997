//! Content digests: a reader that hashes what passes through it, counts it against a bound,
//! and reports progress, so a blob is checked in the same pass that uses it.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// `sha256:` and 64 lower-case hex digits, the only digest algorithm hutch accepts.
pub fn is_sha256(digest: &str) -> bool {
    hex_of(digest).is_some()
}

/// The hex part of a `sha256:` digest.
pub fn hex_of(digest: &str) -> Option<&str> {
    digest.strip_prefix("sha256:").filter(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The `sha256:` digest of `bytes`.
pub fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads through to `inner`, hashing and counting; past `limit` bytes reading fails with
/// [`io::ErrorKind::FileTooLarge`] (a blob longer than its descriptor says, a decompression
/// bomb). `on_bytes` is told the running count about every MiB.
pub struct Verifying<'a, R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    limit: u64,
    reported: u64,
    on_bytes: Option<Box<dyn FnMut(u64) + 'a>>,
}

impl<'a, R: Read> Verifying<'a, R> {
    /// Wraps `inner`, refusing more than `limit` bytes.
    pub fn new(inner: R, limit: u64) -> Self {
        Verifying {
            inner,
            hasher: Sha256::new(),
            read: 0,
            limit,
            reported: 0,
            on_bytes: None,
        }
    }

    /// Reports the count to `f` as it grows.
    pub fn reporting(mut self, f: impl FnMut(u64) + 'a) -> Self {
        self.on_bytes = Some(Box::new(f));
        self
    }

    /// Reads the rest (a tar stream may end before its padding does), then returns the
    /// digest and the count.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        if let Some(f) = self.on_bytes.as_mut() {
            f(self.read);
        }
        Ok((
            format!("sha256:{}", hex(&self.hasher.finalize())),
            self.read,
        ))
    }
}

impl<R: Read> Read for Verifying<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("more than {} bytes", self.limit),
            ));
        }
        self.hasher.update(&buf[..n]);
        if self.read - self.reported >= 1 << 20 {
            self.reported = self.read;
            if let Some(f) = self.on_bytes.as_mut() {
                f(self.read);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_counts_and_bounds() {
        let data = vec![7u8; 3000];
        let (digest, n) = Verifying::new(&data[..], 3000).finish().expect("read");
        assert_eq!((digest, n), (sha256_of(&data), 3000));
        let e = Verifying::new(&data[..], 2999).finish().expect_err("bound");
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert!(is_sha256(&sha256_of(b"")));
        assert!(!is_sha256("sha256:ABC"));
        assert!(!is_sha512_accepted());
    }

    fn is_sha512_accepted() -> bool {
        is_sha256(&format!("sha512:{}", "a".repeat(128)))
    }
}
