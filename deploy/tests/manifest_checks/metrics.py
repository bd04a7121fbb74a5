"""Metrics: each container's --metrics-addr and its `metrics` containerPort
agree, the three cachalot containers serve metrics on one port (or none
does), and a PodMonitor (chart or example) selects the controller, node
plugin and mounter pods and scrapes a port they have.

PodMonitors pick ports by name, so a renamed port or a missing one scrapes
nothing without any error in the cluster: these checks are the only place
that notices."""

import re

from .common import need
from .render import by_kind
from .podspec import cachalot_containers, flag, pod_spec

METRICS_PORT = 9810  # --metrics-addr of the three cachalot containers (base, chart default)
METRICS_PORT_NAME = "metrics"


def parse_listen_addr(value, where):
    """(host, port) of an ADDR as `cachalot --metrics-addr` takes it (an IP
    socket address: 0.0.0.0:9810, [::]:9810)."""
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+)):([0-9]+)", value or "")
    need(m, f"{where}: --metrics-addr {value!r} is not IP:PORT (e.g. 0.0.0.0:{METRICS_PORT})")
    port = int(m.group(3))
    need(0 < port < 65536, f"{where}: --metrics-addr port {port} out of range")
    return m.group(1) or m.group(2), port


def named_port(c, name):
    """The containerPort of c called name, or None."""
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


def selector_matches(sel, labels):
    """Whether a LabelSelector (matchLabels, matchExpressions) selects labels."""
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
    """The examples' PodMonitors scrape the kustomize base's pods."""
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
