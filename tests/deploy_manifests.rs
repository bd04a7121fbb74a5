//! Offline checks of the deployment files: the kustomize base, the examples,
//! the Helm chart and the Dockerfile, through `deploy/tests/check_manifests.py`
//! (schemas from `kubernetes-validate`, Helm rendering from `helm-python-sdk`).
//!
//! Nothing is skipped: without python3 or its packages the tests fail and say
//! to run `scripts/install-deploy-deps.sh`. Each negative test copies the files
//! the checker reads into a temp dir, breaks one thing a real install would
//! trip over, and asserts the checker catches exactly that.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL_HINT: &str = "run `bash scripts/install-deploy-deps.sh` (python3 with pyyaml, \
                            kubernetes-validate, helm-python-sdk)";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the checker on `root`; returns (exit code, stdout + stderr).
fn run_checker(root: &Path) -> (i32, String) {
    let script = repo().join("deploy/tests/check_manifests.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--root")
        .arg(root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {INSTALL_HINT}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = out.status.code().unwrap_or(-1);
    assert_ne!(
        code, 3,
        "python dependencies of the deploy checker are missing; {INSTALL_HINT}\n{text}"
    );
    (code, text)
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create dir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let dst = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &dst);
        } else {
            fs::copy(entry.path(), &dst).expect("copy file");
        }
    }
}

/// A copy of what the checker reads, in a temp dir (removed on drop).
fn scratch_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = repo();
    copy_tree(&src.join("deploy"), &dir.path().join("deploy"));
    fs::create_dir_all(dir.path().join("src/csi/params")).expect("mkdir src/csi/params");
    for f in [
        "Dockerfile",
        ".dockerignore",
        "Cargo.toml",
        "src/csi/params/mod.rs",
    ] {
        fs::copy(src.join(f), dir.path().join(f)).unwrap_or_else(|e| panic!("copy {f}: {e}"));
    }
    dir
}

/// Replaces exactly one occurrence of `from` in `root/rel`.
fn mutate(root: &Path, rel: &str, from: &str, to: &str) {
    let path = root.join(rel);
    let text = fs::read_to_string(&path).expect("read file to mutate");
    assert_eq!(
        text.matches(from).count(),
        1,
        "{rel}: expected one occurrence of {from:?}"
    );
    fs::write(&path, text.replacen(from, to, 1)).expect("write mutated file");
}

fn assert_caught(root: &Path, check: &str, message: &str) {
    let (code, out) = run_checker(root);
    assert_eq!(code, 1, "the checker should fail:\n{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("FAIL {check}")))
        .unwrap_or_else(|| panic!("no failure of {check:?}:\n{out}"));
    assert!(line.contains(message), "{line:?} lacks {message:?}");
}

#[test]
fn deploy_files_pass_every_check() {
    let (code, out) = run_checker(&repo());
    assert_eq!(code, 0, "deploy checks failed:\n{out}");
    assert!(out.contains("ALL CHECKS PASSED"), "{out}");
    assert!(!out.contains("FAIL "), "{out}");
    // every check ran (a check silently dropped from the checker fails here)
    let oks = out.lines().filter(|l| l.starts_with("ok   ")).count();
    assert!(oks >= 17, "only {oks} checks ran:\n{out}");
}

#[test]
fn checker_catches_missing_bidirectional_propagation() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/node.yaml",
        "mountPropagation: Bidirectional",
        "mountPropagation: HostToContainer",
    );
    assert_caught(dir.path(), "kustomize: install invariants", "Bidirectional");
}

#[test]
fn checker_catches_mounter_without_surge() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/mounter.yaml",
        "maxSurge: 1",
        "maxSurge: 0",
    );
    assert_caught(dir.path(), "kustomize: install invariants", "maxSurge");
}

#[test]
fn checker_catches_mounter_without_idle_after_handover() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/mounter.yaml",
        "            - --idle-after-handover\n",
        "",
    );
    assert_caught(
        dir.path(),
        "kustomize: install invariants",
        "--idle-after-handover",
    );
}

#[test]
fn checker_catches_wrong_registration_path() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/node.yaml",
        "--kubelet-registration-path=/var/lib/kubelet/plugins/cachalot.csi.dev/csi.sock",
        "--kubelet-registration-path=/var/lib/kubelet/plugins/cachalot/csi.sock",
    );
    assert_caught(
        dir.path(),
        "kustomize: install invariants",
        "kubelet-registration-path",
    );
}

#[test]
fn checker_catches_missing_extra_create_metadata() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/helm/cachalot/templates/controller.yaml",
        "            - --extra-create-metadata\n",
        "",
    );
    assert_caught(
        dir.path(),
        "helm: install invariants",
        "--extra-create-metadata",
    );
}

#[test]
fn checker_catches_merged_image_pull_secrets() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/helm/cachalot/templates/_helpers.tpl",
        "{{- $secrets = .component.imagePullSecrets -}}",
        "{{- $secrets = concat .global .component.imagePullSecrets -}}",
    );
    assert_caught(
        dir.path(),
        "helm: imagePullSecrets per-component override",
        "replaces the global one",
    );
}

#[test]
fn checker_catches_unknown_storage_class_parameter() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/examples/storageclass-nfs.yaml",
        "  onDelete: archive",
        "  onDelete: archive\n  mountOptions: nolock",
    );
    assert_caught(
        dir.path(),
        "examples: driver, parameters, references",
        "'mountOptions' unknown",
    );
}

#[test]
fn checker_catches_schema_error() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/csidriver.yaml",
        "  podInfoOnMount: true",
        "  podInfoOnMount: true\n  podInfoOnMounts: true",
    );
    assert_caught(dir.path(), "kustomize: schemas (strict)", "podInfoOnMounts");
}

#[test]
fn checker_catches_wrong_binary_path_in_dockerfile() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "Dockerfile",
        "/src/target/release/cachalot",
        "/src/target/debug/cachalot",
    );
    assert_caught(dir.path(), "docker: Dockerfile", "target/release/cachalot");
}
