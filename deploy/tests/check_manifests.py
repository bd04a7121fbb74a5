#!/usr/bin/env python3
"""Offline checks of cachalot's deployment files (run by tests/deploy_manifests.rs).

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

Exit 0 when every check passed, 1 when one failed, 3 when a Python dependency
is missing (run scripts/install-deploy-deps.sh).
"""

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

try:
    import yaml
    import kubernetes_validate
    from helm_python import chart as helm_chart
    from helm_python import errors as helm_errors
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(f"MISSING DEPENDENCY: {e}; run scripts/install-deploy-deps.sh", file=sys.stderr)
    sys.exit(3)

DRIVER = "cachalot.csi.dev"
BINARY = "/usr/local/bin/cachalot"  # where the Dockerfile puts it (checked there)
K8S_VERSIONS = ["1.25.0", "1.37.0"]  # chart kubeVersion >=1.25; newest shipped schemas
CLUSTER_SCOPED = {
    "Namespace", "CSIDriver", "ClusterRole", "ClusterRoleBinding", "StorageClass",
    "PersistentVolume", "VolumeSnapshotClass",
}
# Cluster-wide grants (ClusterRoles bound to the controller's ServiceAccount)
# each sidecar needs. No Secrets: the provisioner reads its StorageClasses'
# provisioner Secrets through namespaced Roles (SECRET_RULES).
PROVISIONER_RULES = {
    ("", "persistentvolumes"): {"get", "list", "watch", "create", "delete"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "update"},
    ("storage.k8s.io", "storageclasses"): {"get", "list", "watch"},
    ("", "events"): {"list", "watch", "create", "update", "patch"},
    ("storage.k8s.io", "csinodes"): {"get", "list", "watch"},
    ("", "nodes"): {"get", "list", "watch"},
}
# external-resizer v1.x with --handle-volume-inuse-error=false (no pod watch)
RESIZER_RULES = {
    ("", "persistentvolumes"): {"get", "list", "watch", "patch"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch"},
    ("", "persistentvolumeclaims/status"): {"patch"},
    ("", "events"): {"list", "watch", "create", "update", "patch"},
}
# external-snapshotter v8 (deploy/kubernetes/csi-snapshotter/rbac-csi-snapshotter.yaml)
# less its groupsnapshot.storage.k8s.io rules: the sidecar runs with
# --feature-gates=CSIVolumeGroupSnapshot=false (the plugin has no group
# controller service)
SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
SNAPSHOTTER_RULES = {
    ("", "events"): {"list", "watch", "create", "update", "patch"},
    (SNAPSHOT_GROUP, "volumesnapshotclasses"): {"get", "list", "watch"},
    (SNAPSHOT_GROUP, "volumesnapshotcontents"): {"create", "get", "list", "watch", "update",
                                                 "patch"},
    (SNAPSHOT_GROUP, "volumesnapshotcontents/status"): {"update", "patch"},
}
# the provisioner, for PVCs restored from a VolumeSnapshot (external-provisioner
# rbac.yaml); only with the snapshotter
PROVISIONER_SNAPSHOT_RULES = {
    (SNAPSHOT_GROUP, "volumesnapshots"): {"get", "list"},
    (SNAPSHOT_GROUP, "volumesnapshotcontents"): {"get", "list"},
}
SNAPSHOTTER_GATES = "CSIVolumeGroupSnapshot=false"
SIDECAR_RULES = {"csi-provisioner": PROVISIONER_RULES, "csi-resizer": RESIZER_RULES,
                 "csi-snapshotter": SNAPSHOTTER_RULES}
SIDECAR_IMAGES = {"csi-provisioner": "registry.k8s.io/sig-storage/csi-provisioner:v5.",
                  "csi-resizer": "registry.k8s.io/sig-storage/csi-resizer:v1.",
                  "csi-snapshotter": "registry.k8s.io/sig-storage/csi-snapshotter:v8."}
CONTROLLER_CONTAINERS = ["cachalot", "csi-provisioner", "csi-resizer", "csi-snapshotter",
                         "liveness-probe"]
# where the upstream install of the snapshot CRDs and the snapshot-controller
# lives (docs/deploy.md gives both, at the sidecar's release)
SNAPSHOTTER_REPO = "https://github.com/kubernetes-csi/external-snapshotter"
# VolumeSnapshotClass parameters: the plugin reads none but the Secret
SNAPSHOT_CLASS_PARAMS = {
    "csi.storage.k8s.io/snapshotter-secret-name",
    "csi.storage.k8s.io/snapshotter-secret-namespace",
}
# StorageClass parameters naming a volume's source (src/csi/params/mod.rs
# Location): restores and clones stay in one source
LOCATION_KEYS = {"source", "server", "share", "bucket", "prefix", "endpoint", "region"}
LEASE_VERBS = {"get", "watch", "list", "delete", "update", "create"}
# provisioner-secret-name (S3 credentials), per secret namespace
SECRET_RULES = {("", "secrets"): {"get"}}
# Pod Security Admission: the node plugin and the mounter are privileged
POD_SECURITY_LABELS = {f"pod-security.kubernetes.io/{m}": "privileged"
                       for m in ("enforce", "audit", "warn")}
LIFECYCLE_MODES = ["Persistent", "Ephemeral"]
SECRET_PARAM_PREFIX = "csi.storage.k8s.io/"
SECRET_PARAMS = {
    "csi.storage.k8s.io/provisioner-secret-name",
    "csi.storage.k8s.io/provisioner-secret-namespace",
    "csi.storage.k8s.io/node-stage-secret-name",
    "csi.storage.k8s.io/node-stage-secret-namespace",
}
SUBDIR_TEMPLATES = {"${pvc.metadata.name}", "${pvc.metadata.namespace}", "${pv.metadata.name}"}
METRICS_PORT = 9810  # --metrics-addr of the three cachalot containers (base, chart default)
METRICS_PORT_NAME = "metrics"
MONITORING_GROUP = "monitoring.coreos.com"
IMAGE_NAME = "cachalot"  # the image name in the base, the default of scripts/image.sh


class CheckError(Exception):
    pass


def need(cond, msg):
    if not cond:
        raise CheckError(msg)


class Runner:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def check(self, name, fn, *args):
        try:
            fn(*args)
        except CheckError as e:
            self.failed.append(name)
            print(f"FAIL {name}: {e}")
        except Exception as e:  # a crash in a check is a failure too
            self.failed.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}")
        else:
            self.passed += 1
            print(f"ok   {name}")


# --------------------------------------------------------------------------
# Loading and rendering
# --------------------------------------------------------------------------

def load_docs_text(text, origin):
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise CheckError(f"{origin}: invalid YAML: {e}")


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return load_docs_text(f.read(), path)


KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "images"}


def apply_images(objs, images):
    """The images transformer (an overlay's `images:` entries)."""
    for o in objs:
        spec = o.get("spec", {}).get("template", {}).get("spec") or \
            (o.get("spec") if o.get("kind") == "Pod" else None)
        if not spec:
            continue
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            ref = c["image"]
            name, tag = (ref.rsplit(":", 1) + [None])[:2] if ":" in ref.split("/")[-1] else (ref, None)
            for im in images:
                if im.get("name") == name:
                    new = im.get("newName", name)
                    if im.get("digest"):
                        c["image"] = f"{new}@{im['digest']}"
                    else:
                        t = im.get("newTag", tag)
                        c["image"] = f"{new}:{t}" if t else new


def render_kustomize(directory):
    """resources + images + namespace, like `kustomize build` for these files."""
    kfile = os.path.join(directory, "kustomization.yaml")
    need(os.path.isfile(kfile), f"{directory}: no kustomization.yaml")
    (k,) = load_docs(kfile)
    unknown = set(k) - KUSTOMIZATION_KEYS
    need(not unknown, f"{kfile}: keys {sorted(unknown)} are not understood by this checker "
                      "(extend render_kustomize)")
    objs = []
    for res in k.get("resources", []):
        path = os.path.join(directory, res)
        if os.path.isdir(path):
            # kustomize refuses a directory that contains the kustomization
            # ("cycle detected: candidate root ... contains visited root")
            need(not covers(os.path.realpath(path), os.path.realpath(directory)),
                 f"{kfile}: resource {res} contains this kustomization (kustomize fails with "
                 "'cycle detected'): put the overlay outside the base's directory")
            objs.extend(render_kustomize(path))
        else:
            need(os.path.isfile(path), f"{kfile}: resource {res} does not exist")
            # kustomize's load restrictor: files only in or below the kustomization
            need(covers(os.path.realpath(directory), os.path.realpath(path)),
                 f"{kfile}: resource file {res} is outside the kustomization's directory "
                 "(kustomize refuses it): list its directory's kustomization instead")
            objs.extend(load_docs(path))
    apply_images(objs, k.get("images", []))
    ns = k.get("namespace")
    if ns:
        for o in objs:
            if o.get("kind") not in CLUSTER_SCOPED:
                o.setdefault("metadata", {})["namespace"] = ns
            if o.get("kind") in ("RoleBinding", "ClusterRoleBinding"):
                for s in o.get("subjects", []):
                    if s.get("kind") == "ServiceAccount":
                        s["namespace"] = ns
    return objs


def render_helm(chart_dir, values, name="cachalot", namespace="cachalot"):
    c = helm_chart.Chart.load(chart_dir)
    out = c.render(values, name=name, namespace=namespace, is_install=True)
    objs = []
    for path, text in sorted(out.items()):
        if path.endswith(".txt") or os.path.basename(path).startswith("_"):
            continue
        objs.extend(load_docs_text(text, path))
    return objs


def key(o):
    m = o.get("metadata", {})
    return (o.get("kind"), m.get("namespace"), m.get("name"))


def by_kind(objs, kind):
    return [o for o in objs if o.get("kind") == kind]


def one(objs, kind):
    found = by_kind(objs, kind)
    need(len(found) == 1, f"expected exactly one {kind}, found {len(found)}")
    return found[0]


# --------------------------------------------------------------------------
# Schema validation
# --------------------------------------------------------------------------

def validate_schemas(objs):
    problems = []
    for o in objs:
        own = {MONITORING_GROUP: check_monitoring_structure,
               SNAPSHOT_GROUP: check_snapshot_structure}.get(api_group(o))
        if own is not None:
            # kubernetes-validate has no schemas for CRDs: our own check
            try:
                own(o)
            except CheckError as e:
                problems.append(f"{key(o)}: {e}")
            continue
        for v in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(o, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{key(o)} @ {v}: {e.message} at {list(e.path)}")
            except (kubernetes_validate.SchemaNotFoundError,
                    kubernetes_validate.InvalidSchemaError) as e:
                problems.append(f"{key(o)} @ {v}: no schema: {e}")
    need(not problems, "; ".join(problems))


# --------------------------------------------------------------------------
# Pod helpers
# --------------------------------------------------------------------------

def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def container(spec, name):
    for c in spec.get("containers", []):
        if c["name"] == name:
            return c
    raise CheckError(f"no container {name!r} (have {[c['name'] for c in spec.get('containers', [])]})")


def expand_env(c, s):
    env = {e["name"]: e.get("value") for e in c.get("env", []) if "value" in e}
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), s)


def flag(c, name):
    """Value of --name=value or --name value among args; None if absent."""
    args = c.get("args", [])
    for i, a in enumerate(args):
        if a == f"--{name}":
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                return expand_env(c, args[i + 1])
            return ""
        if a.startswith(f"--{name}="):
            return expand_env(c, a.split("=", 1)[1])
    return None


def mount_of(c, path):
    """The volumeMount of container c that covers path (longest mountPath)."""
    best = None
    for m in c.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    need(best is not None, f"container {c['name']}: no volumeMount covers {path}")
    return best


def host_path_of(spec, c, path):
    """Map a path inside container c to (volume, host path or None)."""
    best = mount_of(c, path)
    vol = next((v for v in spec.get("volumes", []) if v["name"] == best["name"]), None)
    need(vol is not None, f"container {c['name']}: mount {best['name']} has no volume")
    rest = path[len(best["mountPath"].rstrip("/")):]
    if "hostPath" in vol:
        return vol, vol["hostPath"]["path"].rstrip("/") + rest
    return vol, None


def socket_of(c, flagname):
    v = flag(c, flagname)
    need(v, f"container {c['name']}: --{flagname} missing")
    return v[len("unix://"):] if v.startswith("unix://") else v


def covers(host_dir, path):
    """Whether the host dir host_dir is path or one of its parents."""
    d = host_dir.rstrip("/")
    return path == d or path.startswith(d + "/")


def argv(c):
    return list(c.get("command", []) or []) + list(c.get("args", []) or [])


def is_mounter(c):
    return "mounter" in argv(c)


def daemonsets_running(objs, pred):
    return [d for d in by_kind(objs, "DaemonSet") if any(pred(c) for c in pod_spec(d)["containers"])]


def node_daemonset(objs):
    found = daemonsets_running(objs, lambda c: "--node" in c.get("args", []))
    need(len(found) == 1, f"expected exactly one DaemonSet running `cachalot csi --node`, found {len(found)}")
    return found[0]


def mounter_daemonset(objs):
    found = daemonsets_running(objs, is_mounter)
    need(len(found) == 1, f"expected exactly one mounter DaemonSet (a container running "
                          f"`cachalot mounter`), found {len(found)}")
    return found[0]


def probe_flag(cmd, name):
    """Value of --name=value or --name value in an exec probe's command."""
    for i, a in enumerate(cmd):
        if a == f"--{name}":
            return cmd[i + 1] if i + 1 < len(cmd) else ""
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


# --------------------------------------------------------------------------
# Invariants of a rendered install (kustomize base or Helm render)
# --------------------------------------------------------------------------

