//! Small filesystem helpers shared by the store, the runtime and the supervisor.

use std::fs;
use std::io;
use std::path::Path;

use hutch_core::atomic_file::Durability;

/// Writes `data` to `path` atomically and durably: a temporary file in the same directory is
/// written, fsynced and renamed over `path`, and the directory is fsynced. A reader sees
/// either the old content or the new one, never a torn write, even across a power loss.
/// For data that must outlive the host (rootfs metadata, the event log).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, Durability::Synced)
}

/// Writes `data` to `path` atomically, without waiting for the disk, nor asking it to write
/// (see [`Durability::Volatile`]): readers and a restarted agent see the old content or the
/// new one, never a torn write, but a host crash may leave the file empty. For records that
/// describe live processes (a container's config and state), which a host crash ends
/// anyway: after a reboot the container is gone whatever its record says, and the agent
/// reports it so (an unreadable record as a failed container). Saves two fsyncs per write
/// on the start path, and the data write ext4 starts at a rename over a file.
pub fn replace_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, Durability::Volatile)
}

fn replace(path: &Path, data: &[u8], durability: Durability) -> io::Result<()> {
    hutch_core::atomic_file::replace(path, data, 0o666, durability)
}

/// Writes `value` as pretty JSON to `path` atomically and durably (see [`write_atomic`]).
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_atomic(path, &data)
}

/// Writes `value` as JSON to `path` atomically, not durably (see [`replace_atomic`]).
pub fn replace_json<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    replace_atomic(path, &data)
}

/// Writes `value` as JSON to `path` atomically, not waiting for the disk, but never empty
/// after a crash on ext4 (see [`Durability::Ordered`]). For records of what outlives a
/// crash (a network attachment's leases).
pub fn replace_json_ordered<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    replace(path, &data, Durability::Ordered)
}

/// Reads JSON from `path`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<T> {
    let data = fs::read(path)?;
    serde_json::from_slice(&data).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Total size in bytes of the regular files below `path` (symlinks not followed, each
/// hard-linked inode counted once per link, as `du --apparent-size` roughly does).
pub fn disk_usage(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

/// Microseconds since the Unix epoch (a container's start timeline).
pub fn unix_micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, as stored in state records.
pub fn unix_millis_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
