//! The binary itself, started as an operator might by mistake: outside clknetsim.

#[test]
fn the_binary_refuses_outside_clknetsim() {
    let config = std::env::temp_dir().join(format!("simnode-{}.toml", std::process::id()));
    std::fs::write(&config, "[clock]\nbackend = \"system\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata-simnode"))
        .args(["--config", config.to_str().unwrap()])
        .env_remove("CLKNETSIM_NODE")
        .env("LD_PRELOAD", "")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&config);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to run outside clknetsim"));
}