def check_install(objs, kubelet_dir="/var/lib/kubelet", cache_host="/var/lib/cachalot/cache",
                  state_host="/var/lib/cachalot/state",
                  mounter_state_host="/var/lib/cachalot/mounter",
                  mounter_socket_host="/run/cachalot", metrics=True, inline=True,
                  secret_namespaces=None, snapshots=True):
    plugin_dir = f"{kubelet_dir}/plugins/{DRIVER}"

    # CSIDriver
    d = one(objs, "CSIDriver")
    need(d["metadata"]["name"] == DRIVER, f"CSIDriver name {d['metadata']['name']!r} != {DRIVER}")
    modes = LIFECYCLE_MODES if inline else ["Persistent"]
    want = {"attachRequired": False, "podInfoOnMount": True, "fsGroupPolicy": "File",
            "volumeLifecycleModes": modes}
    why = {"volumeLifecycleModes": " (Ephemeral: inline `csi:` volumes in pod specs, which the "
                                   "plugin serves; without it the kubelet refuses them)"
                                   if inline else " (inlineVolumes.enabled=false)",
           "podInfoOnMount": " (the kubelet marks inline volumes with "
                             "csi.storage.k8s.io/ephemeral only with podInfoOnMount)"}
    for k, v in want.items():
        need(d["spec"].get(k) == v, f"CSIDriver {DRIVER}: spec.{k} = {d['spec'].get(k)!r}, "
                                    f"want {v!r}{why.get(k, '')}")

    for sc in by_kind(objs, "StorageClass"):
        need(sc["provisioner"] == DRIVER, f"StorageClass {sc['metadata']['name']}: provisioner "
                                          f"{sc['provisioner']!r} != {DRIVER}")

    # Controller
    dep = one(objs, "Deployment")
    spec = pod_spec(dep)
    plugin = next((c for c in spec["containers"] if "--controller" in c.get("args", [])), None)
    need(plugin is not None, "controller: no container runs with --controller")
    need("--node" not in plugin.get("args", []), "controller: plugin also has --node")
    for f in ("cache-dir", "state-dir", "node-id"):
        need(flag(plugin, f), f"controller: --{f} missing (required by `cachalot csi`)")
    sock = socket_of(plugin, "endpoint")
    vol, _ = host_path_of(spec, plugin, sock)
    need("emptyDir" in vol, f"controller: socket volume {vol['name']} is not an emptyDir")
    prov = container(spec, "csi-provisioner")
    need(socket_of(prov, "csi-address") == sock,
         f"provisioner --csi-address {socket_of(prov, 'csi-address')} != plugin endpoint {sock}")
    pvol, _ = host_path_of(spec, prov, sock)
    need(pvol["name"] == vol["name"], "provisioner and plugin mount different socket volumes")
    need(flag(prov, "extra-create-metadata") is not None,
         "provisioner lacks --extra-create-metadata (subDir templates would fail)")
    need(flag(prov, "leader-election") is not None, "provisioner lacks --leader-election")
    check_resizer(spec, plugin, sock, vol)
    check_snapshotter(spec, sock, vol, snapshots)
    names = [c["name"] for c in spec["containers"]]
    want = controller_containers(snapshots)
    need(sorted(names) == sorted(want),
         f"controller: containers {names}, want {want} (docs/deploy.md: "
         f"the controller pod is {len(CONTROLLER_CONTAINERS)}/{len(CONTROLLER_CONTAINERS)} ready)")
    for name, prefix in SIDECAR_IMAGES.items():
        if name not in want:
            continue
        img = container(spec, name)["image"]
        need(img.startswith(prefix), f"controller: {name} image {img}, want {prefix}x (the "
                                     "version whose flags and RBAC this checker knows)")
    check_liveness(spec, plugin, sock, "controller")

    # RBAC of the controller's service account
    sa = spec.get("serviceAccountName")
    need(sa, "controller: no serviceAccountName")
    ns = dep["metadata"].get("namespace")
    need(any(s["metadata"]["name"] == sa for s in by_kind(objs, "ServiceAccount")),
         f"controller ServiceAccount {sa} is not defined")
    check_rbac(objs, sa, ns, [c["name"] for c in spec["containers"]], secret_namespaces)

    # Node plugin
    ds = node_daemonset(objs)
    spec = pod_spec(ds)
    nsa = spec.get("serviceAccountName")
    need(any(s["metadata"]["name"] == nsa for s in by_kind(objs, "ServiceAccount")),
         f"node ServiceAccount {nsa} is not defined")
    node = next((c for c in spec["containers"] if "--node" in c.get("args", [])), None)
    need(node is not None, "node: no container runs with --node")
    need("--controller" not in node.get("args", []), "node: plugin also has --controller")
    need(node.get("securityContext", {}).get("privileged") is True, "node plugin is not privileged")
    need(flag(node, "node-id") == "$(NODE_NAME)", f"node: --node-id is {flag(node, 'node-id')!r}, "
                                                  "want $(NODE_NAME)")
    env = {e["name"]: e for e in node.get("env", [])}
    need(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
         == "spec.nodeName", "node: NODE_NAME is not from spec.nodeName")
    need("RUST_LOG" in env, "node: RUST_LOG not set")

    # kubelet dir: Bidirectional, same path inside and outside
    kmounts = [m for m in node.get("volumeMounts", []) if m["mountPath"].rstrip("/") == kubelet_dir]
    need(kmounts, f"node plugin does not mount the kubelet dir {kubelet_dir}")
    need(kmounts[0].get("mountPropagation") == "Bidirectional",
         f"node plugin's kubelet mount has mountPropagation "
         f"{kmounts[0].get('mountPropagation')!r}, want Bidirectional (mounts would not reach pods)")
    kvol, khost = host_path_of(spec, node, kubelet_dir)
    need(khost == kubelet_dir, f"kubelet dir volume hostPath {khost} != mountPath {kubelet_dir}")

    # the socket: plugin endpoint, registrar, liveness probe, kubelet registration
    nsock = socket_of(node, "endpoint")
    _, sock_host = host_path_of(spec, node, nsock)
    need(sock_host == f"{plugin_dir}/csi.sock",
         f"node plugin socket is {sock_host} on the host, want {plugin_dir}/csi.sock")
    reg = container(spec, "node-driver-registrar")
    reg_sock = socket_of(reg, "csi-address")
    _, reg_host = host_path_of(spec, reg, reg_sock)
    need(reg_host == sock_host, f"registrar --csi-address is {reg_host} on the host, plugin "
                                f"listens on {sock_host}")
    krp = flag(reg, "kubelet-registration-path")
    need(krp == f"{plugin_dir}/csi.sock",
         f"registrar --kubelet-registration-path {krp!r} != {plugin_dir}/csi.sock")
    need(krp == sock_host, "kubelet-registration-path is not where the plugin socket is")
    _, regdir = host_path_of(spec, reg, "/registration")
    need(regdir == f"{kubelet_dir}/plugins_registry",
         f"registrar /registration is {regdir}, want {kubelet_dir}/plugins_registry")
    check_liveness(spec, node, nsock, "node")

    # state; no FUSE and no page cache in the node plugin (the mounter's)
    _, st = host_path_of(spec, node, flag(node, "state-dir"))
    need(st == state_host, f"node --state-dir is {st} on the host, want {state_host}")
    for v in spec.get("volumes", []):
        hp = v.get("hostPath", {}).get("path")
        if hp is None:
            continue
        need(not covers(hp, "/dev/fuse"),
             f"node plugin mounts /dev/fuse (volume {v['name']}, hostPath {hp}): it must not run "
             "FUSE, the mounter does")
        need(not covers(hp, cache_host),
             f"node plugin mounts the page cache {cache_host} (volume {v['name']}): only the "
             "mounter may")
    check_mounter(objs, ds, node, kubelet_dir, cache_host, state_host, mounter_state_host,
                  mounter_socket_host)

    # every pod: container ports unique, images pinned
    for w in [dep] + by_kind(objs, "DaemonSet"):
        ports = [p["containerPort"] for c in pod_spec(w)["containers"] for p in c.get("ports", [])]
        need(len(ports) == len(set(ports)), f"{w['kind']}: duplicate containerPort {ports}")
        for c in pod_spec(w)["containers"]:
            img = c["image"]
            need(":" in img.split("/")[-1] and not img.endswith(":latest"),
                 f"{w['kind']}/{c['name']}: image {img} is not pinned to a tag")
            need(c.get("resources", {}).get("requests"), f"{w['kind']}/{c['name']}: no requests")
    check_metrics(objs, metrics)


def check_mounter(objs, nds, node, kubelet_dir, cache_host, state_host, mounter_state_host,
                  mounter_socket_host):
    """The mounter DaemonSet, against the node plugin's DaemonSet nds."""
    mds = mounter_daemonset(objs)
    name = mds["metadata"]["name"]
    need(len(by_kind(objs, "DaemonSet")) == 2,
         f"expected two DaemonSets (node plugin, mounter), found "
         f"{[d['metadata']['name'] for d in by_kind(objs, 'DaemonSet')]}")

    # live takeover: the new pod must start beside the old one
    us = mds["spec"].get("updateStrategy", {})
    ru = us.get("rollingUpdate", {}) or {}
    need(us.get("type") == "RollingUpdate" and ru.get("maxSurge") == 1 and ru.get("maxUnavailable") == 0,
         f"mounter {name}: updateStrategy {us}, want RollingUpdate with maxSurge 1 and "
         "maxUnavailable 0 (the new mounter must start beside the old one to take its sessions "
         "over; deleting the old one first turns an upgrade into a crash recovery)")

    spec = pod_spec(mds)
    nspec = pod_spec(nds)
    mounters = [c for c in spec["containers"] if is_mounter(c)]
    need(len(mounters) == 1, f"mounter {name}: {len(mounters)} containers run `cachalot mounter`")
    mc = mounters[0]
    av = argv(mc)
    need(av[:2] == [BINARY, "mounter"],
         f"mounter {name}: runs {av[:2]}, want [{BINARY!r}, 'mounter'] (the image's entrypoint is "
         "`cachalot csi`: set command, not only args)")
    need(mc["image"] == node["image"] and mc.get("imagePullPolicy") == node.get("imagePullPolicy"),
         f"mounter image {mc['image']} ({mc.get('imagePullPolicy')}) != node plugin image "
         f"{node['image']} ({node.get('imagePullPolicy')})")
    need(mc.get("securityContext", {}).get("privileged") is True, "mounter is not privileged")
    need("RUST_LOG" in {e["name"] for e in mc.get("env", [])}, "mounter: RUST_LOG not set")

    # it must run on every node the node plugin runs on, and not be evicted first
    for k in ("nodeSelector", "tolerations"):
        need(spec.get(k) == nspec.get(k),
             f"mounter {k} {spec.get(k)} != node plugin's {nspec.get(k)} (NodeStage fails on a "
             "node without a mounter)")
    for w, sp in ((mds, spec), (nds, nspec)):
        need(sp.get("priorityClassName") == "system-node-critical",
             f"{w['metadata']['name']}: priorityClassName {sp.get('priorityClassName')!r}, "
             "want system-node-critical")

    # the socket: mounter --socket == node plugin --mounter-socket, same host dir, same path
    msock = flag(mc, "socket")
    nsock = flag(node, "mounter-socket")
    need(msock, f"mounter {name}: --socket missing")
    need(nsock, "node plugin: --mounter-socket missing (it would run FUSE itself)")
    need(msock == nsock, f"mounter --socket {msock} != node plugin --mounter-socket {nsock}")
    mm, nm = mount_of(mc, msock), mount_of(node, nsock)
    mvol, mhost = host_path_of(spec, mc, msock)
    nvol, nhost = host_path_of(nspec, node, nsock)
    need(mhost is not None and nhost is not None,
         f"mounter socket {msock}: volumes {mvol['name']} / {nvol['name']} must be hostPaths "
         "(the two pods share it through the host)")
    need(mm["mountPath"].rstrip("/") == nm["mountPath"].rstrip("/") and mhost == nhost,
         f"mounter socket dir: mounter mounts {mvol['hostPath']['path']} at {mm['mountPath']}, "
         f"node plugin mounts {nvol['hostPath']['path']} at {nm['mountPath']}: want the same "
         "host dir at the same path")
    need(os.path.dirname(mhost) == mounter_socket_host.rstrip("/"),
         f"mounter socket is {mhost} on the host, want it in {mounter_socket_host}")

    # FUSE: /dev/fuse and the kubelet dir, Bidirectional, same path inside and outside
    fvol, fh = host_path_of(spec, mc, "/dev/fuse")
    need(fh == "/dev/fuse" and fvol["hostPath"].get("type") == "CharDevice",
         "mounter: /dev/fuse is not a hostPath CharDevice")
    kmounts = [m for m in mc.get("volumeMounts", []) if m["mountPath"].rstrip("/") == kubelet_dir]
    need(kmounts, f"mounter does not mount the kubelet dir {kubelet_dir}")
    need(kmounts[0].get("mountPropagation") == "Bidirectional",
         f"mounter's kubelet mount has mountPropagation {kmounts[0].get('mountPropagation')!r}, "
         "want Bidirectional (FUSE mounts would not reach the kubelet and the pods)")
    _, khost = host_path_of(spec, mc, kubelet_dir)
    need(khost == kubelet_dir, f"mounter kubelet dir hostPath {khost} != mountPath {kubelet_dir}")

    # cache and state
    for f in ("cache-dir", "state-dir"):
        need(flag(mc, f), f"mounter: --{f} missing")
    _, ch = host_path_of(spec, mc, flag(mc, "cache-dir"))
    need(ch == cache_host, f"mounter --cache-dir is {ch} on the host, want {cache_host}")
    _, st = host_path_of(spec, mc, flag(mc, "state-dir"))
    need(st == mounter_state_host, f"mounter --state-dir is {st} on the host, want {mounter_state_host}")
    need(st != state_host, f"mounter and node plugin share the state dir {st}")

    # After a takeover the old mounter must stay alive: exiting 0 would make
    # the kubelet restart its container, and the restarted mounter would take
    # the sessions back from the new pod.
    need("--idle-after-handover" in argv(mc),
         f"mounter {name}: --idle-after-handover missing (the old mounter would exit after a "
         "takeover, the kubelet would restart it and it would take the sessions back)")

    # readiness gates the rolling update: the new pod only becomes Ready once
    # it answers on the socket, i.e. once it took the sessions over
    rp = mc.get("readinessProbe")
    need(rp is not None and "exec" in rp,
         f"mounter {name}: no exec readinessProbe (want `cachalot sessions --socket {msock} "
         "--quiet`: without it the old pod is deleted before the new one took the sessions over)")
    rcmd = rp["exec"].get("command", [])
    need(rcmd[:2] == [BINARY, "sessions"] and probe_flag(rcmd, "socket") == msock
         and "--quiet" in rcmd,
         f"mounter {name}: readinessProbe runs {rcmd}, want [{BINARY}, sessions, --socket, "
         f"{msock}, --quiet]")
    mrs = mds["spec"].get("minReadySeconds", 0)
    need(mrs >= 1, f"mounter {name}: minReadySeconds {mrs}, want at least 1 (the probe reaches "
                   "the old mounter on the shared socket until the new one contacted it)")

    # liveness: only "does it answer on its socket", and slow to give up
    lp = mc.get("livenessProbe")
    if lp is not None:
        need(set(lp) & {"httpGet", "tcpSocket", "grpc"} == set() and "exec" in lp,
             f"mounter livenessProbe {sorted(lp)}: want an exec of `cachalot sessions` or none")
        cmd = lp["exec"].get("command", [])
        need(cmd[:2] == [BINARY, "sessions"] and probe_flag(cmd, "socket") == msock,
             f"mounter livenessProbe runs {cmd}, want [{BINARY}, sessions, --socket, {msock}, ...]")
        budget = lp.get("periodSeconds", 10) * lp.get("failureThreshold", 3)
        need(budget >= 300, f"mounter livenessProbe restarts it after {budget}s of failures: a "
                            "restart pauses every mount of the node (crash recovery), allow at "
                            "least 300s")

    res = mc.get("resources", {})
    need(res.get("requests", {}).get("memory") and res.get("limits", {}).get("memory"),
         f"mounter: resources {res} lack a memory request and limit")


