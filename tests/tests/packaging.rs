//! The deployment files pass their own tools: `docker-compose config`, `promtool check
//! rules` and `promtool test rules`, JSON/YAML parsing of the dashboard and the Kubernetes
//! manifests, `systemd-analyze verify` where present (`scripts/check-packaging`).

use std::path::Path;
use std::process::Command;

#[test]
fn deployment_files_pass_their_checkers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("scripts/check-packaging"))
        .current_dir(&root)
        .output()
        .expect("run scripts/check-packaging");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for checked in [
        "docker/compose.yaml",
        "promtool check rules",
        "promtool test rules",
    ] {
        assert!(text.contains(checked), "{checked} not run:\n{text}");
    }
}
