"""Schema validation: every object against the Kubernetes OpenAPI schemas of
kubernetes-validate, strict (an unknown field fails: it would be dropped or
refused by the API server), for the oldest and newest supported version.
kubernetes-validate has no schemas for CRDs, so the kinds the install and
examples use from monitoring.coreos.com (PodMonitor) and
snapshot.storage.k8s.io (VolumeSnapshotClass, VolumeSnapshot) get a strict
structural check of their own here."""

import re

import kubernetes_validate

from .common import CheckError, SNAPSHOT_GROUP, need
from .render import key

K8S_VERSIONS = ["1.25.0", "1.37.0"]  # chart kubeVersion >=1.25; newest shipped schemas
MONITORING_GROUP = "monitoring.coreos.com"
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


def validate_schemas(objs):
    """All schema problems of objs at once, so one run lists every typo."""
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


def api_group(o):
    """The API group of o's apiVersion ('' for the core group)."""
    av = o.get("apiVersion", "")
    return av.split("/")[0] if "/" in av else ""


def only_keys(d, allowed, where):
    """Strictness for the CRD kinds: d is a mapping with no unknown field."""
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
