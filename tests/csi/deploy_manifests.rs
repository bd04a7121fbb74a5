//! Offline checks of the deployment files: the kustomize base, the example
//! overlay, the examples, the Helm chart, the Grafana dashboard and the
//! Dockerfile, through `deploy/tests/check_manifests.py` (schemas from
//! `kubernetes-validate`, Helm rendering from `helm-python-sdk`); and
//! `scripts/image.sh`, run with fake docker/podman/kind/minikube commands.
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

/// Runs the checker on `root` (only the checks named `only`, if given:
/// the others take seconds each and a negative test asserts one);
/// returns (exit code, stdout + stderr).
fn run_checker(root: &Path, only: Option<&str>) -> (i32, String) {
    let script = repo().join("deploy/tests/check_manifests.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg("--root").arg(root);
    if let Some(check) = only {
        cmd.arg("--only").arg(check);
    }
    let out = cmd
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
    fs::create_dir_all(dir.path().join("docs")).expect("mkdir docs");
    for f in [
        "Dockerfile",
        ".dockerignore",
        "Cargo.toml",
        "README.md",
        "src/csi/params/mod.rs",
        "docs/deploy.md",
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
    let (code, out) = run_checker(root, Some(check));
    assert_eq!(code, 1, "the checker should fail:\n{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("FAIL {check}")))
        .unwrap_or_else(|| panic!("no failure of {check:?}:\n{out}"));
    assert!(line.contains(message), "{line:?} lacks {message:?}");
}

#[test]
fn deploy_files_pass_every_check() {
    let (code, out) = run_checker(&repo(), None);
    assert_eq!(code, 0, "deploy checks failed:\n{out}");
    assert!(out.contains("ALL CHECKS PASSED"), "{out}");
    assert!(!out.contains("FAIL "), "{out}");
    // every check ran (a check silently dropped from the checker fails here)
    let oks = out.lines().filter(|l| l.starts_with("ok   ")).count();
    assert!(oks >= 32, "only {oks} checks ran:\n{out}");
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

#[test]
fn checker_catches_unknown_dashboard_metric() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/grafana/cachalot.json",
        "sum by (errno) (rate(cachalot_errors_total{",
        "sum by (errno) (rate(cachalot_errnos_total{",
    );
    assert_caught(
        dir.path(),
        "grafana: dashboard",
        "cachalot_errnos_total is not a metric of README.md's Metrics section",
    );
}

#[test]
fn checker_catches_dashboard_that_is_not_json() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/grafana/cachalot.json",
        "\"uid\": \"cachalot\",",
        "\"uid\": \"cachalot\",,",
    );
    assert_caught(dir.path(), "grafana: dashboard", "not valid JSON");
}

#[test]
fn checker_catches_renamed_metrics_port_for_the_podmonitor() {
    let dir = scratch_copy();
    // the node plugin's port keeps its number but loses the name the
    // PodMonitor scrapes
    mutate(
        dir.path(),
        "deploy/kubernetes/node.yaml",
        "            - name: metrics\n",
        "            - name: prometheus\n",
    );
    assert_caught(
        dir.path(),
        "examples: PodMonitor scrapes the base's pods",
        "port 'metrics' is not a containerPort of the node plugin pods",
    );
}

#[test]
fn checker_catches_chart_podmonitor_on_a_port_the_pods_lack() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/helm/cachalot/templates/podmonitor.yaml",
        "    - port: metrics",
        "    - port: http-metrics",
    );
    assert_caught(
        dir.path(),
        "helm: metrics values",
        "port 'http-metrics' is not a containerPort",
    );
}

#[test]
fn checker_catches_metrics_flag_without_port() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/mounter.yaml",
        "          ports:\n            - name: metrics\n              containerPort: 9810\n              protocol: TCP\n",
        "",
    );
    assert_caught(
        dir.path(),
        "kustomize: install invariants",
        "no containerPort named 'metrics'",
    );
}

#[test]
fn checker_catches_chart_image_repository_not_required() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/helm/cachalot/values.yaml",
        "  repository: \"\"",
        "  repository: cachalot",
    );
    assert_caught(
        dir.path(),
        "helm: image.repository required",
        "there is no public image",
    );
}

