"""docs/deploy.md against the manifests: the commands and counts it gives that
the manifests determine (the Pod Security label command, the snapshot CRD
and snapshot-controller install at the csi-snapshotter's release, the
controller pod's N/N ready). These drift silently when a sidecar or label
changes, and users paste them verbatim."""

import os

from .common import need
from .render import one, split_image
from .podspec import container, pod_spec
from .rbac import label_command
from .install import CONTROLLER_CONTAINERS

# where the upstream install of the snapshot CRDs and the snapshot-controller
# lives (docs/deploy.md gives both, at the sidecar's release)
SNAPSHOTTER_REPO = "https://github.com/kubernetes-csi/external-snapshotter"


def snapshot_install_commands(tag):
    """The upstream install of the snapshot CRDs and the snapshot-controller
    (external-snapshotter README), at the release `tag`."""
    return [f'kubectl kustomize "{SNAPSHOTTER_REPO}/client/config/crd?ref={tag}" | kubectl create -f -',
            f'kubectl -n kube-system kustomize "{SNAPSHOTTER_REPO}/deploy/kubernetes/'
            f'snapshot-controller?ref={tag}" | kubectl create -f -']


def check_docs_snapshots(root, base):
    """docs/deploy.md installs the snapshot CRDs and the snapshot-controller
    of the csi-snapshotter's release, and counts the controller's containers."""
    text = open(os.path.join(root, "docs/deploy.md"), encoding="utf-8").read()
    img = container(pod_spec(one(base, "Deployment")), "csi-snapshotter")["image"]
    _, tag = split_image(img)
    for cmd in snapshot_install_commands(tag):
        need(cmd in text, f"docs/deploy.md lacks `{cmd}` (the CRDs and the snapshot-controller "
                          f"of the csi-snapshotter's release, {img})")
    n = len(CONTROLLER_CONTAINERS)
    need(f"controller {n}/{n}" in text,
         f"docs/deploy.md does not say the controller pod is {n}/{n} ready (its containers: "
         f"{CONTROLLER_CONTAINERS})")


def check_docs_label_command(root):
    """docs/deploy.md gives the namespace label command the chart's notes
    print (and the base's labels), for the install namespace and generally."""
    text = open(os.path.join(root, "docs/deploy.md"), encoding="utf-8").read()
    for ns in ("cachalot", "NAMESPACE"):
        need(label_command(ns) in text,
             f"docs/deploy.md lacks `{label_command(ns)}` (the Pod Security labels of the base's "
             "Namespace, as the chart's NOTES.txt prints them)")