def check_resizer(spec, plugin, sock, vol):
    """The csi-resizer sidecar: PVC expansion through ControllerExpandVolume."""
    names = [c["name"] for c in spec["containers"]]
    need("csi-resizer" in names,
         f"controller: no csi-resizer container (have {names}): the plugin advertises "
         "EXPAND_VOLUME, but without the external-resizer a PVC resize never reaches it (add "
         "the csi-resizer sidecar on the plugin's socket)")
    rs = container(spec, "csi-resizer")
    rsock = socket_of(rs, "csi-address")
    fix = (f"mount the plugin's socket volume {vol['name']} at {os.path.dirname(sock)} and "
           f"set --csi-address to {sock}")
    need(rsock == sock, f"controller: csi-resizer --csi-address {rsock} is not the plugin's "
                        f"socket {sock}: {fix}")
    try:
        rvol, _ = host_path_of(spec, rs, rsock)
    except CheckError as e:
        raise CheckError(f"controller: csi-resizer: {e}: {fix}")
    need(rvol["name"] == vol["name"],
         f"controller: csi-resizer reaches {rsock} through volume {rvol['name']}, the plugin "
         f"listens in volume {vol['name']}: {fix}")
    need(flag(rs, "leader-election") is not None,
         "controller: csi-resizer lacks --leader-election (with more than one controller "
         "replica every resizer would expand the same PVC)")
    need(flag(rs, "handle-volume-inuse-error") == "false",
         f"controller: csi-resizer --handle-volume-inuse-error is "
         f"{flag(rs, 'handle-volume-inuse-error')!r}, want false: the plugin expands online "
         "(it never answers 'volume in use'), and with the default true the resizer watches "
         "every pod of the cluster, which its RBAC does not grant")


def controller_containers(snapshots=True):
    return [c for c in CONTROLLER_CONTAINERS if snapshots or c != "csi-snapshotter"]


def check_snapshotter(spec, sock, vol, enabled=True):
    """The csi-snapshotter sidecar: VolumeSnapshots through CreateSnapshot /
    DeleteSnapshot (the plugin advertises CREATE_DELETE_SNAPSHOT)."""
    names = [c["name"] for c in spec["containers"]]
    if not enabled:
        need("csi-snapshotter" not in names,
             "controller: a csi-snapshotter container although snapshots are disabled "
             "(snapshots.enabled=false)")
        return
    need("csi-snapshotter" in names,
         f"controller: no csi-snapshotter container (have {names}): the plugin advertises "
         "CREATE_DELETE_SNAPSHOT, but without the external-snapshotter sidecar a VolumeSnapshot "
         "never reaches it (add the csi-snapshotter sidecar on the plugin's socket)")
    sn = container(spec, "csi-snapshotter")
    ssock = socket_of(sn, "csi-address")
    fix = (f"mount the plugin's socket volume {vol['name']} at {os.path.dirname(sock)} and "
           f"set --csi-address to {sock}")
    need(ssock == sock, f"controller: csi-snapshotter --csi-address {ssock} is not the plugin's "
                        f"socket {sock}: {fix}")
    try:
        svol, _ = host_path_of(spec, sn, ssock)
    except CheckError as e:
        raise CheckError(f"controller: csi-snapshotter: {e}: {fix}")
    need(svol["name"] == vol["name"],
         f"controller: csi-snapshotter reaches {ssock} through volume {svol['name']}, the plugin "
         f"listens in volume {vol['name']}: {fix}")
    need(flag(sn, "leader-election") is not None,
         "controller: csi-snapshotter lacks --leader-election (with more than one controller "
         "replica every snapshotter would take the same snapshot)")
    gates = flag(sn, "feature-gates")
    need(gates is not None and SNAPSHOTTER_GATES in gates.split(","),
         f"controller: csi-snapshotter --feature-gates is {gates!r}, want {SNAPSHOTTER_GATES}: "
         "the plugin has no group controller service, and with the gate on the sidecar "
         "waits for groupsnapshot.storage.k8s.io objects its RBAC does not grant")


def check_liveness(spec, plugin, sock, role):
    lp = container(spec, "liveness-probe")
    _, a = host_path_of(spec, lp, socket_of(lp, "csi-address"))
    _, b = host_path_of(spec, plugin, sock)
    va, _ = host_path_of(spec, lp, socket_of(lp, "csi-address"))
    vb, _ = host_path_of(spec, plugin, sock)
    need(va["name"] == vb["name"] and socket_of(lp, "csi-address") == sock and a == b,
         f"{role}: livenessprobe --csi-address does not reach the plugin socket")
    port = flag(lp, "health-port")
    probe = plugin.get("livenessProbe", {}).get("httpGet", {})
    named = {p.get("name"): p["containerPort"] for p in plugin.get("ports", [])}
    target = named.get(probe.get("port"), probe.get("port"))
    need(port is not None and str(target) == port,
         f"{role}: plugin livenessProbe targets port {target}, livenessprobe serves {port}")


def rule_grants(rules):
    """{(apiGroup, resource): verbs} of a list of PolicyRules."""
    granted = {}
    for r in rules or []:
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                granted.setdefault((g, res), set()).update(r.get("verbs", []))
    return granted


def fmt_grants(g):
    return sorted((f"{grp}/{res}" if grp else res, sorted(v)) for (grp, res), v in g.items())


def binds(binding, sa, ns):
    return any(s.get("kind") == "ServiceAccount" and s.get("name") == sa and
               s.get("namespace") == ns for s in binding.get("subjects", []) or [])


def check_rbac(objs, sa, ns, sidecars, secret_namespaces=None):
    """The controller's ServiceAccount ns/sa: cluster-wide exactly what its
    sidecars need (never Secrets), leases in ns, `get` on Secrets only in
    secret_namespaces (default: ns) through Roles."""
    # Secrets are never granted cluster-wide, to anyone in the install
    for cr in by_kind(objs, "ClusterRole"):
        g = rule_grants(cr.get("rules"))
        sec = {v for (grp, res), verbs in g.items() if grp in ("", "*") and
               res in ("secrets", "*") for v in verbs}
        need(not sec,
             f"ClusterRole {cr['metadata']['name']} grants {sorted(sec)} on secrets in every "
             "namespace: the provisioner only needs `get` on its S3 StorageClasses' provisioner "
             "Secrets; remove the rule and grant `get` on secrets with a Role + RoleBinding in "
             "the secret namespaces (kustomize: cachalot-provisioner-secrets; Helm: "
             "provisioner.secretNamespaces)")

    roles = {crb["roleRef"]["name"] for crb in by_kind(objs, "ClusterRoleBinding")
             if binds(crb, sa, ns)}
    need(roles, f"no ClusterRoleBinding for ServiceAccount {ns}/{sa}")
    names = {cr["metadata"]["name"] for cr in by_kind(objs, "ClusterRole")}
    need(roles <= names, f"ClusterRoleBindings of {ns}/{sa} name missing ClusterRoles "
                         f"{sorted(roles - names)}")
    granted = {}
    for cr in by_kind(objs, "ClusterRole"):
        if cr["metadata"]["name"] in roles:
            for k, v in rule_grants(cr.get("rules")).items():
                granted.setdefault(k, set()).update(v)
    wanted = {}
    needs = [(s, r) for s, r in SIDECAR_RULES.items() if s in sidecars]
    if "csi-snapshotter" in sidecars and "csi-provisioner" in sidecars:
        needs.append(("csi-provisioner (restores from VolumeSnapshots)",
                      PROVISIONER_SNAPSHOT_RULES))
    for sidecar, rules in needs:
        missing = {k: v - granted.get(k, set()) for k, v in rules.items()}
        missing = {k: v for k, v in missing.items() if v}
        need(not missing, f"ServiceAccount {ns}/{sa} lacks {fmt_grants(missing)} cluster-wide, "
                          f"which the {sidecar} sidecar needs: add them to its ClusterRole")
        for k, v in rules.items():
            wanted.setdefault(k, set()).update(v)
    extra = {k: v - wanted.get(k, set()) for k, v in granted.items()}
    extra = {k: v for k, v in extra.items() if v}
    need(not extra, f"the ClusterRoles {sorted(roles)} of {ns}/{sa} grant {fmt_grants(extra)}, "
                    f"which none of its sidecars {sorted(s for s in sidecars if s in SIDECAR_RULES)} "
                    "needs: remove them (least privilege)")

    # Roles bound to the ServiceAccount: {namespace: grants}
    per_ns = {}
    for rb in by_kind(objs, "RoleBinding"):
        if not binds(rb, sa, ns):
            continue
        rns = rb["metadata"].get("namespace")
        ref = rb["roleRef"]
        need(ref.get("kind") == "Role",
             f"RoleBinding {rns}/{rb['metadata']['name']} of {ns}/{sa} refers to a "
             f"{ref.get('kind')}: bind namespaced Roles")
        role = next((r for r in by_kind(objs, "Role") if r["metadata"]["name"] == ref["name"]
                     and r["metadata"].get("namespace") == rns), None)
        need(role is not None, f"RoleBinding {rns}/{rb['metadata']['name']} binds Role "
                               f"{rns}/{ref['name']}, which is not defined")
        for k, v in rule_grants(role.get("rules")).items():
            per_ns.setdefault(rns, {}).setdefault(k, set()).update(v)
    lease = per_ns.get(ns, {}).get(("coordination.k8s.io", "leases"), set())
    need(lease == LEASE_VERBS, f"leader election Role grants {sorted(lease)} on leases in {ns}, "
                               f"want {sorted(LEASE_VERBS)}")
    want_secret_ns = set(secret_namespaces or [ns])
    have_secret_ns = {n for n, g in per_ns.items() if ("", "secrets") in g}
    for n in sorted(want_secret_ns - have_secret_ns):
        raise CheckError(f"no Role granting `get` on secrets in namespace {n} bound to "
                         f"ServiceAccount {ns}/{sa}: the provisioner could not read the S3 "
                         f"provisioner Secrets there (add a Role with get on secrets and a "
                         f"RoleBinding to {ns}/{sa} in {n})")
    need(have_secret_ns <= want_secret_ns,
         f"{ns}/{sa} may read secrets in {sorted(have_secret_ns - want_secret_ns)}, "
         f"want only {sorted(want_secret_ns)}")
    for n, g in per_ns.items():
        allowed = dict(SECRET_RULES) if n in want_secret_ns else {}
        if n == ns:
            allowed[("coordination.k8s.io", "leases")] = LEASE_VERBS
        extra = {k: v - allowed.get(k, set()) for k, v in g.items()}
        extra = {k: v for k, v in extra.items() if v}
        need(not extra, f"Roles bound to {ns}/{sa} in {n} grant {fmt_grants(extra)}: want only "
                        f"{fmt_grants(allowed)} there")


# --------------------------------------------------------------------------
# Metrics: --metrics-addr, the `metrics` port, PodMonitors
# --------------------------------------------------------------------------

def cachalot_containers(objs):
    """(role, workload, container) of the controller plugin, the node plugin
    and the mounter."""
    dep = one(objs, "Deployment")
    ctrl = next((c for c in pod_spec(dep)["containers"] if "--controller" in c.get("args", [])), None)
    need(ctrl is not None, "controller: no container runs with --controller")
    nds, mds = node_daemonset(objs), mounter_daemonset(objs)
    node = next(c for c in pod_spec(nds)["containers"] if "--node" in c.get("args", []))
    mounter = next(c for c in pod_spec(mds)["containers"] if is_mounter(c))
    return [("controller", dep, ctrl), ("node plugin", nds, node), ("mounter", mds, mounter)]


def parse_listen_addr(value, where):
    """(host, port) of an ADDR as `cachalot --metrics-addr` takes it (an IP
    socket address: 0.0.0.0:9810, [::]:9810)."""
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+)):([0-9]+)", value or "")
    need(m, f"{where}: --metrics-addr {value!r} is not IP:PORT (e.g. 0.0.0.0:{METRICS_PORT})")
    port = int(m.group(3))
    need(0 < port < 65536, f"{where}: --metrics-addr port {port} out of range")
    return m.group(1) or m.group(2), port


def named_port(c, name):
    return next((p for p in c.get("ports", []) or [] if p.get("name") == name), None)


def check_metrics_port(where, c):
    """A container's --metrics-addr and its `metrics` containerPort agree."""
    addr = flag(c, "metrics-addr")
    port = named_port(c, METRICS_PORT_NAME)
    if addr is None:
        need(port is None, f"{where}: containerPort {METRICS_PORT_NAME!r} without --metrics-addr "
                           "(nothing listens there: add the flag or remove the port)")
        return
    host, num = parse_listen_addr(addr, where)
    need(host in ("0.0.0.0", "::"),
         f"{where}: --metrics-addr listens on {host}, which cannot be scraped from outside the "
         "pod: use 0.0.0.0")
    need(port is not None,
         f"{where}: --metrics-addr={addr} but no containerPort named {METRICS_PORT_NAME!r} "
         f"(add `- name: {METRICS_PORT_NAME}, containerPort: {num}`: PodMonitors select it by name)")
    need(port["containerPort"] == num and port.get("protocol", "TCP") == "TCP",
         f"{where}: containerPort {METRICS_PORT_NAME!r} is {port['containerPort']}/"
         f"{port.get('protocol', 'TCP')}, --metrics-addr listens on {num}/TCP")


def check_metrics(objs, enabled):
    """Every container: flag and port agree. The three cachalot containers:
    all serve metrics (enabled) or none does, on one port."""
    for w in by_kind(objs, "Deployment") + by_kind(objs, "DaemonSet"):
        for c in pod_spec(w)["containers"]:
            check_metrics_port(f"{w['kind']} {w['metadata']['name']}/{c['name']}", c)
    ports = set()
    for role, w, c in cachalot_containers(objs):
        addr = flag(c, "metrics-addr")
        need(not pod_spec(w).get("hostNetwork"),
             f"{role} ({w['metadata']['name']}): hostNetwork: the node plugin and the mounter "
             "would compete for the metrics port on the host, and a mounter's successor pod "
             "with its predecessor")
        if enabled:
            need(addr is not None, f"{role} ({w['metadata']['name']}/{c['name']}): no "
                                   f"--metrics-addr (want --metrics-addr=0.0.0.0:{METRICS_PORT} "
                                   f"and a containerPort named {METRICS_PORT_NAME!r})")
            ports.add(parse_listen_addr(addr, role)[1])
        else:
            need(addr is None, f"{role}: --metrics-addr={addr} although metrics are disabled")
    need(len(ports) <= 1, f"metrics ports differ between the pods: {sorted(ports)} (one port "
                          "for all: each pod has its own network namespace)")


DURATION = re.compile(r"(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)")
LABEL_NAME = re.compile(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
PODMONITOR_SPEC_KEYS = {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel",
                        "podTargetLabels", "sampleLimit", "targetLimit", "labelLimit",
                        "attachMetadata"}
ENDPOINT_KEYS = {"port", "portNumber", "path", "scheme", "params", "interval", "scrapeTimeout",
                 "honorLabels", "honorTimestamps", "relabelings", "metricRelabelings"}
RELABEL_KEYS = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement",
                "action"}
