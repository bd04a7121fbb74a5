"""The Grafana dashboard (deploy/grafana/cachalot.json) against README.md's
"### Metrics" section: importable structure, the `datasource` and `volume`
variables, and every query's metrics, labels and functions (counters under
rate(), per-volume series filtered by $volume); then promtool, when on PATH,
parses every query.

A panel on a renamed or misspelled metric shows "No data" rather than an
error, so nothing else would catch it."""

import json
import os
import re
import shutil
import subprocess
import tempfile

import yaml

from .common import CheckError, need

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