#[test]
fn checker_catches_overlay_that_keeps_the_image() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/overlays/example/kustomization.yaml",
        "  - name: cachalot ",
        "  - name: cachalot-csi ",
    );
    assert_caught(
        dir.path(),
        "overlay: example replaces the image",
        "no images entry with name 'cachalot'",
    );
}

#[test]
fn checker_catches_secrets_in_a_cluster_role() {
    let dir = scratch_copy();
    // the provisioner reads S3 provisioner Secrets through namespaced Roles:
    // `get` on every Secret of the cluster is refused
    mutate(
        dir.path(),
        "deploy/kubernetes/rbac-controller.yaml",
        "    resources: [\"nodes\"]\n    verbs: [\"get\", \"list\", \"watch\"]\n",
        "    resources: [\"nodes\"]\n    verbs: [\"get\", \"list\", \"watch\"]\n  \
         - apiGroups: [\"\"]\n    resources: [\"secrets\"]\n    verbs: [\"get\"]\n",
    );
    assert_caught(
        dir.path(),
        "kustomize: install invariants",
        "ClusterRole cachalot-provisioner grants ['get'] on secrets in every namespace",
    );
}

#[test]
fn checker_catches_missing_secrets_role_binding() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/rbac-controller.yaml",
        "  name: cachalot-provisioner-secrets\n  apiGroup",
        "  name: cachalot-provisioner-leader-election\n  apiGroup",
    );
    assert_caught(
        dir.path(),
        "kustomize: install invariants",
        "no Role granting `get` on secrets in namespace cachalot bound to ServiceAccount \
         cachalot/cachalot-controller",
    );
}

#[test]
fn checker_catches_resizer_on_another_socket() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/controller.yaml",
        "            - --handle-volume-inuse-error=false\n          env:\n            \
         - name: ADDRESS\n              value: /csi/csi.sock",
        "            - --handle-volume-inuse-error=false\n          env:\n            \
         - name: ADDRESS\n              value: /run/csi/socket",
    );
    assert_caught(
        dir.path(),
        "kustomize: install invariants",
        "csi-resizer --csi-address /run/csi/socket is not the plugin's socket /csi/csi.sock",
    );
}

#[test]
fn checker_catches_resizer_watching_pods() {
    let dir = scratch_copy();
    // the default --handle-volume-inuse-error=true needs RBAC on every pod
    mutate(
        dir.path(),
        "deploy/kubernetes/controller.yaml",
        "            - --handle-volume-inuse-error=false\n",
        "",
    );
    assert_caught(
        dir.path(),
        "kustomize: install invariants",
        "--handle-volume-inuse-error is None, want false",
    );
}

#[test]
fn checker_catches_resizer_rbac_without_pvc_status() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/rbac-controller.yaml",
        "    resources: [\"persistentvolumeclaims/status\"]\n    verbs: [\"patch\"]\n",
        "",
    );
    assert_caught(
        dir.path(),
        "kustomize: install invariants",
        "lacks [('persistentvolumeclaims/status', ['patch'])] cluster-wide, which the \
         csi-resizer sidecar needs",
    );
}

#[test]
fn checker_catches_storage_class_without_expansion() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/examples/storageclass-s3.yaml",
        "quota).\nallowVolumeExpansion: true",
        "quota).\nallowVolumeExpansion: false",
    );
    assert_caught(
        dir.path(),
        "examples: driver, parameters, references",
        "StorageClass cachalot-s3: allowVolumeExpansion False, want true",
    );
}

#[test]
fn checker_catches_chart_storage_class_without_expansion() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/helm/cachalot/templates/storageclasses.yaml",
        "ternary .allowVolumeExpansion true (hasKey . \"allowVolumeExpansion\")",
        "false",
    );
    assert_caught(
        dir.path(),
        "helm: namespace, secret namespaces, inline volumes, expansion values",
        "StorageClass grow: allowVolumeExpansion False, want true",
    );
}

#[test]
fn checker_catches_csidriver_without_ephemeral() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/csidriver.yaml",
        "    - Ephemeral\n",
        "",
    );
    assert_caught(
        dir.path(),
        "examples: fit the base",
        "inline volume datasets, but the CSIDriver's volumeLifecycleModes are ['Persistent']",
    );
    assert_caught(
        dir.path(),
        "kustomize: install invariants",
        "spec.volumeLifecycleModes = ['Persistent'], want ['Persistent', 'Ephemeral']",
    );
}