RELABEL_ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                   "lowercase", "uppercase", "keepequal", "dropequal"}
SELECTOR_OPS = {"In", "NotIn", "Exists", "DoesNotExist"}


def api_group(o):
    av = o.get("apiVersion", "")
    return av.split("/")[0] if "/" in av else ""


def only_keys(d, allowed, where):
    need(isinstance(d, dict), f"{where}: not a mapping")
    extra = set(d) - allowed
    need(not extra, f"{where}: unknown fields {sorted(extra)} (known: {sorted(allowed)})")


def check_labels(labels, where):
    need(isinstance(labels, dict), f"{where}: not a mapping")
    for k, v in labels.items():
        need(isinstance(k, str) and LABEL_NAME.fullmatch(k), f"{where}: invalid label name {k!r}")
        need(isinstance(v, str) and LABEL_VALUE.fullmatch(v) and len(v) <= 63,
             f"{where}: label {k}: invalid value {v!r} (a string of at most 63 "
             "alphanumerics, '-', '_', '.'; quote numbers)")


def check_label_selector(sel, where):
    only_keys(sel, {"matchLabels", "matchExpressions"}, where)
    check_labels(sel.get("matchLabels", {}), f"{where}.matchLabels")
    for i, e in enumerate(sel.get("matchExpressions", []) or []):
        only_keys(e, {"key", "operator", "values"}, f"{where}.matchExpressions[{i}]")
        need(e.get("operator") in SELECTOR_OPS, f"{where}.matchExpressions[{i}]: operator "
                                                f"{e.get('operator')!r} not in {sorted(SELECTOR_OPS)}")
    need(sel.get("matchLabels") or sel.get("matchExpressions"),
         f"{where}: empty selector (would select every pod of the namespace)")


def check_monitoring_structure(o):
    """A strict subset of the prometheus-operator CRDs (kubernetes-validate
    has no schema for them): only PodMonitor, with the fields used here."""
    kind = o.get("kind")
    need(kind == "PodMonitor", f"no structural check for {o.get('apiVersion')} {kind} "
                               "(extend check_monitoring_structure)")
    need(o.get("apiVersion") == f"{MONITORING_GROUP}/v1",
         f"PodMonitor apiVersion {o.get('apiVersion')!r}, want {MONITORING_GROUP}/v1")
    only_keys(o, {"apiVersion", "kind", "metadata", "spec"}, "PodMonitor")
    meta = o.get("metadata", {})
    check_object_meta(meta, "PodMonitor")
    check_labels(meta.get("labels", {}) or {}, "PodMonitor metadata.labels")
    spec = o.get("spec")
    only_keys(spec, PODMONITOR_SPEC_KEYS, "PodMonitor spec")
    need("selector" in spec, "PodMonitor spec: no selector")
    check_label_selector(spec["selector"], "PodMonitor spec.selector")
    nss = spec.get("namespaceSelector", {})
    only_keys(nss, {"any", "matchNames"}, "PodMonitor spec.namespaceSelector")
    eps = spec.get("podMetricsEndpoints")
    need(isinstance(eps, list) and eps, "PodMonitor spec.podMetricsEndpoints: empty")
    for i, ep in enumerate(eps):
        where = f"PodMonitor spec.podMetricsEndpoints[{i}]"
        only_keys(ep, ENDPOINT_KEYS, where)
        need(isinstance(ep.get("port"), str) and ep["port"],
             f"{where}: no port name (select the containerPort by name)")
        need(str(ep.get("path", "/metrics")).startswith("/"), f"{where}: path {ep.get('path')!r}")
        for d in ("interval", "scrapeTimeout"):
            if d in ep:
                need(isinstance(ep[d], str) and ep[d] and DURATION.fullmatch(ep[d]),
                     f"{where}.{d} {ep[d]!r} is not a Prometheus duration (e.g. 30s, 1m)")
        for j, r in enumerate(ep.get("relabelings", []) or []):
            only_keys(r, RELABEL_KEYS, f"{where}.relabelings[{j}]")
            need(r.get("action", "replace").lower() in RELABEL_ACTIONS,
                 f"{where}.relabelings[{j}]: action {r.get('action')!r}")
            need(isinstance(r.get("sourceLabels", []), list), f"{where}.relabelings[{j}].sourceLabels")


def check_object_meta(meta, kind):
    """ObjectMeta, through a kind that has a schema."""
    for v in K8S_VERSIONS:
        try:
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta},
                                         v, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise CheckError(f"{kind} metadata: {e.message} at {list(e.path)}")
    need(meta.get("name"), f"{kind}: no metadata.name")


def check_snapshot_structure(o):
    """A strict subset of the snapshot.storage.k8s.io/v1 CRDs (kubernetes-
    validate has no schema for them): VolumeSnapshotClass and VolumeSnapshot
    with the fields the external-snapshotter's CRDs define."""
    kind = o.get("kind")
    need(kind in ("VolumeSnapshotClass", "VolumeSnapshot"),
         f"no structural check for {o.get('apiVersion')} {kind} "
         "(extend check_snapshot_structure)")
    need(o.get("apiVersion") == f"{SNAPSHOT_GROUP}/v1",
         f"{kind} apiVersion {o.get('apiVersion')!r}, want {SNAPSHOT_GROUP}/v1 (v1beta1 is "
         "gone since external-snapshotter v4)")
    meta = o.get("metadata", {})
    check_object_meta(meta, kind)
    name = meta["name"]
    if kind == "VolumeSnapshotClass":
        only_keys(o, {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"},
                  f"VolumeSnapshotClass {name}")
        need(meta.get("namespace") is None,
             f"VolumeSnapshotClass {name}: namespace {meta.get('namespace')!r} (cluster-scoped)")
        need(isinstance(o.get("driver"), str) and o["driver"],
             f"VolumeSnapshotClass {name}: no driver (required)")
        need(o.get("deletionPolicy") in ("Delete", "Retain"),
             f"VolumeSnapshotClass {name}: deletionPolicy {o.get('deletionPolicy')!r}, want "
             "Delete or Retain (required)")
        params = o.get("parameters", {})
        need(isinstance(params, dict) and all(isinstance(v, str) for v in params.values()),
             f"VolumeSnapshotClass {name}: parameters must map strings to strings (quote them)")
        return
    only_keys(o, {"apiVersion", "kind", "metadata", "spec"}, f"VolumeSnapshot {name}")
    spec = o.get("spec")
    only_keys(spec, {"source", "volumeSnapshotClassName"}, f"VolumeSnapshot {name} spec")
    src = spec.get("source")
    only_keys(src, {"persistentVolumeClaimName", "volumeSnapshotContentName"},
              f"VolumeSnapshot {name} spec.source")
    need(len(src) == 1 and all(isinstance(v, str) and v for v in src.values()),
         f"VolumeSnapshot {name}: spec.source needs exactly one of persistentVolumeClaimName "
         f"(a new snapshot) or volumeSnapshotContentName (an existing one), has {sorted(src)}")
    cls = spec.get("volumeSnapshotClassName")
    need(cls is None or (isinstance(cls, str) and cls),
         f"VolumeSnapshot {name}: volumeSnapshotClassName {cls!r}")


def selector_matches(sel, labels):
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        k, op, vals = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and k in labels and labels[k] in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def check_example_podmonitors(examples, base):
    pms = by_kind(examples, "PodMonitor")
    need(pms, "no example PodMonitor for the kustomize install")
    for pm in pms:
        check_podmonitor(pm, base)


def check_podmonitor(pm, objs):
    """The PodMonitor pm scrapes the controller, node plugin and mounter pods
    of the install objs: same namespace (or selected), selector matches their
    pod labels, every endpoint's port name is a containerPort of theirs."""
    name = pm["metadata"]["name"]
    spec = pm["spec"]
    nss = spec.get("namespaceSelector", {}) or {}
    for role, w, c in cachalot_containers(objs):
        wns = w["metadata"].get("namespace")
        in_ns = nss.get("any") is True or wns in (nss.get("matchNames") or
                                                  [pm["metadata"].get("namespace")])
        need(in_ns, f"PodMonitor {name} (namespace {pm['metadata'].get('namespace')}, "
                    f"namespaceSelector {nss}) does not look in {wns}, the {role}'s namespace")
        labels = w["spec"]["template"]["metadata"].get("labels", {})
        need(selector_matches(spec["selector"], labels),
             f"PodMonitor {name}: selector {spec['selector']} does not match the {role} pods "
             f"({w['metadata']['name']}, labels {labels})")
        names = {p.get("name") for cc in pod_spec(w)["containers"] for p in cc.get("ports", []) or []}
        for ep in spec["podMetricsEndpoints"]:
            node_label = [r for r in ep.get("relabelings", []) or []
                          if r.get("sourceLabels") == ["__meta_kubernetes_pod_node_name"]
                          and r.get("targetLabel") == "node" and r.get("action", "replace") == "replace"]
            need(node_label, f"PodMonitor {name}: endpoint {ep['port']!r} does not set the label "
                             "`node` from __meta_kubernetes_pod_node_name (docs/deploy.md says "
                             "it does: which node a mounter's cache is on)")
            need(ep["port"] in names,
                 f"PodMonitor {name}: port {ep['port']!r} is not a containerPort of the {role} "
                 f"pods ({w['metadata']['name']} has {sorted(n for n in names if n)})")


# --------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------

def params_keys(root):
    """STORAGE_CLASS_KEYS and VOLUME_CONTEXT keys from src/csi/params/mod.rs."""
    src = open(os.path.join(root, "src/csi/params/mod.rs"), encoding="utf-8").read()
    lists = re.findall(r"const [A-Z_]+: &\[&str\] = &\[(.*?)\];", src, re.S)
    need(len(lists) >= 2, "src/csi/params/mod.rs: parameter lists not found")
    parsed = [re.findall(r'"([^"]+)"', l) for l in lists]
    sc = next((p for p in parsed if "server" in p), None)
    ctx = next((p for p in parsed if "server" not in p and "cacheSize" in p), None)
    need(sc and ctx, "src/csi/params/mod.rs: STORAGE_CLASS_KEYS / context keys not found")
    return {k.lower() for k in sc}, {k.lower() for k in ctx}


def check_storageclass_params(sc, sc_keys):
    name = sc["metadata"]["name"]
    for k, v in sc.get("parameters", {}).items():
        if k.startswith(SECRET_PARAM_PREFIX):
            need(k in SECRET_PARAMS, f"StorageClass {name}: unknown parameter {k}")
            continue
        need(k.lower() in sc_keys, f"StorageClass {name}: parameter {k!r} unknown to the driver "
                                   f"(known: {sorted(sc_keys)})")
        need(isinstance(v, str), f"StorageClass {name}: parameter {k} must be a string")
        if k.lower() == "subdir":
            for t in re.findall(r"\$\{[^}]*\}", v):
                need(t in SUBDIR_TEMPLATES, f"StorageClass {name}: subDir template {t} unknown")
            need(not v.startswith("/"), f"StorageClass {name}: subDir must be relative")
        if k.lower() == "ondelete":
            need(v in ("delete", "retain", "archive"), f"StorageClass {name}: onDelete {v!r}")
    lk = {k.lower() for k in sc.get("parameters", {})}
    need(("uid" in lk) == ("gid" in lk), f"StorageClass {name}: uid and gid go together")


def check_examples(root, objs):
    sc_keys, ctx_keys = params_keys(root)
    scs = {o["metadata"]["name"]: o for o in by_kind(objs, "StorageClass")}
    secrets = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o
               for o in by_kind(objs, "Secret")}
    need(scs, "no example StorageClass")
    nfs = [s for s in scs.values() if "server" in s["parameters"] and "share" in s["parameters"]]
    s3 = [s for s in scs.values() if "bucket" in s["parameters"]]
    need(nfs and s3, "examples need an NFS (server/share) and an S3 (bucket) StorageClass")
    for p in ("subDir", "uid", "gid", "onDelete"):
        need(p in nfs[0]["parameters"], f"NFS StorageClass example lacks {p}")
    need(nfs[0]["parameters"]["subDir"] == "${pvc.metadata.namespace}/${pvc.metadata.name}",
         "NFS StorageClass subDir is not ${pvc.metadata.namespace}/${pvc.metadata.name}")
    for sc in scs.values():
        need(sc["provisioner"] == DRIVER, f"StorageClass {sc['metadata']['name']}: provisioner")
        check_storageclass_params(sc, sc_keys)
        check_storageclass_expansion(sc)
    p = s3[0]["parameters"]
    for kind in ("provisioner", "node-stage"):
        n = p.get(f"csi.storage.k8s.io/{kind}-secret-name")
        ns = p.get(f"csi.storage.k8s.io/{kind}-secret-namespace")
        need(n and ns, f"S3 StorageClass lacks the {kind} secret parameters")
        sec = secrets.get((ns, n))
        need(sec is not None, f"S3 StorageClass: {kind} Secret {ns}/{n} is not in the examples")
        data = set(sec.get("stringData", {})) | set(sec.get("data", {}))
        need({"accessKeyId", "secretAccessKey"} <= data,
             f"Secret {ns}/{n} lacks accessKeyId/secretAccessKey (has {sorted(data)})")
    pvs = by_kind(objs, "PersistentVolume")
    need(pvs, "no static PersistentVolume example")
    for pv in pvs:
        csi = pv["spec"]["csi"]
        need(csi["driver"] == DRIVER, f"PV {pv['metadata']['name']}: driver {csi['driver']}")
        h = csi["volumeHandle"]
        need(h.startswith("v1#"), f"PV volumeHandle {h} lacks the v1# prefix")
        fields = h.split("#")
        want = {"file": 5, "nfs": 7, "s3": 8}.get(fields[1])
        need(want == len(fields), f"PV volumeHandle {h}: {len(fields)} fields, want {want}")
        for k in csi.get("volumeAttributes", {}):
            need(k.lower() in ctx_keys, f"PV volumeAttributes key {k} is not accepted by NodeStage")
    pvcs = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o
            for o in by_kind(objs, "PersistentVolumeClaim")}
    for pvc in pvcs.values():
        scn = pvc["spec"].get("storageClassName")
        need(scn == "" or scn in scs, f"PVC {pvc['metadata']['name']}: StorageClass {scn} unknown")
        if scn == "":
            need(any(pv["metadata"]["name"] == pvc["spec"].get("volumeName") for pv in pvs),
                 f"static PVC {pvc['metadata']['name']} does not name an example PV")
    pods = by_kind(objs, "Pod")
    need(pods, "no example Pod")
    inline = 0
    for pod in pods:
        ns = pod["metadata"].get("namespace")
        for v in pod["spec"].get("volumes", []):
            if "persistentVolumeClaim" in v:
                cn = v["persistentVolumeClaim"]["claimName"]
                need((ns, cn) in pvcs, f"Pod {pod['metadata']['name']}: PVC {ns}/{cn} not in examples")
            if "csi" in v:
                check_inline_volume(pod, v, sc_keys)
                inline += 1
    need(inline, "no example Pod with an inline `csi:` volume of the driver")


