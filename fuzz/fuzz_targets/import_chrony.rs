//! `strata import-chrony` on arbitrary chrony.conf text: never a panic, and what it
//! writes is always a configuration strata loads.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strata_config::{Config, chrony};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let import = chrony::import(text);
    if let Err(e) = Config::from_str(&import.toml, Path::new("imported.toml")) {
        panic!("{e}\n--- input:\n{text}\n--- output:\n{}", import.toml);
    }
    let lines = text.lines().count();
    for u in &import.unsupported {
        assert!((1..=lines).contains(&u.line), "line {} of {lines}", u.line);
    }
});
