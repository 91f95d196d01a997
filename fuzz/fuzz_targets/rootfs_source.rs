//! A rootfs build request from untrusted bytes (BuildRootfs): decoding, conversion and
//! validation of the source (debootstrap suite, variant, packages, mirror; tarball,
//! directory or cpio paths) must never panic.
#![no_main]

use hutch_core::convert::rootfs_from;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(wire) = hutch_proto::v1::RootfsSpec::decode(data) {
        if let Ok((_name, source)) = rootfs_from(Some(wire)) {
            let _ = source.validate();
            let _ = source.describe();
        }
    }
});