QUANTITY_SUFFIXES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
                     "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def quantity(q, where):
    """Bytes of a storage quantity (10Gi, 500M, 1e9)."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([kMGTP]i?|)", str(q))
    need(m and m.group(2) in QUANTITY_SUFFIXES, f"{where}: storage {q!r} is not a quantity")
    return float(m.group(1)) * QUANTITY_SUFFIXES[m.group(2)]


def location_of(sc):
    """The parameters of a StorageClass that name its source (lower-cased)."""
    return {k.lower(): v for k, v in (sc.get("parameters") or {}).items()
            if k.lower() in LOCATION_KEYS}


def check_snapshot_examples(objs):
    """VolumeSnapshotClasses, VolumeSnapshots and the PVCs restored from a
    snapshot or cloned from a PVC: every reference resolves in the examples,
    restores and clones stay in the source of what they copy (the plugin
    refuses another: INVALID_ARGUMENT), at least its size."""
    classes = {o["metadata"]["name"]: o for o in by_kind(objs, "VolumeSnapshotClass")}
    snaps = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in by_kind(objs, "VolumeSnapshot")}
    pvcs = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o
            for o in by_kind(objs, "PersistentVolumeClaim")}
    scs = {o["metadata"]["name"]: o for o in by_kind(objs, "StorageClass")}
    secrets = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o
               for o in by_kind(objs, "Secret")}
    need(classes, "no example VolumeSnapshotClass")
    need(snaps, "no example VolumeSnapshot")
    for name, c in classes.items():
        where = f"VolumeSnapshotClass {name}"
        need(c.get("driver") == DRIVER, f"{where}: driver {c.get('driver')!r}, want {DRIVER} "
                                        "(the csi-snapshotter ignores the snapshots of other "
                                        "drivers' classes)")
        params = c.get("parameters") or {}
        unknown = sorted(set(params) - SNAPSHOT_CLASS_PARAMS)
        need(not unknown, f"{where}: parameters {unknown}: the plugin takes no snapshot "
                          f"parameters, only {sorted(SNAPSHOT_CLASS_PARAMS)} (S3 keys)")
        n = params.get("csi.storage.k8s.io/snapshotter-secret-name")
        ns = params.get("csi.storage.k8s.io/snapshotter-secret-namespace")
        need((n is None) == (ns is None),
             f"{where}: snapshotter-secret-name and -namespace go together")
        if n is not None:
            sec = secrets.get((ns, n))
            need(sec is not None, f"{where}: snapshotter Secret {ns}/{n} is not in the examples")
            data = set(sec.get("stringData", {})) | set(sec.get("data", {}))
            need({"accessKeyId", "secretAccessKey"} <= data,
                 f"{where}: Secret {ns}/{n} lacks accessKeyId/secretAccessKey")
    need(any(c.get("deletionPolicy") == "Delete" for c in classes.values()),
         "no example VolumeSnapshotClass with deletionPolicy Delete")

    sources = {}  # snapshot key -> the snapshotted PVC
    for (ns, name), vs in snaps.items():
        where = f"VolumeSnapshot {ns}/{name}"
        cls = vs["spec"].get("volumeSnapshotClassName")
        need(cls in classes, f"{where}: volumeSnapshotClassName {cls!r} is not an example "
                             f"VolumeSnapshotClass ({sorted(classes)})")
        pvc_name = vs["spec"]["source"].get("persistentVolumeClaimName")
        need(pvc_name, f"{where}: not a snapshot of a PVC (source.persistentVolumeClaimName)")
        pvc = pvcs.get((ns, pvc_name))
        need(pvc is not None, f"{where}: source PVC {ns}/{pvc_name} is not in the examples "
                              "(a snapshot's PVC is in the snapshot's namespace)")
        scn = pvc["spec"].get("storageClassName")
        need(scn in scs, f"{where}: source PVC {pvc_name} has StorageClass {scn!r}, not an "
                         "example class of the driver")
        sc_params = scs[scn].get("parameters") or {}
        if "csi.storage.k8s.io/provisioner-secret-name" in sc_params:
            need("csi.storage.k8s.io/snapshotter-secret-name" in
                 (classes[cls].get("parameters") or {}),
                 f"{where}: the source's StorageClass {scn} takes its S3 keys from a Secret, "
                 f"but the VolumeSnapshotClass {cls} passes none to CreateSnapshot (add "
                 "csi.storage.k8s.io/snapshotter-secret-name/-namespace)")
        sources[(ns, name)] = pvc

    kinds = set()
    for (ns, name), pvc in pvcs.items():
        where = f"PVC {ns}/{name}"
        need("dataSourceRef" not in pvc["spec"],
             f"{where}: dataSourceRef: use dataSource (a VolumeSnapshot or a PVC)")
        ds = pvc["spec"].get("dataSource")
        if ds is None:
            continue
        kind, group = ds.get("kind"), ds.get("apiGroup") or ""
        if (kind, group) == ("VolumeSnapshot", SNAPSHOT_GROUP):
            vs_key = (ns, ds.get("name"))
            need(vs_key in snaps, f"{where}: dataSource VolumeSnapshot {ns}/{ds.get('name')} is "
                                  f"not an example VolumeSnapshot ({sorted(n for _, n in snaps)})")
            src, what = sources[vs_key], f"snapshot {ds['name']}"
        elif (kind, group) == ("PersistentVolumeClaim", ""):
            src = pvcs.get((ns, ds.get("name")))
            need(src is not None, f"{where}: dataSource PVC {ns}/{ds.get('name')} is not an "
                                  "example PVC (a clone's source is in its namespace)")
            need(src is not pvc, f"{where}: clones itself")
            what = f"PVC {ds['name']}"
        else:
            raise CheckError(f"{where}: dataSource {kind} (apiGroup {group!r}): the plugin "
                             "fills volumes from a VolumeSnapshot (apiGroup "
                             f"{SNAPSHOT_GROUP}) or a PersistentVolumeClaim only")
        kinds.add(kind)
        scn, src_scn = pvc["spec"].get("storageClassName"), src["spec"].get("storageClassName")
        need(scn in scs, f"{where}: StorageClass {scn!r} is not an example class of the driver")
        need(location_of(scs[scn]) == location_of(scs[src_scn]),
             f"{where}: StorageClass {scn} has the source {location_of(scs[scn])}, the {what} "
             f"is in {location_of(scs[src_scn])} ({src_scn}): restores and clones stay in one "
             "source (the plugin answers INVALID_ARGUMENT)")
        size = quantity(pvc["spec"]["resources"]["requests"]["storage"], where)
        src_size = quantity(src["spec"]["resources"]["requests"]["storage"], what)
        need(size >= src_size, f"{where}: requests {pvc['spec']['resources']['requests']['storage']}, "
                               f"less than the {what}'s "
                               f"{src['spec']['resources']['requests']['storage']}")
    for kind in ("VolumeSnapshot", "PersistentVolumeClaim"):
        need(kind in kinds, f"no example PVC with a dataSource of kind {kind} "
                            "(restore from a snapshot, clone of a PVC)")


def check_storageclass_expansion(sc):
    need(sc.get("allowVolumeExpansion") is True,
         f"StorageClass {sc['metadata']['name']}: allowVolumeExpansion "
         f"{sc.get('allowVolumeExpansion')!r}, want true (the plugin expands online: without it "
         "the API server refuses every resize of its PVCs)")


INLINE_LOCATIONS = ("source", "server/share", "bucket")


def check_inline_volume(pod, v, sc_keys):
    """An inline `csi:` volume: driver, attributes the plugin accepts
    (StorageClass parameter names of src/csi/params/mod.rs), subDir a plain
    relative path, one location, S3 keys through nodePublishSecretRef."""
    where = f"Pod {pod['metadata'].get('namespace')}/{pod['metadata']['name']} volume {v['name']}"
    csi = v["csi"]
    need(csi.get("driver") == DRIVER, f"{where}: inline csi driver {csi.get('driver')!r}, "
                                      f"want {DRIVER}")
    attrs = csi.get("volumeAttributes") or {}
    lower = {k.lower(): val for k, val in attrs.items()}
    for k, val in attrs.items():
        need(not k.startswith(SECRET_PARAM_PREFIX),
             f"{where}: volumeAttributes key {k!r}: the csi.storage.k8s.io/ keys are the "
             "kubelet's and are ignored; S3 keys come from nodePublishSecretRef")
        need(k.lower() in sc_keys, f"{where}: volumeAttributes key {k!r} unknown to the driver "
                                   f"(inline attributes are StorageClass parameters: "
                                   f"{sorted(sc_keys)})")
        need(isinstance(val, str), f"{where}: volumeAttributes {k} must be a string (quote it)")
    sub = lower.get("subdir")
    if sub is not None:
        need("${" not in sub, f"{where}: subDir {sub!r} has a ${{...}} template: an inline volume "
                              "has no claim to expand it from (NodePublish fails with "
                              "INVALID_ARGUMENT); give a plain path below the source")
        need(not sub.startswith("/") and ".." not in sub.split("/"),
             f"{where}: subDir {sub!r} must be a relative path below the source")
    given = ["source" in lower, "server" in lower or "share" in lower,
             "bucket" in lower or "prefix" in lower]
    need(given.count(True) == 1, f"{where}: give exactly one of {INLINE_LOCATIONS} in "
                                 f"volumeAttributes (has {sorted(attrs)})")
    if given[0]:
        need(re.match(r"(file|nfs|s3)://", lower["source"]),
             f"{where}: source {lower['source']!r} is not file://, nfs:// or s3://")
    if given[1]:
        need("server" in lower and "share" in lower, f"{where}: server and share go together")
    need(("uid" in lower) == ("gid" in lower), f"{where}: uid and gid go together")
    if "readonly" in lower:
        need(lower["readonly"].lower() in ("true", "false"),
             f"{where}: readOnly {lower['readonly']!r}, want \"true\" or \"false\"")
    s3 = given[2] or lower.get("source", "").startswith("s3://")
    if s3:
        need((csi.get("nodePublishSecretRef") or {}).get("name"),
             f"{where}: an S3 inline volume needs nodePublishSecretRef (its keys); they never "
             "go into volumeAttributes")


def secret_namespaces_of(objs):
    """Namespaces where the controller's ServiceAccount may get Secrets."""
    spec = pod_spec(one(objs, "Deployment"))
    sa, ns = spec.get("serviceAccountName"), one(objs, "Deployment")["metadata"].get("namespace")
    out = set()
    for rb in by_kind(objs, "RoleBinding"):
        if not binds(rb, sa, ns):
            continue
        rns = rb["metadata"].get("namespace")
        for r in by_kind(objs, "Role"):
            if r["metadata"]["name"] == rb["roleRef"]["name"] and \
                    r["metadata"].get("namespace") == rns and \
                    "get" in rule_grants(r.get("rules")).get(("", "secrets"), set()):
                out.add(rns)
    return out


def check_examples_fit_base(examples, base):
    """What the examples need from the kustomize base: the S3 provisioner
    Secret in a namespace the provisioner may read; Ephemeral in the
    CSIDriver for the inline volumes."""
    readable = secret_namespaces_of(base)
    for sc in by_kind(examples, "StorageClass"):
        ns = sc.get("parameters", {}).get("csi.storage.k8s.io/provisioner-secret-namespace")
        if ns is None:
            continue
        need(ns in readable,
             f"StorageClass {sc['metadata']['name']}: provisioner-secret-namespace {ns} is not "
             f"one where the base's provisioner may get Secrets ({sorted(readable)}): keep the "
             "provisioner Secret in the driver's namespace or add a Role there")
    for c in by_kind(examples, "VolumeSnapshotClass"):
        ns = (c.get("parameters") or {}).get("csi.storage.k8s.io/snapshotter-secret-namespace")
        if ns is not None:
            need(ns in readable,
                 f"VolumeSnapshotClass {c['metadata']['name']}: snapshotter-secret-namespace {ns} "
                 f"is not one where the base's controller may get Secrets ({sorted(readable)}): "
                 "keep the Secret in the driver's namespace or add a Role there")
    if by_kind(examples, "VolumeSnapshot"):
        names = [c["name"] for c in pod_spec(one(base, "Deployment"))["containers"]]
        need("csi-snapshotter" in names,
             f"the examples take VolumeSnapshots, but the base's controller runs {names}: "
             "no csi-snapshotter")
    modes = one(base, "CSIDriver")["spec"].get("volumeLifecycleModes") or []
    for pod in by_kind(examples, "Pod"):
        for v in pod["spec"].get("volumes", []):
            if "csi" in v:
                need("Ephemeral" in modes,
                     f"Pod {pod['metadata']['name']}: inline volume {v['name']}, but the "
                     f"CSIDriver's volumeLifecycleModes are {modes}: add Ephemeral")


def check_namespace_pod_security(objs, name):
    """The Namespace `name` is in objs, labelled for privileged pods, and
    every namespaced object of objs is in it."""
    nss = [o for o in by_kind(objs, "Namespace") if o["metadata"]["name"] == name]
    need(nss, f"no Namespace {name} (the install's namespace) among the objects")
    labels = nss[0]["metadata"].get("labels") or {}
    wrong = {k: labels.get(k) for k, v in POD_SECURITY_LABELS.items() if labels.get(k) != v}
    need(not wrong, f"Namespace {name}: Pod Security labels {wrong}, want "
                    f"{POD_SECURITY_LABELS} (the node plugin and the mounter are privileged: "
                    "a namespace enforcing baseline or restricted refuses their pods)")
    for o in objs:
        if o.get("kind") not in CLUSTER_SCOPED:
            need(o["metadata"].get("namespace") == name,
                 f"{key(o)} is not in the namespace {name}")


# --------------------------------------------------------------------------
# Helm specifics
# --------------------------------------------------------------------------

def strip_for_compare(o):
    o = copy.deepcopy(o)
    o.get("metadata", {}).pop("labels", None)
    tpl = o.get("spec", {}).get("template", {})
    tpl.get("metadata", {}).pop("labels", None)
    sel = o.get("spec", {}).get("selector", {}).get("matchLabels")
    if sel:
        sel.pop("app.kubernetes.io/instance", None)
    return o


def check_helm_mirrors_kustomize(helm_objs, kust_objs):
    h = {key(o): strip_for_compare(o) for o in helm_objs}
    k = {key(o): strip_for_compare(o) for o in kust_objs if o["kind"] != "Namespace"}
    need(set(h) == set(k), f"Helm objects {sorted(map(str, set(h) - set(k)))} not in kustomize, "
                           f"kustomize objects {sorted(map(str, set(k) - set(h)))} not in Helm")
    diffs = [str(kk) for kk in k if h[kk] != k[kk]]
    need(not diffs, f"Helm (release cachalot, default values) differs from kustomize in {diffs}")


