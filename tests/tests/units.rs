//! The systemd units in `deploy/` pass `systemd-analyze verify` without a
//! warning and keep their hardening: a state directory, a private umask,
//! no new privileges and a read-only system.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const UNITS: [&str; 3] = [
    "aiproxy.service",
    "aiproxy-controlplane.service",
    "aiproxy-dataplane.service",
];

#[test]
fn the_units_verify_and_stay_hardened() {
    let deploy = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy"));
    let dir = tempfile::tempdir().unwrap();
    for name in UNITS {
        let text = std::fs::read_to_string(deploy.join(name)).unwrap();
        for directive in [
            "User=aiproxy",
            "StateDirectory=aiproxy",
            "UMask=0077",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=\n",
            "SystemCallFilter=@system-service",
            "Environment=AIPROXY_DATA_DIR=/var/lib/aiproxy",
        ] {
            assert!(text.contains(directive), "{name} lacks {directive:?}");
        }
        // Verified as installed, with an executable that exists here.
        let copy = dir.path().join(name);
        std::fs::write(&copy, text.replace("/usr/local/bin/aiproxy", "/bin/true")).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("systemd-analyze (Debian's systemd package) runs");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{name}:\n{said}"
        );
    }
}