#[test]
fn checker_catches_inline_volume_with_subdir_template() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/examples/pod-inline.yaml",
        "subDir: imagenet",
        "subDir: ${pvc.metadata.name}",
    );
    assert_caught(
        dir.path(),
        "examples: driver, parameters, references",
        "subDir '${pvc.metadata.name}' has a ${...} template",
    );
}

#[test]
fn checker_catches_unknown_inline_volume_attribute() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/examples/pod-inline.yaml",
        "          cacheSize: 20GiB\n",
        "          cacheSize: 20GiB\n          mountOptions: nolock\n",
    );
    assert_caught(
        dir.path(),
        "examples: driver, parameters, references",
        "volumeAttributes key 'mountOptions' unknown to the driver",
    );
}

#[test]
fn checker_catches_namespace_without_pod_security_label() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/namespace.yaml",
        "    pod-security.kubernetes.io/enforce: privileged\n",
        "",
    );
    assert_caught(
        dir.path(),
        "kustomize: namespace Pod Security labels",
        "Namespace cachalot: Pod Security labels {'pod-security.kubernetes.io/enforce': None}",
    );
}

#[test]
fn checker_catches_chart_namespace_without_pod_security_labels() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/helm/cachalot/templates/namespace.yaml",
        "    {{- include \"cachalot.podSecurityLabels\" . | nindent 4 }}\n",
        "",
    );
    assert_caught(
        dir.path(),
        "helm: namespace, secret namespaces, inline volumes, expansion values",
        "Namespace storage: Pod Security labels",
    );
}

#[test]
fn checker_catches_chart_class_secret_outside_secret_namespaces() {
    let dir = scratch_copy();
    // the chart must refuse a StorageClass whose provisioner Secret the
    // provisioner may not read
    mutate(
        dir.path(),
        "deploy/helm/cachalot/templates/storageclasses.yaml",
        "{{- if not (has (toString .) $secretNamespaces) }}",
        "{{- if false }}",
    );
    assert_caught(
        dir.path(),
        "helm: namespace, secret namespaces, inline volumes, expansion values",
        "not in provisioner.secretNamespaces renders",
    );
}

// --------------------------------------------------------------------------
// Snapshots: the csi-snapshotter sidecar, its RBAC, the examples, the chart
// --------------------------------------------------------------------------

#[test]
fn checker_catches_missing_snapshotter() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/controller.yaml",
        "        - name: csi-snapshotter\n",
        "        - name: snapshotter\n",
    );
    assert_caught(
        dir.path(),
        "kustomize: install invariants",
        "no csi-snapshotter container",
    );
}

#[test]
fn checker_catches_snapshotter_on_another_socket() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/controller.yaml",
        "            - --feature-gates=CSIVolumeGroupSnapshot=false\n          env:\n            \
         - name: ADDRESS\n              value: /csi/csi.sock",
        "            - --feature-gates=CSIVolumeGroupSnapshot=false\n          env:\n            \
         - name: ADDRESS\n              value: /run/csi/socket",
    );
    assert_caught(
        dir.path(),
        "kustomize: install invariants",
        "csi-snapshotter --csi-address /run/csi/socket is not the plugin's socket /csi/csi.sock",
    );
}

#[test]
fn checker_catches_chart_snapshotter_without_leader_election() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/helm/cachalot/templates/controller.yaml",
        "            - --leader-election\n            # no group controller service",
        "            # no group controller service",
    );
    assert_caught(
        dir.path(),
        "helm: install invariants",
        "csi-snapshotter lacks --leader-election",
    );
}

#[test]
fn checker_catches_snapshotter_watching_group_snapshots() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/controller.yaml",
        "            - --feature-gates=CSIVolumeGroupSnapshot=false\n",
        "",
    );
    assert_caught(
        dir.path(),
        "kustomize: install invariants",
        "csi-snapshotter --feature-gates is None, want CSIVolumeGroupSnapshot=false",
    );
}

#[test]
fn checker_catches_snapshotter_rbac_without_content_status() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/rbac-controller.yaml",
        "    resources: [\"volumesnapshotcontents/status\"]\n    verbs: [\"update\", \"patch\"]\n",
        "",
    );
    assert_caught(
        dir.path(),
        "kustomize: install invariants",
        "lacks [('snapshot.storage.k8s.io/volumesnapshotcontents/status', ['patch', 'update'])] \
         cluster-wide, which the csi-snapshotter sidecar needs",
    );
}

