//! Python tools the tests drive (the official SDKs, Schemathesis), each in
//! a venv under `target/` made once per requirements file.
use std::path::{Path, PathBuf};

/// `target/<name>` with `requirements` (relative to the repository)
/// installed; remade when the file changes.
pub fn venv(name: &str, requirements: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join(name);
    let requirements = root.join(requirements);
    let stamp = venv.join("requirements.installed");
    let wanted = std::fs::read_to_string(&requirements).expect("requirements file");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return venv;
    }
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap_or_else(|e| {
            panic!("cannot run {cmd:?}: {e} (python3 with venv is needed for this test)")
        });
        assert!(
            out.status.success(),
            "{cmd:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(std::process::Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv));
    run(std::process::Command::new(venv.join("bin/python"))
        .args(["-m", "pip", "install", "-q", "-r"])
        .arg(&requirements));
    std::fs::write(&stamp, wanted).unwrap();
    venv
}
