//! `strata-control`: a shim over the library, so that its parts can be linked elsewhere
//! (`strata-simnode`, the tests).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    strata_control::main()
}
