//! The daemons' configuration files and the controller's tokens file from untrusted text:
//! parsing and validation must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = hutch_agent::config::parse_file(text) {
        let _ = hutch_agent::config::resolve(Default::default(), file);
    }
    if let Ok(file) = hutch_agent::config::parse_toml::<hutch_controller::config::FileConfig>(text) {
        let _ = hutch_controller::config::resolve(Default::default(), file);
    }
    let _ = hutch_agent::service::auth::Tokens::parse(text);
});
