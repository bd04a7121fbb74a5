"""Reading pod specs: containers, their flags (with $(VAR) expanded), which
volume and host path a path inside a container lands on, and which workload
runs the controller plugin, the node plugin and the mounter.

The install checks compare paths as the host sees them (a socket is shared
only if both containers reach the same host file), so they all go through
host_path_of rather than comparing mountPaths."""

import re

from .common import CheckError, need
from .render import by_kind, one


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def container(spec, name):
    for c in spec.get("containers", []):
        if c["name"] == name:
            return c
    raise CheckError(f"no container {name!r} (have {[c['name'] for c in spec.get('containers', [])]})")


def expand_env(c, s):
    """s with $(VAR) replaced by c's literal env values, as the kubelet does in args."""
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
    """The socket path of a --flag that takes a path or a unix:// URL."""
    v = flag(c, flagname)
    need(v, f"container {c['name']}: --{flagname} missing")
    return v[len("unix://"):] if v.startswith("unix://") else v


def argv(c):
    """command + args: the mounter is recognised by its command, not its args."""
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