def pull_secrets(workload):
    return [s["name"] for s in pod_spec(workload).get("imagePullSecrets", []) or []]


def check_pull_secrets(chart_dir):
    cases = [
        ({}, [], []),
        ({"imagePullSecrets": [{"name": "g"}]}, ["g"], ["g"]),
        ({"imagePullSecrets": [{"name": "g"}], "node": {"imagePullSecrets": [{"name": "n"}]}},
         ["g"], ["n"]),
        ({"imagePullSecrets": [{"name": "g"}], "controller": {"imagePullSecrets": [{"name": "c"}]}},
         ["c"], ["g"]),
        ({"imagePullSecrets": [{"name": "g"}], "controller": {"imagePullSecrets": []}}, [], ["g"]),
        ({"controller": {"imagePullSecrets": [{"name": "c"}]}}, ["c"], []),
    ]
    for values, want_c, want_n in cases:
        objs = render_helm(chart_dir, with_image(values))
        got = (pull_secrets(one(objs, "Deployment")), pull_secrets(node_daemonset(objs)))
        need(got == (want_c, want_n), f"values {values}: controller/node imagePullSecrets {got}, "
                                      f"want {(want_c, want_n)} (a component list replaces the global one)")
        # the mounter runs the node plugin's image on the same nodes: same secrets
        gm = pull_secrets(mounter_daemonset(objs))
        need(gm == want_n, f"values {values}: mounter imagePullSecrets {gm}, want the node "
                           f"plugin's {want_n}")


def check_helm_values(chart_dir):
    values = {
        "image": {"repository": "example.org/team/cachalot", "tag": "9.9.9", "pullPolicy": "Always"},
        "logLevel": "cachalot=debug",
        "kubeletDir": "/var/snap/microk8s/common/var/lib/kubelet",
        "cache": {"hostPath": "/mnt/ssd/cachalot", "size": "50GiB"},
        "stateHostPath": "/mnt/ssd/cachalot-state",
        "mounter": {"cacheSize": "200GiB", "resources": {"limits": {"memory": "16Gi"}},
                    "stateHostPath": "/mnt/ssd/cachalot-mounter", "socketHostPath": "/run/cachalot-x",
                    "extraArgs": ["--foo=bar"]},
        "node": {"nodeSelector": {"storage": "fast"}, "tolerations": [{"key": "k", "operator": "Exists"}],
                 "resources": {"limits": {"memory": "4Gi"}, "requests": {"cpu": "1"}},
                 "extraArgs": ["--mount-timeout=60s"]},
        "controller": {"extraArgs": ["--mount-timeout=45s"], "replicas": 2},
        "storageClasses": [
            {"name": "fast-nfs", "parameters": {"server": "nfs", "share": "/x",
                                                "subDir": "${pvc.metadata.name}", "uid": 1000, "gid": 1000}},
            {"name": "small", "parameters": {"bucket": "b", "cacheSize": "1GiB"}},
        ],
    }
    objs = render_helm(chart_dir, values, name="rel", namespace="storage")
    validate_schemas(objs)
    check_install(objs, kubelet_dir=values["kubeletDir"], cache_host="/mnt/ssd/cachalot",
                  state_host="/mnt/ssd/cachalot-state", mounter_state_host="/mnt/ssd/cachalot-mounter",
                  mounter_socket_host="/run/cachalot-x")
    dep, ds, mds = one(objs, "Deployment"), node_daemonset(objs), mounter_daemonset(objs)
    need(mds["metadata"]["name"] == "rel-mounter", f"mounter DaemonSet name {mds['metadata']['name']}")
    for w in (dep, ds, mds):
        c = pod_spec(w)["containers"][0]
        need(c["image"] == "example.org/team/cachalot:9.9.9", f"{w['kind']}: image {c['image']}")
        need(c["imagePullPolicy"] == "Always", f"{w['kind']}: pullPolicy {c['imagePullPolicy']}")
        env = {e["name"]: e.get("value") for e in c["env"]}
        need(env.get("RUST_LOG") == "cachalot=debug", f"{w['kind']}: RUST_LOG {env.get('RUST_LOG')}")
        need(w["metadata"]["namespace"] == "storage", f"{w['kind']}: namespace")
    nc = pod_spec(ds)["containers"][0]
    need(nc["args"][-1] == "--mount-timeout=60s", f"node extraArgs not appended: {nc['args']}")
    need(pod_spec(dep)["containers"][0]["args"][-1] == "--mount-timeout=45s", "controller extraArgs")
    need(dep["spec"]["replicas"] == 2, "controller.replicas")
    # Helm merges maps with the chart defaults
    need(pod_spec(ds)["nodeSelector"] == {"kubernetes.io/os": "linux", "storage": "fast"},
         f"node.nodeSelector {pod_spec(ds)['nodeSelector']}")
    need(pod_spec(ds)["tolerations"] == [{"key": "k", "operator": "Exists"}], "node.tolerations")
    need(nc["resources"] == {"limits": {"memory": "4Gi"}, "requests": {"cpu": "1", "memory": "32Mi"}},
         f"node.resources {nc['resources']}")
    mc = pod_spec(mds)["containers"][0]
    need(flag(mc, "cache-size") == "200GiB", f"mounter.cacheSize: --cache-size is {flag(mc, 'cache-size')!r}")
    need(mc["args"][-1] == "--foo=bar", f"mounter extraArgs not appended: {mc['args']}")
    need(mc["resources"] == {"limits": {"memory": "16Gi"}, "requests": {"cpu": "50m", "memory": "256Mi"}},
         f"mounter.resources {mc['resources']}")
    # node.nodeSelector / node.tolerations apply to the mounter too
    need(pod_spec(mds)["nodeSelector"] == pod_spec(ds)["nodeSelector"], "mounter nodeSelector")
    need(pod_spec(mds)["tolerations"] == pod_spec(ds)["tolerations"], "mounter tolerations")
    scs = {s["metadata"]["name"]: s for s in by_kind(objs, "StorageClass")}
    need(set(scs) == {"fast-nfs", "small"}, f"StorageClasses {sorted(scs)}")
    need(scs["fast-nfs"]["parameters"].get("cacheSize") == "50GiB", "cache.size is not the default cacheSize")
    need(scs["fast-nfs"]["parameters"].get("uid") == "1000", "numeric parameters must render as strings")
    need(scs["small"]["parameters"].get("cacheSize") == "1GiB", "a class's cacheSize must win over cache.size")
    sc_keys, _ = params_keys(ROOT)
    for sc in scs.values():
        check_storageclass_params(sc, sc_keys)
    for crb in by_kind(objs, "ClusterRoleBinding"):
        need(crb["subjects"][0]["namespace"] == "storage",
             f"ClusterRoleBinding {crb['metadata']['name']}: subject namespace")


def check_helm_metrics(chart_dir):
    """metrics.port, metrics.enabled=false, the PodMonitor and its values."""
    objs = render_helm(chart_dir, with_image({}))
    need(not by_kind(objs, "PodMonitor"), "a PodMonitor is rendered by default (the CRD may be "
                                          "missing: metrics.podMonitor.enabled defaults to false)")

    objs = render_helm(chart_dir, with_image({"metrics": {"port": 9900}}))
    check_install(objs)
    for role, _, c in cachalot_containers(objs):
        port = named_port(c, METRICS_PORT_NAME) or {}
        need(flag(c, "metrics-addr") == "0.0.0.0:9900" and port.get("containerPort") == 9900,
             f"metrics.port=9900: the {role} has --metrics-addr={flag(c, 'metrics-addr')} and "
             f"port {port}")

    objs = render_helm(chart_dir, with_image({"metrics": {"enabled": False}}))
    check_install(objs, metrics=False)
    need(not by_kind(objs, "PodMonitor"), "metrics.enabled=false still renders a PodMonitor")

    values = {"metrics": {"podMonitor": {"enabled": True, "interval": "15s",
                                         "labels": {"release": "kube-prometheus-stack"}}}}
    objs = render_helm(chart_dir, with_image(values), name="rel", namespace="storage")
    validate_schemas(objs)
    pm = one(objs, "PodMonitor")
    check_podmonitor(pm, objs)
    need(pm["metadata"]["namespace"] == "storage", f"PodMonitor namespace {pm['metadata']}")
    need(pm["metadata"].get("labels", {}).get("release") == "kube-prometheus-stack",
         f"metrics.podMonitor.labels not on the PodMonitor: {pm['metadata'].get('labels')}")
    need(all(ep.get("interval") == "15s" for ep in pm["spec"]["podMetricsEndpoints"]),
         "metrics.podMonitor.interval not applied")
    # the selector must not reach another release's pods
    other = render_helm(chart_dir, with_image({}), name="other", namespace="storage")
    for w in by_kind(other, "Deployment") + by_kind(other, "DaemonSet"):
        need(not selector_matches(pm["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"]),
             f"PodMonitor of release rel selects {w['metadata']['name']} of release other")

    objs = render_helm(chart_dir, with_image({"metrics": {"podMonitor": {"enabled": True}}}))
    pm = one(objs, "PodMonitor")
    need([ep.get("interval") for ep in pm["spec"]["podMetricsEndpoints"]] == ["30s"],
         f"metrics.podMonitor.interval default: {pm['spec']['podMetricsEndpoints']}, want 30s")

    values["metrics"]["enabled"] = False
    try:
        render_helm(chart_dir, with_image(values))
    except helm_errors.HelmRenderError as e:
        need("metrics.enabled" in str(e), f"podMonitor without metrics fails with {e}")
    else:
        raise CheckError("metrics.podMonitor.enabled with metrics.enabled=false renders: it "
                         "would scrape a port the pods do not have (make the template fail)")


def render_notes(chart_dir, values, name="cachalot", namespace="cachalot"):
    c = helm_chart.Chart.load(chart_dir)
    out = c.render(values, name=name, namespace=namespace, is_install=True)
    notes = [t for p, t in out.items() if p.endswith("/NOTES.txt")]
    need(len(notes) == 1, "the chart renders no NOTES.txt")
    return notes[0]


def label_command(ns):
    return f"kubectl label namespace {ns} --overwrite " + " ".join(
        f"{k}={v}" for k, v in POD_SECURITY_LABELS.items())


def check_helm_security_values(chart_dir):
    """namespace.create, provisioner.secretNamespaces, inlineVolumes.enabled,
    sidecars.resizer, storageClasses[].allowVolumeExpansion."""
    classes = [{"name": "grow", "parameters": {"server": "nfs", "share": "/x"}},
               {"name": "fixed", "allowVolumeExpansion": False,
                "parameters": {"source": "file:///srv"}}]
    # defaults: no Namespace (helm install needs it beforehand), the label
    # command in the notes, Secrets readable in the release namespace only
    values = with_image({"storageClasses": classes})
    objs = render_helm(chart_dir, values, name="rel", namespace="storage")
    need(not by_kind(objs, "Namespace"), "a Namespace is rendered by default (namespace.create "
                                         "defaults to false: `helm install` needs the namespace "
                                         "before it renders)")
    check_install(objs, secret_namespaces=["storage"])
    notes = render_notes(chart_dir, values, name="rel", namespace="storage")
    need(label_command("storage") in notes,
         f"NOTES.txt (namespace.create=false) lacks `{label_command('storage')}`")
    need("only in: storage\n" in notes, "NOTES.txt does not name the secret namespace storage")
    scs = {sc["metadata"]["name"]: sc for sc in by_kind(objs, "StorageClass")}
    check_storageclass_expansion(scs["grow"])
    need(scs["fixed"].get("allowVolumeExpansion") is False,
         "storageClasses[].allowVolumeExpansion=false renders "
         f"{scs['fixed'].get('allowVolumeExpansion')!r}")

    # namespace.create=true: the Namespace with the Pod Security labels
    values = with_image({"namespace": {"create": True}})
    objs = render_helm(chart_dir, values, name="rel", namespace="storage")
    validate_schemas(objs)
    check_namespace_pod_security(objs, "storage")
    check_install(objs, secret_namespaces=["storage"])
    notes = render_notes(chart_dir, values, name="rel", namespace="storage")
    need("kubectl label namespace" not in notes,
         "NOTES.txt asks to label the namespace although namespace.create=true renders it")

    # provisioner.secretNamespaces: a Role + RoleBinding in each, nowhere else;
    # a StorageClass naming another namespace fails the render
    sec = ["storage", "s3-creds"]
    values = with_image({"provisioner": {"secretNamespaces": sec}, "storageClasses": [
        {"name": "s3", "parameters": {
            "bucket": "b", "csi.storage.k8s.io/provisioner-secret-name": "k",
            "csi.storage.k8s.io/provisioner-secret-namespace": "s3-creds"}}]})
    objs = render_helm(chart_dir, values, name="rel", namespace="storage")
    validate_schemas(objs)
    check_install(objs, secret_namespaces=sec)
    need(secret_namespaces_of(objs) == set(sec), f"secret namespaces {secret_namespaces_of(objs)}")
    notes = render_notes(chart_dir, values, name="rel", namespace="storage")
    need("only in: storage, s3-creds\n" in notes, "NOTES.txt does not list secretNamespaces")
    values["storageClasses"][0]["parameters"][
        "csi.storage.k8s.io/provisioner-secret-namespace"] = "${pvc.namespace}"
    try:
        render_helm(chart_dir, values, name="rel", namespace="storage")
    except helm_errors.HelmRenderError as e:
        need("provisioner.secretNamespaces" in str(e) and "${pvc.namespace}" in str(e),
             f"a StorageClass's secret namespace outside secretNamespaces fails with {e}")
    else:
        raise CheckError("a StorageClass whose provisioner-secret-namespace is not in "
                         "provisioner.secretNamespaces renders: its provisioning would fail "
                         "(forbidden); make the template fail")

    # inlineVolumes.enabled=false: Persistent only
    values = with_image({"inlineVolumes": {"enabled": False}})
    objs = render_helm(chart_dir, values)
    check_install(objs, inline=False)
    need("Inline volumes" not in render_notes(chart_dir, values),
         "NOTES.txt mentions inline volumes with inlineVolumes.enabled=false")

    # sidecars.resizer
    values = with_image({"sidecars": {"resizer": {
        "image": "mirror.example.com/csi-resizer:v1.13.2", "resources": {"limits": {"memory": "1Gi"}}}}})
    rs = container(pod_spec(one(render_helm(chart_dir, values), "Deployment")), "csi-resizer")
    need(rs["image"] == "mirror.example.com/csi-resizer:v1.13.2", f"sidecars.resizer.image: {rs['image']}")
    need(rs["resources"] == {"limits": {"memory": "1Gi"}, "requests": {"cpu": "10m", "memory": "32Mi"}},
         f"sidecars.resizer.resources: {rs['resources']}")


