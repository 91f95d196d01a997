//! The host's mount table as hutch sees it, and lazy unmounting of everything hutch mounted
//! below one directory (a container's rootfs, a half-finished rootfs build).

use std::path::{Path, PathBuf};

/// Decodes the octal escapes (`\040` for space, ...) the kernel uses in `mountinfo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("x");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points listed in a `mountinfo` text, in table order.
pub fn parse_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

/// Mount points of this process's mount namespace at or below `dir`, deepest last.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mount_points(&text)
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Lazily unmounts every mount at or below `dir`, deepest first (stacked mounts too).
/// Returns the mount points that could not be unmounted.
pub fn unmount_below(dir: &Path) -> Vec<PathBuf> {
    // A mount point can carry several stacked mounts; a few passes take them all.
    for _ in 0..8 {
        let mut points = mounts_below(dir);
        if points.is_empty() {
            return Vec::new();
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in &points {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    mounts_below(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_unescapes() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /proc rw - proc proc rw\n";
        assert_eq!(
            parse_mount_points(text),
            vec![PathBuf::from("/mnt/with space"), PathBuf::from("/proc")]
        );
    }

    #[test]
    fn this_process_sees_its_root() {
        assert!(!mounts_below(Path::new("/")).is_empty());
    }
}
