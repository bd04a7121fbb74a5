"""The Helm chart (deploy/helm/cachalot) beyond its default render: with the
default values it renders the kustomize base (same objects, labels aside);
each group of values (image, paths, scheduling, storageClasses, metrics,
namespace and secret namespaces, inline volumes, snapshots, sidecars,
imagePullSecrets) renders an install that still passes check_install, and
combinations that could not work fail the render with a message naming the
value to fix. Ends with `helm lint --strict`.

Values are only exercised here: a template typo on a non-default path
would otherwise reach users first."""

import copy

from helm_python import chart as helm_chart
from helm_python import errors as helm_errors

from .common import CheckError, DRIVER, SNAPSHOT_GROUP, need
from .render import by_kind, key, one, render_helm, render_notes
from .podspec import (cachalot_containers, container, flag, mounter_daemonset, node_daemonset,
                      pod_spec)
from .schemas import validate_schemas
from .rbac import (check_namespace_pod_security, label_command, secret_namespaces_of,
                   snapshot_grants)
from .install import check_install
from .metrics import METRICS_PORT_NAME, check_podmonitor, named_port, selector_matches
from .storage import check_storageclass_expansion, check_storageclass_params, params_keys
from .image import with_image


def strip_for_compare(o):
    """o without the labels Helm adds (release, chart version)."""
    o = copy.deepcopy(o)
    o.get("metadata", {}).pop("labels", None)
    tpl = o.get("spec", {}).get("template", {})
    tpl.get("metadata", {}).pop("labels", None)
    sel = o.get("spec", {}).get("selector", {}).get("matchLabels")
    if sel:
        sel.pop("app.kubernetes.io/instance", None)
    return o


def check_helm_mirrors_kustomize(helm_objs, kust_objs):
    """Two ways to install must install the same thing: one set of checks
    then covers both."""
    h = {key(o): strip_for_compare(o) for o in helm_objs}
    k = {key(o): strip_for_compare(o) for o in kust_objs if o["kind"] != "Namespace"}
    need(set(h) == set(k), f"Helm objects {sorted(map(str, set(h) - set(k)))} not in kustomize, "
                           f"kustomize objects {sorted(map(str, set(k) - set(h)))} not in Helm")
    diffs = [str(kk) for kk in k if h[kk] != k[kk]]
    need(not diffs, f"Helm (release cachalot, default values) differs from kustomize in {diffs}")


def pull_secrets(workload):
    return [s["name"] for s in pod_spec(workload).get("imagePullSecrets", []) or []]


def check_pull_secrets(chart_dir):
    """A component's imagePullSecrets replaces the global list (not merged)."""
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


def check_helm_values(chart_dir, root):
    """Image, log level, host paths, extraArgs, scheduling, replicas and
    storageClasses reach the objects they configure (StorageClass parameters
    checked against root's src/csi/params/mod.rs)."""
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
    sc_keys, _ = params_keys(root)
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


def check_helm_s3_ca_bundle(chart_dir):
    """s3CaBundle: the containers that reach S3 (controller plugin, mounter)
    read SSL_CERT_FILE from the ConfigMap's key; nothing without it."""
    def s3_containers(objs):
        return {"controller": container(pod_spec(one(objs, "Deployment")), "cachalot"),
                "mounter": container(pod_spec(mounter_daemonset(objs)), "mounter")}

    def env_of(c):
        return {e["name"]: e.get("value") for e in c.get("env", [])}

    for name, c in s3_containers(render_helm(chart_dir, with_image({}))).items():
        need("SSL_CERT_FILE" not in env_of(c), f"{name}: SSL_CERT_FILE set without s3CaBundle")
    objs = render_helm(chart_dir, with_image({"s3CaBundle": {"configMap": "corp-ca",
                                                             "key": "bundle.pem"}}))
    validate_schemas(objs)
    check_install(objs)
    for workload, (name, c) in zip([one(objs, "Deployment"), mounter_daemonset(objs)],
                                   s3_containers(objs).items()):
        path = env_of(c).get("SSL_CERT_FILE")
        need(path is not None, f"{name}: no SSL_CERT_FILE with s3CaBundle.configMap set")
        mounts = [m for m in c.get("volumeMounts", []) if path.startswith(m["mountPath"] + "/")]
        need(len(mounts) == 1, f"{name}: SSL_CERT_FILE {path} is on no volume mount")
        volume = [v for v in pod_spec(workload)["volumes"] if v["name"] == mounts[0]["name"]]
        need(volume and volume[0].get("configMap", {}).get("name") == "corp-ca",
             f"{name}: {path} is not from ConfigMap corp-ca: {volume}")
        items = {i["key"]: i["path"] for i in volume[0]["configMap"].get("items", [])}
        need(path == f"{mounts[0]['mountPath']}/{items.get('bundle.pem')}",
             f"{name}: SSL_CERT_FILE {path} is not the ConfigMap's key bundle.pem ({items})")


def check_helm_lint(chart_dir):
    """`helm lint --strict`: warnings fail too."""
    report = helm_chart.lint(chart_dir, with_image({}), strict=True, kube_version="v1.30.0")
    msgs = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    need(not report.get("errors") and not msgs,
         f"helm lint --strict: errors {report.get('errors')} messages {msgs}")
