#!/usr/bin/env python3
"""Offline checks of cachalot's deployment files (run by tests/csi/deploy_manifests.rs).

    python3 deploy/tests/check_manifests.py [--root REPO]

What it does, without a cluster:
  * renders the kustomize base (deploy/kubernetes/kustomization.yaml) and the
    example overlay (deploy/overlays/example) itself: resources (files or
    directories) + the images and namespace transformers, nothing else (an
    unknown kustomization key is a failure, not ignored); if `kubectl` is on
    PATH it also compares with `kubectl kustomize`;
  * renders the Helm chart (deploy/helm/cachalot) with the Helm engine of the
    `helm-python-sdk` package (offline, no helm binary), for several value sets
    (image.repository is required: every render passes one), and runs
    `helm lint --strict`;
  * validates every object against the Kubernetes OpenAPI schemas of the
    `kubernetes-validate` package (strict: unknown fields fail) for the oldest
    and the newest supported version; it has no schema for CRDs: the
    prometheus-operator kinds (monitoring.coreos.com) and the snapshot kinds
    (snapshot.storage.k8s.io) have their structure checked here instead;
  * metrics: every cachalot container with --metrics-addr exposes it as a
    containerPort named `metrics`; the PodMonitors (chart, example) select the
    controller, node plugin and mounter pods and name a port they have;
  * the Grafana dashboard (deploy/grafana/cachalot.json): valid JSON, its
    datasource and variables, and every cachalot_* metric, label and function
    use in its queries against README.md's "### Metrics" section;
  * checks the invariants that break real installs (driver name, socket and
    kubelet paths across containers, Bidirectional propagation, provisioner
    flags, RBAC, StorageClass parameter names against src/csi/params/mod.rs,
    per-component imagePullSecrets override, Helm = kustomize; the mounter
    DaemonSet: surge rolling update for the live takeover, gated by a
    readinessProbe on its socket and minReadySeconds, --idle-after-handover,
    its socket shared with the node plugin, FUSE only there);
  * expansion (the csi-resizer sidecar: plugin socket, leader election,
    --handle-volume-inuse-error=false, its RBAC; allowVolumeExpansion),
    inline volumes (CSIDriver Ephemeral, the example pod's attributes),
    Secrets (never in a ClusterRole; namespaced Roles in the secret
    namespaces) and Pod Security (the namespace's labels, namespace.create);
  * snapshots: the csi-snapshotter sidecar (plugin socket, leader election,
    group snapshots off, its RBAC and the provisioner's restore rules exactly;
    none of it with the chart's snapshots.enabled=false), the chart's
    VolumeSnapshotClass, the examples' VolumeSnapshotClasses, VolumeSnapshot,
    restored and cloned PVCs (references, one source, sizes), and the snapshot
    CRD / snapshot-controller commands of docs/deploy.md at the sidecar's
    release;
  * parses the Dockerfile and .dockerignore.

The checks live in the manifest_checks package next to this file, one
module per concern (its __init__ lists them); this script only runs them, in
order, and prints one `ok` or `FAIL` line per check.

Exit 0 when every check passed, 1 when one failed, 3 when a Python dependency
is missing (run scripts/install-deploy-deps.sh).
"""

import argparse
import os
import sys

try:  # what the manifest_checks modules import, checked before them
    import yaml  # noqa: F401
    import kubernetes_validate  # noqa: F401
    from helm_python import chart as helm_chart, errors as helm_errors  # noqa: F401
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(f"MISSING DEPENDENCY: {e}; run scripts/install-deploy-deps.sh", file=sys.stderr)
    sys.exit(3)

# The package sits next to this script: make it importable whatever the
# working directory and however the script is named (relative path, through a
# symlink), and keep __pycache__ out of the source tree.
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
sys.dont_write_bytecode = True

from manifest_checks.common import Runner  # noqa: E402
from manifest_checks.dashboard import check_dashboard, check_dashboard_promtool  # noqa: E402
from manifest_checks.docker import check_dockerfile, check_dockerignore  # noqa: E402
from manifest_checks.docs import check_docs_label_command, check_docs_snapshots  # noqa: E402
from manifest_checks.examples import (check_examples, check_examples_fit_base,  # noqa: E402
                                      check_snapshot_examples)
from manifest_checks.helm import (check_helm_lint, check_helm_metrics,  # noqa: E402
                                  check_helm_mirrors_kustomize, check_helm_security_values,
                                  check_helm_s3_ca_bundle, check_helm_snapshots, check_helm_values,
                                  check_pull_secrets)
from manifest_checks.image import (IMAGE_NAME, check_base_image,  # noqa: E402
                                   check_helm_image_required, check_overlay, with_image)
