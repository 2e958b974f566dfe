//! The configuration file (TOML) on arbitrary text: never a panic; every refusal
//! points at a line and column inside the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strata_config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_str(text, Path::new("strata.toml")) {
        Ok(_) => {}
        Err(ConfigError::Invalid { line, column, message, .. }) => {
            let lines = text.split('\n').count();
            assert!((1..=lines).contains(&line), "line {line} of {lines}: {message}");
            let width = text.split('\n').nth(line - 1).map_or(0, |l| l.chars().count());
            assert!((1..=width + 1).contains(&column), "column {column} of {width} on line {line}: {message}");
            assert!(!message.is_empty());
        }
        Err(e @ ConfigError::Read { .. }) => panic!("read error without a read: {e}"),
    }
});
