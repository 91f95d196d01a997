//! A container spec from untrusted bytes, both ways it arrives: protobuf (the gRPC API) and
//! JSON (a `config.json` on disk). Decoding and validation must never panic.
#![no_main]

use hutch_core::convert::spec_from;
use hutch_core::spec::ContainerSpec;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(wire) = hutch_proto::v1::ContainerSpec::decode(data) {
        if let Ok(spec) = spec_from(wire) {
            let _ = spec.validate();
        }
    }
    if let Ok(spec) = serde_json::from_slice::<ContainerSpec>(data) {
        let _ = spec.validate();
        let _ = spec.security.capability_names();
    }
});