from manifest_checks.install import check_install  # noqa: E402
from manifest_checks.metrics import check_example_podmonitors  # noqa: E402
from manifest_checks.rbac import check_namespace_pod_security  # noqa: E402
from manifest_checks.render import (check_kubectl_kustomize,  # noqa: E402
                                    check_kustomize_lists_everything, load_docs, render_helm,
                                    render_kustomize)
from manifest_checks.schemas import validate_schemas  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "../.."))
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="run only the checks whose name starts with NAME (repeatable); "
                         "an unknown NAME is an error")
    args = ap.parse_args()
    root = os.path.abspath(args.root)
    kdir = os.path.join(root, "deploy/kubernetes")
    edir = os.path.join(kdir, "examples")
    odir = os.path.join(root, "deploy/overlays/example")
    cdir = os.path.join(root, "deploy/helm/cachalot")
    r = Runner(args.only)
    state = {}

    def load_base():
        state["base"] = render_kustomize(kdir)

    r.load("kustomize: render base", load_base)
    base = state.get("base", [])
    r.check("kustomize: every manifest listed", check_kustomize_lists_everything, kdir)
    r.check("kustomize: matches kubectl kustomize", check_kubectl_kustomize, kdir, base)
    r.check("kustomize: schemas (strict)", validate_schemas, base)
    r.check("kustomize: install invariants", check_install, base)
    r.check("kustomize: image (what scripts/image.sh builds)", check_base_image, base, root)
    r.check("kustomize: namespace Pod Security labels", check_namespace_pod_security, base,
            "cachalot")

    def load_examples():
        objs = []
        for f in sorted(os.listdir(edir)):
            if f.endswith((".yaml", ".yml")):
                objs.extend(load_docs(os.path.join(edir, f)))
        state["examples"] = objs

    r.load("examples: load", load_examples)
    ex = state.get("examples", [])
    r.check("examples: schemas (strict)", validate_schemas, ex)
    r.check("examples: driver, parameters, references", check_examples, root, ex)
    r.check("examples: PodMonitor scrapes the base's pods", check_example_podmonitors, ex, base)
    r.check("examples: snapshots, restores, clones", check_snapshot_examples, ex)
    r.check("examples: fit the base (secret namespaces, inline volumes, snapshotter)",
            check_examples_fit_base, ex, base)

    r.check("overlay: example replaces the image", check_overlay, odir, base)

    def overlay_vs_kubectl():
        check_kubectl_kustomize(odir, render_kustomize(odir))

    r.check("overlay: matches kubectl kustomize", overlay_vs_kubectl)

    def helm_default():
        state["helm"] = render_helm(cdir, with_image({}))

    r.check("helm: image.repository required", check_helm_image_required, cdir)
    r.load(f"helm: render default values (image.repository={IMAGE_NAME})", helm_default)
    hobjs = state.get("helm", [])
    r.check("helm: schemas (strict)", validate_schemas, hobjs)
    r.check("helm: install invariants", check_install, hobjs)
    r.check("helm: mirrors the kustomize base", check_helm_mirrors_kustomize, hobjs, base)
    r.check("helm: imagePullSecrets per-component override", check_pull_secrets, cdir)
    r.check("helm: values (image, log level, paths, extraArgs, scheduling, classes)",
            check_helm_values, cdir, root)
    r.check("helm: metrics values (port, disabled, PodMonitor)", check_helm_metrics, cdir)
    r.check("helm: namespace, secret namespaces, inline volumes, expansion values",
            check_helm_security_values, cdir)
    r.check("helm: snapshot values (snapshots.*, sidecars.snapshotter)", check_helm_snapshots,
            cdir)
    r.check("helm: s3CaBundle (SSL_CERT_FILE of the controller and mounter)",
            check_helm_s3_ca_bundle, cdir)
    r.check("helm: lint --strict", check_helm_lint, cdir)
    r.check("docs: deploy.md's namespace label command", check_docs_label_command, root)
    r.check("docs: deploy.md's snapshot prerequisites and controller N/N", check_docs_snapshots,
            root, base)
    r.check("grafana: dashboard (JSON, datasource, variables, README metrics)", check_dashboard, root)
    r.check("grafana: queries parse with promtool", check_dashboard_promtool, root)
    r.check("docker: Dockerfile", check_dockerfile, root)
    r.check("docker: .dockerignore", check_dockerignore, root)

    if args.only and r.selected == 0:
        # A misspelt --only must not pass silently.
        print(f"FAIL --only: no check is named {args.only}")
        return 1
    print(f"check_manifests: {r.passed} checks passed, {len(r.failed)} failed"
          + (f", {r.skipped} skipped (--only)" if r.skipped else ""))
    if r.failed:
        print("FAILED: " + ", ".join(r.failed))
        return 1
    print("ALL CHECKS PASSED")
    return 0



if __name__ == "__main__":
    sys.exit(main())