def snapshot_grants(objs):
    """Everything the install's ClusterRoles grant in snapshot.storage.k8s.io."""
    return {(cr["metadata"]["name"], res): sorted(v) for cr in by_kind(objs, "ClusterRole")
            for (grp, res), v in rule_grants(cr.get("rules")).items() if grp == SNAPSHOT_GROUP}


def check_helm_snapshots(chart_dir):
    """snapshots.enabled, snapshots.volumeSnapshotClass.*, sidecars.snapshotter."""
    # defaults: the sidecar and its RBAC (check_install), no VolumeSnapshotClass
    values = with_image({})
    objs = render_helm(chart_dir, values)
    check_install(objs)
    need(not by_kind(objs, "VolumeSnapshotClass"),
         "a VolumeSnapshotClass is rendered by default (snapshots.volumeSnapshotClass.create "
         "defaults to false: the CRD may be missing at install)")
    notes = render_notes(chart_dir, values)
    need("docs/deploy.md, \"Snapshots and clones\"" in notes,
         "NOTES.txt does not say where the snapshot CRDs and snapshot-controller come from")

    # snapshots.enabled=false: no sidecar, no snapshot RBAC at all
    values = with_image({"snapshots": {"enabled": False}})
    objs = render_helm(chart_dir, values)
    validate_schemas(objs)
    check_install(objs, snapshots=False)
    grants = snapshot_grants(objs)
    need(not grants, f"snapshots.enabled=false still grants {grants} in {SNAPSHOT_GROUP}")
    need("VolumeSnapshots" not in render_notes(chart_dir, values),
         "NOTES.txt mentions VolumeSnapshots with snapshots.enabled=false")

    # the VolumeSnapshotClass
    vsc = {"create": True, "name": "nightly", "deletionPolicy": "Retain", "parameters": {
        "csi.storage.k8s.io/snapshotter-secret-name": "keys",
        "csi.storage.k8s.io/snapshotter-secret-namespace": "s3-creds"}}
    values = with_image({"snapshots": {"volumeSnapshotClass": vsc},
                         "provisioner": {"secretNamespaces": ["storage", "s3-creds"]}})
    objs = render_helm(chart_dir, values, name="rel", namespace="storage")
    validate_schemas(objs)
    check_install(objs, secret_namespaces=["storage", "s3-creds"])
    c = one(objs, "VolumeSnapshotClass")
    want = {"name": "nightly", "driver": DRIVER, "deletionPolicy": "Retain",
            "parameters": vsc["parameters"]}
    got = {"name": c["metadata"]["name"], "driver": c.get("driver"),
           "deletionPolicy": c.get("deletionPolicy"), "parameters": c.get("parameters")}
    need(got == want, f"snapshots.volumeSnapshotClass {vsc}: renders {got}, want {want}")
    need("VolumeSnapshotClass: nightly" in render_notes(chart_dir, values, name="rel",
                                                        namespace="storage"),
         "NOTES.txt does not name the VolumeSnapshotClass")
    c = one(render_helm(chart_dir, with_image({"snapshots": {"volumeSnapshotClass": {
        "create": True}}})), "VolumeSnapshotClass")
    need((c["metadata"]["name"], c.get("deletionPolicy"), c.get("parameters")) ==
         ("cachalot", "Delete", None),
         f"snapshots.volumeSnapshotClass defaults: {c}, want name cachalot, deletionPolicy "
         "Delete, no parameters")

    # refusals, each naming the value to fix
    refused = [
        ({"snapshots": {"enabled": False, "volumeSnapshotClass": {"create": True}}},
         "snapshots.enabled"),
        ({"snapshots": {"volumeSnapshotClass": {"create": True, "deletionPolicy": "Keep"}}},
         "deletionPolicy"),
        ({"snapshots": {"volumeSnapshotClass": {"create": True, "parameters": {"tier": "x"}}}},
         "tier"),
        ({"snapshots": {"volumeSnapshotClass": {"create": True, "parameters": {
            "csi.storage.k8s.io/snapshotter-secret-name": "keys",
            "csi.storage.k8s.io/snapshotter-secret-namespace": "elsewhere"}}}},
         "provisioner.secretNamespaces"),
    ]
    for v, word in refused:
        try:
            render_helm(chart_dir, with_image(v))
        except helm_errors.HelmRenderError as e:
            need(word in str(e), f"values {v} fail with {e}: want a message naming {word}")
        else:
            raise CheckError(f"values {v} render: want the chart to fail naming {word}")

    # sidecars.snapshotter
    values = with_image({"sidecars": {"snapshotter": {
        "image": "mirror.example.com/csi-snapshotter:v8.6.0",
        "resources": {"limits": {"memory": "1Gi"}}}}})
    sn = container(pod_spec(one(render_helm(chart_dir, values), "Deployment")), "csi-snapshotter")
    need(sn["image"] == "mirror.example.com/csi-snapshotter:v8.6.0",
         f"sidecars.snapshotter.image: {sn['image']}")
    need(sn["resources"] == {"limits": {"memory": "1Gi"}, "requests": {"cpu": "10m", "memory": "32Mi"}},
         f"sidecars.snapshotter.resources: {sn['resources']}")


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


def check_helm_lint(chart_dir):
    report = helm_chart.lint(chart_dir, with_image({}), strict=True, kube_version="v1.30.0")
    msgs = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    need(not report.get("errors") and not msgs,
         f"helm lint --strict: errors {report.get('errors')} messages {msgs}")


# --------------------------------------------------------------------------
# Grafana dashboard (deploy/grafana/cachalot.json) against README's metrics
# --------------------------------------------------------------------------

# Labels Prometheus or the PodMonitor add to every series (not cachalot's).
TARGET_LABELS = {"instance", "job", "pod", "namespace", "container", "endpoint", "node"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
                    "__range_ms", "__from", "__to", "__dashboard", "__org", "__user"}
RATE_FUNCTIONS = {"rate", "irate", "increase"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
NODE_WIDE_METRICS = {"cachalot_cache_used_bytes", "cachalot_cache_quota_bytes"}
# what the panels listed in docs/deploy.md ("Monitoring") show
DASHBOARD_MUST_USE = {
    "cachalot_cache_hits_total", "cachalot_cache_misses_total", "cachalot_read_bytes_total",
    "cachalot_write_bytes_total", "cachalot_backend_read_bytes_total",
    "cachalot_backend_requests_total", "cachalot_backend_request_duration_seconds_bucket",
    "cachalot_errors_total", "cachalot_cache_used_bytes", "cachalot_cache_quota_bytes",
    "cachalot_warm_done_bytes", "cachalot_warm_wanted_bytes", "cachalot_csi_requests_total",
    "cachalot_csi_request_duration_seconds_bucket", "cachalot_cache_volume_bytes",
    "cachalot_cache_evictions_total", "cachalot_prefetch_in_flight", "cachalot_publishes_total",
    "cachalot_publish_failures_total", "cachalot_warm_done_files", "cachalot_warm_wanted_files",
    "cachalot_warm_failed_files",
}
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}


def readme_metrics(root):
    """{metric: type} and the label names of README.md's "### Metrics"
    section: its table (type column) and the sentence after it (histograms
    marked "(histogram)", the rest counters by their _total)."""
    text = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    m = re.search(r"^### Metrics\n(.*?)(?=^#{1,3} )", text, re.M | re.S)
    need(m, "README.md: no '### Metrics' section")
    section = m.group(1)
    metrics, labels = {}, {"volume", "backend"}
    need("`volume`" in section and "`backend`" in section,
         "README.md Metrics: the per-volume labels `volume` and `backend` are not described")
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 3 and "cachalot_" in cells[0]:
            kind = cells[1]
            for name, lbl in re.findall(r"`(cachalot_\w+)(?:\{([\w,]*)\})?`", cells[0]):
                metrics[name] = kind
                labels.update(x for x in lbl.split(",") if x)
    rest = section.split("\n\n")
    for para in rest:
        if para.lstrip().startswith("|"):
            continue
        for name, lbl, hist in re.findall(r"`(cachalot_\w+)(?:\{([\w,]*)\})?`( \(histogram\))?", para):
            metrics.setdefault(name, "histogram" if hist else
                               "counter" if name.endswith("_total") else "gauge")
            labels.update(x for x in lbl.split(",") if x)
    need(metrics, "README.md Metrics: no metric found")
    return metrics, labels


def resolve_metric(token, metrics):
    """(documented name, type of this use): counter, gauge, or 'bucket',
    'sum', 'count' for a histogram's series; CheckError if undocumented."""
    if token in metrics:
        need(metrics[token] != "histogram",
             f"{token} is a histogram: query its _bucket, _sum or _count series")
        return token, metrics[token]
    for sfx in HISTOGRAM_SUFFIXES:
        base = token[: -len(sfx)]
        if token.endswith(sfx) and base in metrics:
            need(metrics[base] == "histogram",
                 f"{token}: {base} is a {metrics[base]}, not a histogram (no {sfx} series)")
            return base, sfx[1:]
    raise CheckError(f"{token} is not a metric of README.md's Metrics section (a typo, or a "
                     "new metric: document it there first)")


def strip_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def enclosing_function(code, pos):
    """Name of the function whose '(' most closely encloses position pos
    ('' for an aggregation's `by (...)`/bare parenthesis)."""
    depth = 0
    for i in range(pos - 1, -1, -1):
        ch = code[i]
        if ch == ")":
            depth += 1
        elif ch == "(":
            if depth == 0:
                m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*$", code[:i])
                return m.group(1) if m else ""
            depth -= 1
    return None


def check_promql(expr, metrics, labels, variables):
    """Light static checks of one query (no PromQL parser is installed)."""
    code = strip_strings(expr)
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = []
    for ch in code:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            need(stack and stack.pop() == pairs[ch], f"unbalanced {ch!r} in {expr!r}")
    need(not stack, f"unclosed {''.join(stack)!r} in {expr!r}")
    for v in re.findall(r"\$\{?(\w+)", expr):
        need(v in variables or v in GRAFANA_BUILTINS,
             f"${v} is not a variable of the dashboard ({sorted(variables)}) in {expr!r}")
    used = set()
    for m in re.finditer(r"\bcachalot_\w+", code):
        name, kind = resolve_metric(m.group(0), metrics)
        used.add(m.group(0))
        fn = enclosing_function(code, m.start())
        if kind in ("counter", "bucket", "sum", "count"):
            need(fn in RATE_FUNCTIONS, f"{m.group(0)} is a counter: wrap it in rate() or "
                                       f"increase() (in {expr!r})")
        else:
            need(fn not in RATE_FUNCTIONS, f"{m.group(0)} is a gauge: rate() of it is meaningless "
                                           f"(in {expr!r})")
        if not name.startswith("cachalot_csi_") and name not in NODE_WIDE_METRICS:
            sel = code[m.end():].lstrip()
            need(sel.startswith("{") and "$volume" in expr[m.end():].split("}", 1)[0],
                 f"{m.group(0)} is per volume: filter it with {{volume=~\"$volume\"}} (in {expr!r})")
    known = labels | TARGET_LABELS | {"le"}
    found = [x for grp in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)",
                                     code) for x in re.split(r"\s*,\s*", grp.strip()) if x]
    found += re.findall(r"[{,]\s*(\w+)\s*(?:=~|!~|!=|=)", code)
    for lbl in found:
        need(lbl in known, f"label {lbl!r} is neither a cachalot label of README.md ({sorted(labels)}) "
                           f"nor a target label ({sorted(TARGET_LABELS)}) in {expr!r}")
    if "histogram_quantile" in code:
        need(re.search(r"\bby\s*\([^)]*\ble\b", code),
             f"histogram_quantile over a sum without `le` in its by () gives no quantile: {expr!r}")
    return used


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []) or [])


def check_dashboard_structure(d, where):
    for k in ("title", "uid", "panels", "templating", "schemaVersion"):
        need(k in d, f"{where}: no {k!r} (not an importable dashboard)")
    need(d.get("id") is None, f"{where}: id {d.get('id')} (an import must not carry a database id: null)")
    need(re.fullmatch(r"[A-Za-z0-9_-]{1,40}", str(d["uid"])), f"{where}: uid {d['uid']!r}")
    need(not d.get("__inputs"), f"{where}: __inputs (the Prometheus data source is the "
                                "`datasource` variable, nothing to map at import)")
    seen = set()
    for p in all_panels(d["panels"]):
        title = p.get("title")
        need(title, f"{where}: panel {p.get('id')} has no title")
        need(isinstance(p.get("id"), int) and p["id"] not in seen,
             f"{where}: panel {title!r}: id {p.get('id')!r} missing or not unique")
        seen.add(p["id"])
        g = p.get("gridPos", {})
        need(all(isinstance(g.get(k), int) for k in "xywh") and g["x"] + g["w"] <= 24,
             f"{where}: panel {title!r}: gridPos {g} (x, y, w, h integers, x + w <= 24)")
        if p.get("type") == "row":
            continue
        need(p.get("datasource") == DATASOURCE_REF,
             f"{where}: panel {title!r}: datasource {p.get('datasource')}, want {DATASOURCE_REF}")
        targets = p.get("targets") or []
        need(targets, f"{where}: panel {title!r} has no query")
        refs = [t.get("refId") for t in targets]
        need(all(refs) and len(set(refs)) == len(refs), f"{where}: panel {title!r}: refIds {refs}")
        for t in targets:
            need(t.get("datasource", DATASOURCE_REF) == DATASOURCE_REF,
                 f"{where}: panel {title!r} query {t.get('refId')}: datasource {t.get('datasource')}")
            need(t.get("expr"), f"{where}: panel {title!r} query {t.get('refId')}: no expr")


def dashboard_variables(d, where):
    vs = {v.get("name"): v for v in d["templating"].get("list", [])}
    ds = vs.get("datasource")
    need(ds and ds.get("type") == "datasource" and ds.get("query") == "prometheus",
         f"{where}: no `datasource` variable of type datasource (query prometheus)")
    vol = vs.get("volume")
    need(vol and vol.get("type") == "query" and vol.get("datasource") == DATASOURCE_REF,
         f"{where}: no `volume` query variable on ${{datasource}}")
    q = vol.get("query")
    q = q.get("query") if isinstance(q, dict) else q
    need(re.fullmatch(r"label_values\(\s*cachalot_\w+\s*,\s*volume\s*\)", q or ""),
         f"{where}: volume variable query {q!r}, want label_values(<a cachalot metric>, volume)")
    need(vol.get("definition", q) == q,
         f"{where}: volume variable: definition {vol.get('definition')!r} != query {q!r}")
    need(vol.get("includeAll") and vol.get("multi"), f"{where}: volume variable: multi + All")
    return vs, q


