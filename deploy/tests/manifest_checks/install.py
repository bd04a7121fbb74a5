"""The invariants of a rendered install (the kustomize base, the overlay, every
Helm value set): the things that, when wrong, break a real cluster rather than
a schema. The CSIDriver; the controller with its sidecars (provisioner,
resizer, snapshotter, liveness probe) on the plugin's socket; the node plugin
and the kubelet paths, Bidirectional propagation and registration; the mounter
DaemonSet and its live takeover (surge update, readiness on its socket,
--idle-after-handover); pinned images and resource requests. RBAC and metrics
are checked through their own modules from check_install.

check_install takes the host paths and switches a value set changes, so the
same function checks the defaults and every customised render."""

import os

from .common import CheckError, DRIVER, need
from .render import by_kind, covers, one
from .podspec import (argv, container, flag, host_path_of, is_mounter, mount_of,
                      mounter_daemonset, node_daemonset, pod_spec, probe_flag, socket_of)
from .rbac import check_rbac
from .metrics import check_metrics

BINARY = "/usr/local/bin/cachalot"  # where the Dockerfile puts it (checked there)
LIFECYCLE_MODES = ["Persistent", "Ephemeral"]
# the plugin has no group controller service: group snapshots off in the sidecar
SNAPSHOTTER_GATES = "CSIVolumeGroupSnapshot=false"
# the sidecar releases whose flags and RBAC (rbac.py) this checker knows
SIDECAR_IMAGES = {"csi-provisioner": "registry.k8s.io/sig-storage/csi-provisioner:v5.",
                  "csi-resizer": "registry.k8s.io/sig-storage/csi-resizer:v1.",
                  "csi-snapshotter": "registry.k8s.io/sig-storage/csi-snapshotter:v8."}
# docs/deploy.md counts them ("controller 5/5")
CONTROLLER_CONTAINERS = ["cachalot", "csi-provisioner", "csi-resizer", "csi-snapshotter",
                         "liveness-probe"]


def check_install(objs, kubelet_dir="/var/lib/kubelet", cache_host="/var/lib/cachalot/cache",
                  state_host="/var/lib/cachalot/state",
                  mounter_state_host="/var/lib/cachalot/mounter",
                  mounter_socket_host="/run/cachalot", metrics=True, inline=True,
                  secret_namespaces=None, snapshots=True):
    """Every invariant of one install; the keyword arguments are what the
    render's values changed (host paths, metrics/inline/snapshots switches,
    the namespaces whose Secrets the provisioner may read)."""
    plugin_dir = f"{kubelet_dir}/plugins/{DRIVER}"

    # CSIDriver
    d = one(objs, "CSIDriver")
    need(d["metadata"]["name"] == DRIVER, f"CSIDriver name {d['metadata']['name']!r} != {DRIVER}")
    modes = LIFECYCLE_MODES if inline else ["Persistent"]
    want = {"attachRequired": False, "podInfoOnMount": True, "fsGroupPolicy": "File",
            "volumeLifecycleModes": modes, "requiresRepublish": True,
            "tokenRequests": [{"audience": "sts.amazonaws.com"}]}
    why = {"volumeLifecycleModes": " (Ephemeral: inline `csi:` volumes in pod specs, which the "
                                   "plugin serves; without it the kubelet refuses them)"
                                   if inline else " (inlineVolumes.enabled=false)",
           "podInfoOnMount": " (the kubelet marks inline volumes with "
                             "csi.storage.k8s.io/ephemeral only with podInfoOnMount, and names "
                             "the pod's service account for authenticationSource: pod)",
           "tokenRequests": " (authenticationSource: pod exchanges the pod's token at STS)",
           "requiresRepublish": " (the kubelet renews the pods' tokens only by publishing "
                                "again)"}
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


def sidecar_on_plugin_socket(spec, name, sock, vol):
    """The controller's sidecar container `name`, after checking that its
    --csi-address is the plugin's socket sock, reached through the plugin's
    socket volume vol (a sidecar on another socket never calls the plugin)."""
    c = container(spec, name)
    csock = socket_of(c, "csi-address")
    fix = (f"mount the plugin's socket volume {vol['name']} at {os.path.dirname(sock)} and "
           f"set --csi-address to {sock}")
    need(csock == sock, f"controller: {name} --csi-address {csock} is not the plugin's "
                        f"socket {sock}: {fix}")
    try:
        cvol, _ = host_path_of(spec, c, csock)
    except CheckError as e:
        raise CheckError(f"controller: {name}: {e}: {fix}")
    need(cvol["name"] == vol["name"],
         f"controller: {name} reaches {csock} through volume {cvol['name']}, the plugin "
         f"listens in volume {vol['name']}: {fix}")
    return c


def check_resizer(spec, plugin, sock, vol):
    """The csi-resizer sidecar: PVC expansion through ControllerExpandVolume."""
    names = [c["name"] for c in spec["containers"]]
    need("csi-resizer" in names,
         f"controller: no csi-resizer container (have {names}): the plugin advertises "
         "EXPAND_VOLUME, but without the external-resizer a PVC resize never reaches it (add "
         "the csi-resizer sidecar on the plugin's socket)")
    rs = sidecar_on_plugin_socket(spec, "csi-resizer", sock, vol)
    need(flag(rs, "leader-election") is not None,
         "controller: csi-resizer lacks --leader-election (with more than one controller "
         "replica every resizer would expand the same PVC)")
    need(flag(rs, "handle-volume-inuse-error") == "false",
         f"controller: csi-resizer --handle-volume-inuse-error is "
         f"{flag(rs, 'handle-volume-inuse-error')!r}, want false: the plugin expands online "
         "(it never answers 'volume in use'), and with the default true the resizer watches "
         "every pod of the cluster, which its RBAC does not grant")


def controller_containers(snapshots=True):
    """The controller pod's containers (no snapshotter with snapshots off)."""
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
    sn = sidecar_on_plugin_socket(spec, "csi-snapshotter", sock, vol)
    need(flag(sn, "leader-election") is not None,
         "controller: csi-snapshotter lacks --leader-election (with more than one controller "
         "replica every snapshotter would take the same snapshot)")
    gates = flag(sn, "feature-gates")
    need(gates is not None and SNAPSHOTTER_GATES in gates.split(","),
         f"controller: csi-snapshotter --feature-gates is {gates!r}, want {SNAPSHOTTER_GATES}: "
         "the plugin has no group controller service, and with the gate on the sidecar "
         "waits for groupsnapshot.storage.k8s.io objects its RBAC does not grant")


def check_liveness(spec, plugin, sock, role):
    """The livenessprobe sidecar probes the plugin's own socket, and the
    plugin's livenessProbe targets the port the sidecar serves."""
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