#[test]
fn checker_catches_snapshotter_rbac_granting_more() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/rbac-controller.yaml",
        "verbs: [\"create\", \"get\", \"list\", \"watch\", \"update\", \"patch\"]",
        "verbs: [\"create\", \"get\", \"list\", \"watch\", \"update\", \"patch\", \"delete\"]",
    );
    assert_caught(
        dir.path(),
        "kustomize: install invariants",
        "grant [('snapshot.storage.k8s.io/volumesnapshotcontents', ['delete'])], which none of \
         its sidecars",
    );
}

#[test]
fn checker_catches_provisioner_unable_to_read_snapshots() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/rbac-controller.yaml",
        "    resources: [\"volumesnapshots\"]\n    verbs: [\"get\", \"list\"]\n",
        "",
    );
    assert_caught(
        dir.path(),
        "kustomize: install invariants",
        "lacks [('snapshot.storage.k8s.io/volumesnapshots', ['get', 'list'])] cluster-wide, \
         which the csi-provisioner (restores from VolumeSnapshots) sidecar needs",
    );
}

#[test]
fn checker_catches_chart_snapshot_rbac_when_disabled() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/helm/cachalot/templates/rbac.yaml",
        "{{- if .Values.snapshots.enabled }}\n---\n# csi-snapshotter",
        "{{- if true }}\n---\n# csi-snapshotter",
    );
    assert_caught(
        dir.path(),
        "helm: snapshot values",
        "which none of its sidecars ['csi-provisioner', 'csi-resizer'] needs",
    );
}

#[test]
fn checker_catches_chart_snapshotter_when_disabled() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/helm/cachalot/templates/controller.yaml",
        "{{- if .Values.snapshots.enabled }}",
        "{{- if true }}",
    );
    assert_caught(
        dir.path(),
        "helm: snapshot values",
        "a csi-snapshotter container although snapshots are disabled",
    );
}

#[test]
fn checker_catches_chart_snapshot_class_without_snapshotter() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/helm/cachalot/templates/volumesnapshotclass.yaml",
        "{{- if not .Values.snapshots.enabled }}",
        "{{- if false }}",
    );
    assert_caught(
        dir.path(),
        "helm: snapshot values",
        "render: want the chart to fail naming snapshots.enabled",
    );
}

#[test]
fn checker_catches_chart_snapshot_class_of_another_driver() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/helm/cachalot/templates/volumesnapshotclass.yaml",
        "driver: {{ .Values.driverName }}",
        "driver: cachalot",
    );
    assert_caught(
        dir.path(),
        "helm: snapshot values",
        "'driver': 'cachalot', 'deletionPolicy': 'Retain'",
    );
}

#[test]
fn checker_catches_snapshot_class_of_another_driver() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/examples/volumesnapshotclass.yaml",
        "  name: cachalot\ndriver: cachalot.csi.dev",
        "  name: cachalot\ndriver: nfs.csi.k8s.io",
    );
    assert_caught(
        dir.path(),
        "examples: snapshots, restores, clones",
        "VolumeSnapshotClass cachalot: driver 'nfs.csi.k8s.io', want cachalot.csi.dev",
    );
}

#[test]
fn checker_catches_unknown_volume_snapshot_field() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/examples/volumesnapshot.yaml",
        "  volumeSnapshotClassName: cachalot\n",
        "  volumeSnapshotClassName: cachalot\n  snapshotClassName: cachalot\n",
    );
    assert_caught(
        dir.path(),
        "examples: schemas (strict)",
        "VolumeSnapshot cachalot-data-snapshot spec: unknown fields ['snapshotClassName']",
    );
}

#[test]
fn checker_catches_restore_of_a_missing_snapshot() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/examples/volumesnapshot.yaml",
        "    name: cachalot-data-snapshot\n",
        "    name: cachalot-data-snap\n",
    );
    assert_caught(
        dir.path(),
        "examples: snapshots, restores, clones",
        "PVC default/cachalot-data-restored: dataSource VolumeSnapshot \
         default/cachalot-data-snap is not an example VolumeSnapshot",
    );
}

#[test]
fn checker_catches_restore_into_another_source() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/examples/volumesnapshot.yaml",
        "  storageClassName: cachalot-nfs\n",
        "  storageClassName: cachalot-s3\n",
    );
    assert_caught(
        dir.path(),
        "examples: snapshots, restores, clones",
        "restores and clones stay in one source",
    );
}

