"""The driver's volume parameters: StorageClass parameters and inline `csi:`
volume attributes against the names src/csi/params/mod.rs accepts (read from
the source, so a renamed parameter fails here instead of at NodeStage),
subDir templates, volume expansion, and storage quantities.

Shared by the examples (examples.py) and the chart's storageClasses values
(helm.py)."""

import os
import re

from .common import DRIVER, need

# the external-provisioner's secret parameters the plugin uses (S3 keys)
SECRET_PARAM_PREFIX = "csi.storage.k8s.io/"
SECRET_PARAMS = {
    "csi.storage.k8s.io/provisioner-secret-name",
    "csi.storage.k8s.io/provisioner-secret-namespace",
    "csi.storage.k8s.io/node-stage-secret-name",
    "csi.storage.k8s.io/node-stage-secret-namespace",
}
SUBDIR_TEMPLATES = {"${pvc.metadata.name}", "${pvc.metadata.namespace}", "${pv.metadata.name}"}
# StorageClass parameters naming a volume's source (src/csi/params/mod.rs
# Location): restores and clones stay in one source
LOCATION_KEYS = {"source", "server", "share", "bucket", "prefix", "endpoint", "region"}
QUANTITY_SUFFIXES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
                     "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
# an inline volume names exactly one source, like a StorageClass
INLINE_LOCATIONS = ("source", "server/share", "bucket")


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
    """Every parameter of sc is one the driver reads (sc_keys, lower-case) or
    one of the external-provisioner's secret parameters; value rules the
    plugin would otherwise reject at provisioning."""
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


def check_storageclass_expansion(sc):
    """Online expansion is only reachable when the class allows it."""
    need(sc.get("allowVolumeExpansion") is True,
         f"StorageClass {sc['metadata']['name']}: allowVolumeExpansion "
         f"{sc.get('allowVolumeExpansion')!r}, want true (the plugin expands online: without it "
         "the API server refuses every resize of its PVCs)")


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


def quantity(q, where):
    """Bytes of a storage quantity (10Gi, 500M, 1e9)."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([kMGTP]i?|)", str(q))
    need(m and m.group(2) in QUANTITY_SUFFIXES, f"{where}: storage {q!r} is not a quantity")
    return float(m.group(1)) * QUANTITY_SUFFIXES[m.group(2)]


def location_of(sc):
    """The parameters of a StorageClass that name its source (lower-cased)."""
    return {k.lower(): v for k, v in (sc.get("parameters") or {}).items()
            if k.lower() in LOCATION_KEYS}
