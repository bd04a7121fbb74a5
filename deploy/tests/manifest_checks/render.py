"""Loading and rendering: YAML files, the kustomize base and overlays (our own
minimal `kustomize build`), the Helm chart (helm-python-sdk, no helm binary),
and the small lookups every check does on a list of rendered objects.

The checks never read manifests themselves: they get the objects from here,
so the base, the overlay and every Helm value set go through the same
renderer and the same checks. The kustomize renderer refuses keys it does not
implement rather than ignore them, and is cross-checked against
`kubectl kustomize` when kubectl is on PATH."""

import os
import shutil
import subprocess

import yaml
from helm_python import chart as helm_chart

from .common import CheckError, need

# kinds the namespace transformer leaves alone (and that have no namespace)
CLUSTER_SCOPED = {
    "Namespace", "CSIDriver", "ClusterRole", "ClusterRoleBinding", "StorageClass",
    "PersistentVolume", "VolumeSnapshotClass",
}
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "images"}


def load_docs_text(text, origin):
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise CheckError(f"{origin}: invalid YAML: {e}")


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return load_docs_text(f.read(), path)


def split_image(ref):
    """(name, tag or None) of an image reference without a digest."""
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = ref.rsplit(":", 1)
        return name, tag
    return ref, None


def apply_images(objs, images):
    """The images transformer (an overlay's `images:` entries)."""
    for o in objs:
        spec = o.get("spec", {}).get("template", {}).get("spec") or \
            (o.get("spec") if o.get("kind") == "Pod" else None)
        if not spec:
            continue
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            name, tag = split_image(c["image"])
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


def render_chart_files(chart_dir, values, name, namespace):
    """{template path: rendered text} of `helm install` (offline)."""
    c = helm_chart.Chart.load(chart_dir)
    return c.render(values, name=name, namespace=namespace, is_install=True)


def render_helm(chart_dir, values, name="cachalot", namespace="cachalot"):
    """The objects of the chart rendered with values (NOTES.txt and partials skipped)."""
    out = render_chart_files(chart_dir, values, name, namespace)
    objs = []
    for path, text in sorted(out.items()):
        if path.endswith(".txt") or os.path.basename(path).startswith("_"):
            continue
        objs.extend(load_docs_text(text, path))
    return objs


def render_notes(chart_dir, values, name="cachalot", namespace="cachalot"):
    """The chart's NOTES.txt as `helm install` prints it."""
    out = render_chart_files(chart_dir, values, name, namespace)
    notes = [t for p, t in out.items() if p.endswith("/NOTES.txt")]
    need(len(notes) == 1, "the chart renders no NOTES.txt")
    return notes[0]


def key(o):
    """(kind, namespace, name): what identifies an object across renders."""
    m = o.get("metadata", {})
    return (o.get("kind"), m.get("namespace"), m.get("name"))


def by_kind(objs, kind):
    return [o for o in objs if o.get("kind") == kind]


def one(objs, kind):
    found = by_kind(objs, kind)
    need(len(found) == 1, f"expected exactly one {kind}, found {len(found)}")
    return found[0]


def covers(host_dir, path):
    """Whether the host dir host_dir is path or one of its parents."""
    d = host_dir.rstrip("/")
    return path == d or path.startswith(d + "/")


def check_kustomize_lists_everything(kdir):
    """A manifest dropped in the base's directory but not listed would silently
    not be installed."""
    (k,) = load_docs(os.path.join(kdir, "kustomization.yaml"))
    listed = set(k.get("resources", []))
    files = {f for f in os.listdir(kdir) if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml"}
    need(files <= listed, f"not listed in kustomization.yaml: {sorted(files - listed)}")


def check_kubectl_kustomize(kdir, objs):
    """Our render equals `kubectl kustomize` (when kubectl is on PATH), so the
    checks see what users install."""
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