#[test]
fn checker_catches_clone_smaller_than_its_source() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/examples/pvc-clone.yaml",
        "      storage: 10Gi",
        "      storage: 5Gi",
    );
    assert_caught(
        dir.path(),
        "examples: snapshots, restores, clones",
        "PVC default/cachalot-data-clone: requests 5Gi, less than the PVC cachalot-data's 10Gi",
    );
}

#[test]
fn checker_catches_snapshotter_secret_the_controller_cannot_read() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/examples/volumesnapshotclass.yaml",
        "  csi.storage.k8s.io/snapshotter-secret-namespace: cachalot",
        "  csi.storage.k8s.io/snapshotter-secret-namespace: default",
    );
    assert_caught(
        dir.path(),
        "examples: fit the base",
        "VolumeSnapshotClass cachalot-s3: snapshotter-secret-namespace default is not one where \
         the base's controller may get Secrets",
    );
}

#[test]
fn checker_catches_docs_snapshot_crds_of_another_release() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "docs/deploy.md",
        "client/config/crd?ref=v8.6.0",
        "client/config/crd?ref=v8.2.0",
    );
    assert_caught(
        dir.path(),
        "docs: deploy.md's snapshot prerequisites",
        "client/config/crd?ref=v8.6.0\" | kubectl create -f -`",
    );
}

#[test]
fn checker_catches_docs_controller_readiness_count() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "docs/deploy.md",
        "# controller 5/5;",
        "# controller 4/4;",
    );
    assert_caught(
        dir.path(),
        "docs: deploy.md's snapshot prerequisites",
        "does not say the controller pod is 5/5 ready",
    );
}

// --------------------------------------------------------------------------
// scripts/image.sh, with fake engines (nothing is built or pushed)
// --------------------------------------------------------------------------

/// The bash of this machine (absolute: the script runs with a PATH that
/// holds only the fakes).
fn bash() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("bash"))
        .find(|p| p.is_file())
        .expect("bash on PATH")
}

/// A directory for PATH holding fake commands that append `NAME ARGS` to
/// `log`; `failing` ones exit 1 after logging.
fn fake_bin(names: &[&str], failing: &[&str]) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).expect("mkdir bin");
    for name in names {
        let status = if failing.contains(name) { 1 } else { 0 };
        let body = format!(
            "#!{}\necho \"{name} $*\" >> \"{}\"\nexit {status}\n",
            bash().display(),
            log.display()
        );
        // written by a child process: this test process never holds a
        // writable descriptor of a file that is executed (ETXTBSY when a
        // concurrent test forks meanwhile)
        let path = bin.join(name);
        let ok = Command::new(bash())
            .arg("-c")
            .arg("printf '%s' \"$1\" > \"$2\"")
            .arg("write-fake")
            .arg(&body)
            .arg(&path)
            .status()
            .expect("write fake")
            .success();
        assert!(ok, "cannot write {}", path.display());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod fake");
    }
    (dir, bin)
}

