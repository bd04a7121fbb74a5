"""What the install may do and what its namespace admits: the controller
ServiceAccount's RBAC (cluster-wide exactly what its sidecars need, never
Secrets; leases and Secrets through namespaced Roles) and the Pod Security
labels the privileged node plugin and mounter need.

The wanted grants are those of the sidecar releases the install pins
(install.SIDECAR_IMAGES): a sidecar upgrade that needs more shows up here
as a missing grant instead of as a stuck PVC in a cluster."""

from .common import CheckError, SNAPSHOT_GROUP, need
from .render import CLUSTER_SCOPED, by_kind, key, one
from .podspec import pod_spec

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
SIDECAR_RULES = {"csi-provisioner": PROVISIONER_RULES, "csi-resizer": RESIZER_RULES,
                 "csi-snapshotter": SNAPSHOTTER_RULES}
LEASE_VERBS = {"get", "watch", "list", "delete", "update", "create"}
# provisioner-secret-name (S3 credentials), per secret namespace
SECRET_RULES = {("", "secrets"): {"get"}}
# Pod Security Admission: the node plugin and the mounter are privileged
POD_SECURITY_LABELS = {f"pod-security.kubernetes.io/{m}": "privileged"
                       for m in ("enforce", "audit", "warn")}


def rule_grants(rules):
    """{(apiGroup, resource): verbs} of a list of PolicyRules."""
    granted = {}
    for r in rules or []:
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                granted.setdefault((g, res), set()).update(r.get("verbs", []))
    return granted


def grants_beyond(grants, allowed):
    """The part of grants ({(apiGroup, resource): verbs}) that allowed lacks."""
    rest = {k: v - allowed.get(k, set()) for k, v in grants.items()}
    return {k: v for k, v in rest.items() if v}


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
        missing = grants_beyond(rules, granted)
        need(not missing, f"ServiceAccount {ns}/{sa} lacks {fmt_grants(missing)} cluster-wide, "
                          f"which the {sidecar} sidecar needs: add them to its ClusterRole")
        for k, v in rules.items():
            wanted.setdefault(k, set()).update(v)
    extra = grants_beyond(granted, wanted)
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
        extra = grants_beyond(g, allowed)
        need(not extra, f"Roles bound to {ns}/{sa} in {n} grant {fmt_grants(extra)}: want only "
                        f"{fmt_grants(allowed)} there")


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


def snapshot_grants(objs):
    """Everything the install's ClusterRoles grant in snapshot.storage.k8s.io."""
    return {(cr["metadata"]["name"], res): sorted(v) for cr in by_kind(objs, "ClusterRole")
            for (grp, res), v in rule_grants(cr.get("rules")).items() if grp == SNAPSHOT_GROUP}


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


def label_command(ns):
    """The command that labels an existing namespace ns for Pod Security (the
    chart's NOTES.txt prints it, docs/deploy.md gives it)."""
    return f"kubectl label namespace {ns} --overwrite " + " ".join(
        f"{k}={v}" for k, v in POD_SECURITY_LABELS.items())
