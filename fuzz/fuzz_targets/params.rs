//! The params file (`src/config.rs`): ScaleOut's `name value` lines, then the cross-parameter
//! checks `Config::load` runs. Files are local, but a hostile or corrupt file must give an
//! error naming the line, never a panic.
//!
//! Holds: no panic; a file that applies and validates renders its values (`Config::values`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use stategrid::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // `load` reads with read_to_string: not UTF-8 is an I/O error before parsing
    };
    let mut c = Config::default();
    if c.apply_file_text(Path::new("fuzz.conf"), text).is_ok() && c.validate().is_ok() {
        let _ = c.values();
    }
});