/// Runs scripts/image.sh with PATH = `path_dir` only; (exit code, stdout +
/// stderr, the fakes' log lines).
fn run_image_sh(path_dir: &Path, args: &[&str]) -> (i32, String, Vec<String>) {
    let out = Command::new(bash())
        .arg(repo().join("scripts/image.sh"))
        .args(args)
        .env_clear()
        .env("PATH", path_dir)
        .env("TMPDIR", path_dir)
        .output()
        .expect("run scripts/image.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = fs::read_to_string(path_dir.parent().expect("parent").join("log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    (out.status.code().unwrap_or(-1), text, log)
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[test]
fn image_script_help_exits_zero() {
    let out = Command::new(bash())
        .arg(repo().join("scripts/image.sh"))
        .arg("--help")
        .output()
        .expect("run scripts/image.sh --help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "--help failed: {out:?}");
    for word in [
        "Usage:",
        "--kind CLUSTER",
        "--minikube",
        "--push",
        "--name",
        "--tag",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
}

#[test]
fn image_script_without_docker_or_podman_fails_naming_both() {
    let (_dir, bin) = fake_bin(&["kind", "minikube"], &[]);
    let (code, text, log) = run_image_sh(&bin, &["--kind", "dev"]);
    assert_ne!(code, 0, "succeeded without an engine:\n{text}");
    assert!(
        text.contains("docker") && text.contains("podman"),
        "the message names neither docker nor podman:\n{text}"
    );
    assert!(log.is_empty(), "ran {log:?}");
}

#[test]
fn image_script_builds_the_base_image_and_loads_it_with_docker() {
    let (_dir, bin) = fake_bin(&["docker", "podman", "kind", "minikube"], &[]);
    let (code, text, log) = run_image_sh(&bin, &["--kind", "dev", "--minikube"]);
    assert_eq!(code, 0, "{text}");
    // the default name and tag are the kustomize base's image (the checker
    // holds the base to cachalot:<Cargo.toml version>)
    let image = format!("cachalot:{VERSION}");
    assert_eq!(
        log,
        [
            format!("docker build -t {image} {}", repo().display()),
            format!("kind load docker-image {image} --name dev"),
            format!("minikube image load {image}"),
        ]
    );
}

#[test]
fn image_script_with_podman_builds_the_name_kubernetes_pulls() {
    let (_dir, bin) = fake_bin(&["podman", "kind", "minikube"], &[]);
    let (code, text, log) = run_image_sh(&bin, &["--kind=dev", "--tag", "1.2.3", "--minikube"]);
    assert_eq!(code, 0, "{text}");
    let archive = format!("{}/cachalot-image-", bin.display());
    assert_eq!(log.len(), 4, "{log:?}");
    assert_eq!(
        log[0],
        format!(
            "podman build -t docker.io/library/cachalot:1.2.3 {}",
            repo().display()
        )
    );
    assert!(
        log[1].starts_with(&format!("podman save -o {archive}"))
            && log[1].ends_with(" docker.io/library/cachalot:1.2.3"),
        "{log:?}"
    );
    assert!(
        log[2].starts_with(&format!("kind load image-archive {archive}"))
            && log[2].ends_with(" --name dev"),
        "{log:?}"
    );
    // one archive for both loaders
    let file = log[1].split_whitespace().nth(3).expect("archive path");
    assert_eq!(log[3], format!("minikube image load {file}"));
}

#[test]
fn image_script_engine_podman_wins_over_docker() {
    let (_dir, bin) = fake_bin(&["docker", "podman"], &[]);
    let (code, text, log) = run_image_sh(&bin, &["--engine", "podman"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        log,
        [format!(
            "podman build -t docker.io/library/cachalot:{VERSION} {}",
            repo().display()
        )]
    );
}

#[test]
fn image_script_pushes_only_to_a_registry() {
    let (_dir, bin) = fake_bin(&["docker"], &[]);
    let (code, text, log) = run_image_sh(&bin, &["--push"]);
    assert_ne!(code, 0, "pushed cachalot to Docker Hub's library:\n{text}");
    assert!(
        text.contains("--push needs --name with a registry"),
        "{text}"
    );
    assert!(log.is_empty(), "ran {log:?}");

    for name in [
        "registry.example.com/team/cachalot",
        "localhost:5000/cachalot",
    ] {
        let _ = fs::remove_file(bin.parent().expect("parent").join("log"));
        let (code, text, log) = run_image_sh(&bin, &["--name", name, "--push"]);
        assert_eq!(code, 0, "{text}");
        assert_eq!(
            log,
            [
                format!("docker build -t {name}:{VERSION} {}", repo().display()),
                format!("docker push {name}:{VERSION}"),
            ]
        );
    }
}

#[test]
fn image_script_stops_when_the_build_fails() {
    let (_dir, bin) = fake_bin(&["docker", "kind"], &["docker"]);
    let (code, text, log) = run_image_sh(&bin, &["--kind", "dev"]);
    assert_ne!(code, 0, "{text}");
    assert_eq!(log.len(), 1, "loaded after a failed build: {log:?}");
    assert!(log[0].starts_with("docker build "), "{log:?}");
}

#[test]
fn checker_catches_csidriver_without_token_republish() {
    let dir = scratch_copy();
    mutate(
        dir.path(),
        "deploy/kubernetes/csidriver.yaml",
        "requiresRepublish: true",
        "requiresRepublish: false",
    );
    assert_caught(
        dir.path(),
        "kustomize: install invariants",
        "renews the pods' tokens only by publishing again",
    );
}
