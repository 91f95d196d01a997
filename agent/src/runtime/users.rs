//! Users by name (`-u www-data`, `-u app:staff`): looked up in the rootfs's own
//! `/etc/passwd` and `/etc/group`, which are opened inside the rootfs
//! (`openat2(RESOLVE_IN_ROOT)`: a symlink there cannot point the lookup at the node's files).
//! The parsers are pure.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Largest account file read.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// The uid and primary gid of `name` in a passwd text.
pub fn passwd_entry(text: &str, name: &str) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 4 && fields[0] == name)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// The gid of group `name` in a group text.
pub fn group_entry(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 3 && fields[0] == name)
            .then(|| fields[2].parse().ok())
            .flatten()
    })
}

/// A file of the rootfs whose layers are `layers` (top first): read from the topmost layer
/// that has it, without leaving that layer.
fn read_in_layers(layers: &[PathBuf], file: &str) -> Result<String, String> {
    let mut first_error = None;
    for root in layers {
        match read_in_root(root, file) {
            Ok(text) => return Ok(text),
            Err((errno, message)) => {
                first_error.get_or_insert(message);
                if errno != Some(nix::errno::Errno::ENOENT) {
                    break;
                }
            }
        }
    }
    Err(first_error.unwrap_or_else(|| format!("/{file}: the rootfs has no layer")))
}

/// A file of the rootfs at `root`, read without leaving it; the error's errno tells a
/// missing file.
fn read_in_root(root: &Path, file: &str) -> Result<String, (Option<nix::errno::Errno>, String)> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| (None, format!("opening the rootfs: {e}")))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root_fd.as_fd(), file, how).map_err(|e| (Some(e), format!("/{file}: {e}")))?;
    // A FIFO or a device there would block or do worse: only a plain file is read.
    let regular = nix::sys::stat::fstat(fd.as_fd())
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
    if !regular {
        return Err((None, format!("/{file} in the rootfs is not a plain file")));
    }
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| (None, format!("/{file}: {e}")))?;
    Ok(text)
}

/// The uid and gid of `spec` (`NAME` or `NAME:GROUP`, GROUP a name or a number) in the
/// rootfs whose layers are `layers` (top first); the error says what is missing.
pub fn resolve(layers: &[PathBuf], spec: &str) -> Result<(u32, u32), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_in_layers(layers, "etc/passwd")?;
    let (uid, primary) = passwd_entry(&passwd, user)
        .ok_or_else(|| format!("user '{user}' is not in the rootfs's /etc/passwd"))?;
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entry(&read_in_layers(layers, "etc/group")?, g)
                .ok_or_else(|| format!("group '{g}' is not in the rootfs's /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_by_name() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nbroken:x:nope:1::/:/bin/sh\n";
        assert_eq!(passwd_entry(passwd, "www-data"), Some((33, 33)));
        assert_eq!(passwd_entry(passwd, "root"), Some((0, 0)));
        assert_eq!(passwd_entry(passwd, "broken"), None);
        assert_eq!(passwd_entry(passwd, "www"), None);
        assert_eq!(
            group_entry("staff:x:50:\nusers:x:100:a,b\n", "users"),
            Some(100)
        );
        assert_eq!(group_entry("staff:x:50:\n", "nobody"), None);
    }

    #[test]
    fn lookups_stay_inside_the_root() {
        let root = std::env::temp_dir().join(format!("hutch-users-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        // An absolute link: inside the root it means root/elsewhere, which has no file.
        std::os::unix::fs::symlink("/etc/passwd", root.join("etc/group")).expect("symlink");
        std::fs::write(root.join("etc/passwd"), "app:x:1000:1000::/:/bin/sh\n").expect("write");
        let layers = [root.clone()];
        assert_eq!(resolve(&layers, "app"), Ok((1000, 1000)));
        assert_eq!(resolve(&layers, "app:7"), Ok((1000, 7)));
        // etc/group -> /etc/passwd resolves to root/etc/passwd, which has no group 'root'.
        assert!(resolve(&layers, "app:root").is_err());
        assert!(resolve(&layers, "ghost").is_err());
        // An image: the top layer without the file, the one below with it.
        let top = root.join("top");
        std::fs::create_dir_all(&top).expect("mkdir");
        assert_eq!(resolve(&[top, root.clone()], "app"), Ok((1000, 1000)));
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
