//! `strata-simnode`: a shim over the library (see there).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    strata_simnode::main()
}
