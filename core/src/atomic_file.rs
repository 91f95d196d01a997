//! Replacing a file atomically: readers (and a restarted daemon) see the old content or the
//! new one, never a torn write. The one way hutch writes its records, certificates and keys.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `data` to `path` through a temporary file in the same directory and a rename.
/// `mode` is the new file's permission bits (before the umask); with `durable`, the data and
/// the rename are on disk (two fsyncs) before this returns.
pub fn replace(path: &Path, data: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // Unique per process and call, so concurrent writers never share a temporary file.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        file_name.to_string_lossy(),
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            if durable {
                f.sync_all()?;
            }
            Ok(())
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_with_the_mode_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("hutch-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("key.pem");
        replace(&file, b"one", 0o600, true).expect("write");
        replace(&file, b"two", 0o600, false).expect("replace");
        assert_eq!(fs::read(&file).expect("read"), b"two");
        let mode = fs::metadata(&file).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(&dir).expect("ls").flatten().collect();
        assert_eq!(names.len(), 1, "only the file itself is left");
        assert!(replace(&dir.join("missing/x"), b"x", 0o644, false).is_err());
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
