"""The example manifests (deploy/kubernetes/examples): StorageClasses, Secrets,
static PVs, PVCs, Pods with inline volumes, VolumeSnapshotClasses,
VolumeSnapshots, restored and cloned PVCs. Every reference resolves within
the examples, and what they need from the kustomize base is there (secret
namespaces, Ephemeral, the snapshotter).

Users copy the examples as they are: an example that points at a missing
Secret or a class of another driver is a broken first install."""

from .common import CheckError, DRIVER, SNAPSHOT_GROUP, need
from .render import by_kind, one
from .podspec import pod_spec
from .rbac import secret_namespaces_of
from .storage import (check_inline_volume, check_storageclass_expansion,
                      check_storageclass_params, location_of, params_keys, quantity)

# VolumeSnapshotClass parameters: the plugin reads none but the Secret
SNAPSHOT_CLASS_PARAMS = {
    "csi.storage.k8s.io/snapshotter-secret-name",
    "csi.storage.k8s.io/snapshotter-secret-namespace",
}


def check_examples(root, objs):
    """StorageClasses (NFS and S3, parameters the driver knows), their Secrets,
    static PVs (volume handles, attributes NodeStage accepts), PVCs and Pods."""
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