def check_dashboard(root):
    path = os.path.join(root, "deploy/grafana/cachalot.json")
    where = "deploy/grafana/cachalot.json"
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except ValueError as e:
        raise CheckError(f"{where}: not valid JSON: {e}")
    need(isinstance(d, dict), f"{where}: not a JSON object")
    check_dashboard_structure(d, where)
    metrics, labels = readme_metrics(root)
    variables, vquery = dashboard_variables(d, where)
    used = set()
    try:
        resolve_metric(re.search(r"cachalot_\w+", vquery).group(0), metrics)
    except CheckError as e:
        raise CheckError(f"{where}: volume variable: {e}")
    for p in all_panels(d["panels"]):
        for t in p.get("targets") or []:
            try:
                used |= check_promql(t["expr"], metrics, labels, set(variables))
            except CheckError as e:
                raise CheckError(f"{where}: panel {p['title']!r} query {t['refId']}: {e}")
            for lbl in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
                need(lbl in labels | TARGET_LABELS,
                     f"{where}: panel {p['title']!r}: legend label {lbl!r} unknown")
    missing = DASHBOARD_MUST_USE - used
    need(not missing, f"{where}: no panel queries {sorted(missing)} (docs/deploy.md lists "
                      "those panels)")


def dashboard_exprs(root):
    with open(os.path.join(root, "deploy/grafana/cachalot.json"), encoding="utf-8") as f:
        d = json.load(f)
    return [(p["title"], t["refId"], t["expr"]) for p in all_panels(d.get("panels", []))
            for t in p.get("targets") or [] if t.get("expr")]


def check_dashboard_promtool(root):
    """Cross-check: Prometheus's own parser (promtool check rules) accepts
    every query, Grafana variables replaced by values. Optional, like
    kubectl: run when promtool is on PATH (Debian package prometheus)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        print("info promtool not on PATH: dashboard queries not parsed by Prometheus")
        return
    exprs = dashboard_exprs(root)
    rules = []
    for i, (_, _, e) in enumerate(exprs):
        e = re.sub(r"\$\{?__(rate_)?interval\}?", "5m", e)
        rules.append({"record": f"dashboard:query_{i}", "expr": re.sub(r"\$\{?\w+\}?", ".*", e)})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rules.yml")
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        out = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True,
                             timeout=60)
    text = out.stdout + out.stderr
    bad = [f"panel {t!r} query {r}: " + re.search(rf'"dashboard:query_{i}": (.*)', text).group(1)
           for i, (t, r, _) in enumerate(exprs) if re.search(rf'"dashboard:query_{i}"', text)]
    need(out.returncode == 0, f"promtool rejects the dashboard's queries: {bad or text.strip()}")


# --------------------------------------------------------------------------
# The image: base name, the chart's required repository, the overlay
# --------------------------------------------------------------------------

def cargo_version(root):
    text = open(os.path.join(root, "Cargo.toml"), encoding="utf-8").read()
    m = re.search(r'^\[package\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.M | re.S)
    need(m, "Cargo.toml: no [package] version")
    return m.group(1)


def split_image(ref):
    """(name, tag or None) of an image reference without a digest."""
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = ref.rsplit(":", 1)
        return name, tag
    return ref, None


def with_image(values, repository=IMAGE_NAME):
    """values with image.repository set (the chart requires it) unless given."""
    v = copy.deepcopy(values)
    v.setdefault("image", {}).setdefault("repository", repository)
    return v


def cachalot_images(objs):
    return {f"{role} ({c['name']})": c["image"] for role, _, c in cachalot_containers(objs)}


def check_base_image(objs, root):
    """The base runs IMAGE_NAME:<Cargo version>, what scripts/image.sh builds
    by default (so a cluster that loaded it runs the base as is), and the
    chart's appVersion (its default tag) is that version too."""
    version = cargo_version(root)
    want = f"{IMAGE_NAME}:{version}"
    for where, img in cachalot_images(objs).items():
        need(img == want, f"{where}: image {img}, want {want} (scripts/image.sh builds "
                          f"{IMAGE_NAME}:<Cargo.toml version>; overlays replace the name "
                          f"{IMAGE_NAME!r})")
    for role, _, c in cachalot_containers(objs):
        need(c.get("imagePullPolicy") == "IfNotPresent",
             f"{role}: imagePullPolicy {c.get('imagePullPolicy')!r}, want IfNotPresent (an "
             "image loaded into the nodes by scripts/image.sh --kind/--minikube exists in no "
             "registry)")
    (chart,) = load_docs(os.path.join(root, "deploy/helm/cachalot/Chart.yaml"))
    need(str(chart.get("appVersion")) == version,
         f"Chart.yaml appVersion {chart.get('appVersion')!r} != Cargo.toml version {version} "
         "(the chart's default image tag)")


def check_helm_image_required(chart_dir):
    """Without image.repository the chart refuses to render, naming the fix."""
    (values,) = load_docs(os.path.join(chart_dir, "values.yaml"))
    default = (values.get("image") or {}).get("repository")
    need(not default,
         f"values.yaml image.repository defaults to {default!r}: there is "
         "no public image, leave it empty (required)")
    try:
        render_helm(chart_dir, {})
    except helm_errors.HelmRenderError as e:
        msg = str(e)
        need("image.repository is required" in msg and "scripts/image.sh" in msg,
             f"rendering without image.repository fails with {msg!r}: want a message naming "
             "image.repository and scripts/image.sh")
        return
    raise CheckError("the chart renders without image.repository: make it "
                     "{{ required \"image.repository is required: ...\" }}")


def strip_images(objs):
    out = copy.deepcopy(objs)
    for o in out:
        spec = o.get("spec", {}).get("template", {}).get("spec")
        for c in (spec or {}).get("containers", []):
            c.pop("image", None)
    return out


def check_overlay(odir, base):
    """The example overlay: the base with the cachalot image replaced,
    nothing else changed."""
    objs = render_kustomize(odir)
    (k,) = load_docs(os.path.join(odir, "kustomization.yaml"))
    entry = next((i for i in k.get("images", []) if i.get("name") == IMAGE_NAME), None)
    need(entry and entry.get("newName"),
         f"{odir}: no images entry with name {IMAGE_NAME!r} and a newName")
    _, base_tag = split_image(next(iter(cachalot_images(base).values())))
    want = f"{entry['newName']}:{entry.get('newTag', base_tag)}"
    for where, img in cachalot_images(objs).items():
        need(img == want, f"overlay: {where} runs {img}, want {want} (the images entry)")
    need(strip_images(objs) == strip_images(base),
         "overlay: differs from the base in more than the cachalot image")
    check_install(objs)


# --------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------

def dockerfile_instructions(path):
    out, buf = [], ""
    for line in open(path, encoding="utf-8"):
        s = line.rstrip("\n")
        if not buf and (not s.strip() or s.lstrip().startswith("#")):
            continue
        if s.lstrip().startswith("#"):
            continue  # comment inside a continuation
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        parts = buf.strip().split(None, 1)
        out.append((parts[0].upper(), parts[1] if len(parts) > 1 else ""))
        buf = ""
    need(not buf, "Dockerfile ends inside a line continuation")
    return out


def check_dockerfile(root):
    ins = dockerfile_instructions(os.path.join(root, "Dockerfile"))
    stages, cur = [], None
    for op, arg in ins:
        if op == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?$", arg, re.I)
            need(m, f"FROM {arg}")
            cur = {"image": m.group(1), "name": m.group(2), "ins": []}
            stages.append(cur)
        else:
            need(cur is not None, f"{op} before FROM")
            cur["ins"].append((op, arg))
    need(len(stages) >= 2, f"{len(stages)} stage(s), want a multi-stage build")
    builder = next((s for s in stages if s["image"] == "rust:1-bookworm"), None)
    need(builder and builder["name"], "no named rust:1-bookworm build stage")
    final = stages[-1]
    need(final["image"] == "debian:bookworm-slim", f"final stage is {final['image']}")
    runs = " ".join(a for o, a in builder["ins"] if o == "RUN")
    need(re.search(r"cargo build\b[^&;]*--release", runs) and "--locked" in runs,
         "builder does not run cargo build --release --locked")
    workdir = next((a for o, a in builder["ins"] if o == "WORKDIR"), None)
    need(workdir, "builder has no WORKDIR")
    need(any(o == "COPY" and a.split()[:1] == ["."] for o, a in builder["ins"]),
         "builder does not COPY the source tree")
    copies = [a.split() for o, a in final["ins"] if o == "COPY" and a.startswith("--from=")]
    need(copies, "final stage copies nothing from the builder")
    frm, src, dst = copies[0][0].split("=", 1)[1], copies[0][1], copies[0][-1]
    need(frm == builder["name"], f"COPY --from={frm}, builder stage is {builder['name']}")
    want_src = workdir.rstrip("/") + "/target/release/cachalot"
    need(src == want_src, f"COPY --from source {src}, want {want_src}")
    need(dst in ("/usr/local/bin/cachalot", "/usr/local/bin/", "/usr/local/bin"),
         f"binary copied to {dst}")
    fruns = " ".join(a for o, a in final["ins"] if o == "RUN")
    m = re.search(r"apt-get install ([^&;]*)", fruns)
    need(m, "final stage installs no packages")
    pkgs = set(m.group(1).split())
    need({"fuse3", "ca-certificates"} <= pkgs, f"final stage installs {sorted(pkgs)}")
    ep = [a for o, a in final["ins"] if o == "ENTRYPOINT"]
    need(ep, "no ENTRYPOINT")
    try:
        epv = json.loads(ep[-1])
    except ValueError:
        raise CheckError("ENTRYPOINT is not in exec (JSON) form: signals would not reach cachalot")
    need(epv[:2] == ["/usr/local/bin/cachalot", "csi"], f"ENTRYPOINT {epv}")
    text = open(os.path.join(root, "Dockerfile"), encoding="utf-8").read()
    need("CAP_SYS_ADMIN" in text and "non-root" in text,
         "Dockerfile lacks the comment on why the node plugin cannot be non-root")


def check_dockerignore(root):
    lines = [l.strip() for l in open(os.path.join(root, ".dockerignore"), encoding="utf-8")
             if l.strip() and not l.startswith("#")]
    need("target" in lines or "target/" in lines or "/target" in lines, ".dockerignore keeps target/")
    need(".git" in lines, ".dockerignore keeps .git")
    # what the build needs must stay in the context
    needed = ["src", "Cargo.toml", "Cargo.lock", "build.rs", "proto"]
    cargo = open(os.path.join(root, "Cargo.toml"), encoding="utf-8").read()
    needed += re.findall(r'^path\s*=\s*"([^"]+)"', cargo, re.M)
    import fnmatch
    for n in needed:
        for pat in lines:
            if pat.startswith("!"):
                continue
            p = pat.strip("/")
            hit = fnmatch.fnmatch(n, p) or n.startswith(p + "/") or \
                (p.startswith("**/") and fnmatch.fnmatch(os.path.basename(n), p[3:]))
            need(not hit, f".dockerignore pattern {pat!r} excludes {n}, which the build needs")


# --------------------------------------------------------------------------

def check_kustomize_lists_everything(kdir):
    (k,) = load_docs(os.path.join(kdir, "kustomization.yaml"))
    listed = set(k.get("resources", []))
    files = {f for f in os.listdir(kdir) if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml"}
    need(files <= listed, f"not listed in kustomization.yaml: {sorted(files - listed)}")


def check_kubectl_kustomize(kdir, objs):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        print("info kubectl not on PATH: cross-check with `kubectl kustomize` not run")
        return
    out = subprocess.run([kubectl, "kustomize", kdir], capture_output=True, text=True, timeout=120)
    need(out.returncode == 0, f"kubectl kustomize failed: {out.stderr.strip()}")
    theirs = {key(o): o for o in load_docs_text(out.stdout, "kubectl kustomize")}
    ours = {key(o): o for o in objs}
    need(set(theirs) == set(ours), f"kubectl kustomize objects differ: {set(theirs) ^ set(ours)}")
    diff = [str(kk) for kk in ours if ours[kk] != theirs[kk]]
    need(not diff, f"checker's render differs from kubectl kustomize in {diff}")


ROOT = "."


def main():
    global ROOT
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "../.."))
    ROOT = os.path.abspath(ap.parse_args().root)
    kdir = os.path.join(ROOT, "deploy/kubernetes")
    edir = os.path.join(kdir, "examples")
    odir = os.path.join(ROOT, "deploy/overlays/example")
    cdir = os.path.join(ROOT, "deploy/helm/cachalot")
    r = Runner()
    state = {}

    def load_base():
        state["base"] = render_kustomize(kdir)

    r.check("kustomize: render base", load_base)
    base = state.get("base", [])
    r.check("kustomize: every manifest listed", check_kustomize_lists_everything, kdir)
    r.check("kustomize: matches kubectl kustomize", check_kubectl_kustomize, kdir, base)
    r.check("kustomize: schemas (strict)", validate_schemas, base)
    r.check("kustomize: install invariants", check_install, base)
    r.check("kustomize: image (what scripts/image.sh builds)", check_base_image, base, ROOT)
    r.check("kustomize: namespace Pod Security labels", check_namespace_pod_security, base,
            "cachalot")

    def load_examples():
        objs = []
        for f in sorted(os.listdir(edir)):
            if f.endswith((".yaml", ".yml")):
                objs.extend(load_docs(os.path.join(edir, f)))
        state["examples"] = objs

    r.check("examples: load", load_examples)
    ex = state.get("examples", [])
    r.check("examples: schemas (strict)", validate_schemas, ex)
    r.check("examples: driver, parameters, references", check_examples, ROOT, ex)
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
    r.check(f"helm: render default values (image.repository={IMAGE_NAME})", helm_default)
    hobjs = state.get("helm", [])
    r.check("helm: schemas (strict)", validate_schemas, hobjs)
    r.check("helm: install invariants", check_install, hobjs)
    r.check("helm: mirrors the kustomize base", check_helm_mirrors_kustomize, hobjs, base)
    r.check("helm: imagePullSecrets per-component override", check_pull_secrets, cdir)
    r.check("helm: values (image, log level, paths, extraArgs, scheduling, classes)",
            check_helm_values, cdir)
    r.check("helm: metrics values (port, disabled, PodMonitor)", check_helm_metrics, cdir)
    r.check("helm: namespace, secret namespaces, inline volumes, expansion values",
            check_helm_security_values, cdir)
    r.check("helm: snapshot values (snapshots.*, sidecars.snapshotter)", check_helm_snapshots,
            cdir)
    r.check("helm: lint --strict", check_helm_lint, cdir)
    r.check("docs: deploy.md's namespace label command", check_docs_label_command, ROOT)
    r.check("docs: deploy.md's snapshot prerequisites and controller N/N", check_docs_snapshots,
            ROOT, base)
    r.check("grafana: dashboard (JSON, datasource, variables, README metrics)", check_dashboard, ROOT)
    r.check("grafana: queries parse with promtool", check_dashboard_promtool, ROOT)
    r.check("docker: Dockerfile", check_dockerfile, ROOT)
    r.check("docker: .dockerignore", check_dockerignore, ROOT)

    print(f"check_manifests: {r.passed} checks passed, {len(r.failed)} failed")
    if r.failed:
        print("FAILED: " + ", ".join(r.failed))
        return 1
    print("ALL CHECKS PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
