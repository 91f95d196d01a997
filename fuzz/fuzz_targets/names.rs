//! Names of containers, rootfs entries and nodes, which become paths and cgroup names:
//! validation must never panic, and what it accepts must be a single safe path component.
#![no_main]

use hutch_core::names::validate_name;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    if validate_name("name", name).is_ok() {
        assert!(!name.is_empty() && name != "." && name != "..", "{name:?}");
        assert!(!name.contains('/') && !name.contains('\0'), "{name:?}");
        let path = std::path::Path::new("/base").join(name);
        assert_eq!(path.parent(), Some(std::path::Path::new("/base")), "{name:?}");
    }
});
