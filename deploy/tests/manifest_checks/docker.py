"""The Dockerfile and .dockerignore, parsed without docker: a multi-stage
build that compiles the locked release binary and copies it to
/usr/local/bin/cachalot (install.BINARY, where the manifests run it), an
exec-form ENTRYPOINT, the FUSE packages; and a build context that keeps what
the build needs."""

import fnmatch
import json
import os
import re

from .common import CheckError, need


def dockerfile_instructions(path):
    """[(INSTRUCTION, arguments)] with continuations joined, comments dropped."""
    out, buf = [], ""
    for line in open(path, encoding="utf-8"):
        s = line.rstrip("\n")
        if not buf and (not s.strip() or s.lstrip().startswith("#")):
            continue
        if s.lstrip().startswith("#"):
            continue  # comment inside a continuation
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        parts = buf.strip().split(None, 1)
        out.append((parts[0].upper(), parts[1] if len(parts) > 1 else ""))
        buf = ""
    need(not buf, "Dockerfile ends inside a line continuation")
    return out


def check_dockerfile(root):
    ins = dockerfile_instructions(os.path.join(root, "Dockerfile"))
    stages, cur = [], None
    for op, arg in ins:
        if op == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?$", arg, re.I)
            need(m, f"FROM {arg}")
            cur = {"image": m.group(1), "name": m.group(2), "ins": []}
            stages.append(cur)
        else:
            need(cur is not None, f"{op} before FROM")
            cur["ins"].append((op, arg))
    need(len(stages) >= 2, f"{len(stages)} stage(s), want a multi-stage build")
    builder = next((s for s in stages if s["image"] == "rust:1-bookworm"), None)
    need(builder and builder["name"], "no named rust:1-bookworm build stage")
    final = stages[-1]
    need(final["image"] == "debian:bookworm-slim", f"final stage is {final['image']}")
    runs = " ".join(a for o, a in builder["ins"] if o == "RUN")
    need(re.search(r"cargo build\b[^&;]*--release", runs) and "--locked" in runs,
         "builder does not run cargo build --release --locked")
    workdir = next((a for o, a in builder["ins"] if o == "WORKDIR"), None)
    need(workdir, "builder has no WORKDIR")
    need(any(o == "COPY" and a.split()[:1] == ["."] for o, a in builder["ins"]),
         "builder does not COPY the source tree")
    copies = [a.split() for o, a in final["ins"] if o == "COPY" and a.startswith("--from=")]
    need(copies, "final stage copies nothing from the builder")
    frm, src, dst = copies[0][0].split("=", 1)[1], copies[0][1], copies[0][-1]
    need(frm == builder["name"], f"COPY --from={frm}, builder stage is {builder['name']}")
    want_src = workdir.rstrip("/") + "/target/release/cachalot"
    need(src == want_src, f"COPY --from source {src}, want {want_src}")
    need(dst in ("/usr/local/bin/cachalot", "/usr/local/bin/", "/usr/local/bin"),
         f"binary copied to {dst}")
    fruns = " ".join(a for o, a in final["ins"] if o == "RUN")
    m = re.search(r"apt-get install ([^&;]*)", fruns)
    need(m, "final stage installs no packages")
    pkgs = set(m.group(1).split())
    need({"fuse3", "ca-certificates"} <= pkgs, f"final stage installs {sorted(pkgs)}")
    ep = [a for o, a in final["ins"] if o == "ENTRYPOINT"]
    need(ep, "no ENTRYPOINT")
    try:
        epv = json.loads(ep[-1])
    except ValueError:
        raise CheckError("ENTRYPOINT is not in exec (JSON) form: signals would not reach cachalot")
    need(epv[:2] == ["/usr/local/bin/cachalot", "csi"], f"ENTRYPOINT {epv}")
    text = open(os.path.join(root, "Dockerfile"), encoding="utf-8").read()
    need("CAP_SYS_ADMIN" in text and "non-root" in text,
         "Dockerfile lacks the comment on why the node plugin cannot be non-root")


def check_dockerignore(root):
    lines = [l.strip() for l in open(os.path.join(root, ".dockerignore"), encoding="utf-8")
             if l.strip() and not l.startswith("#")]
    need("target" in lines or "target/" in lines or "/target" in lines, ".dockerignore keeps target/")
    need(".git" in lines, ".dockerignore keeps .git")
    # what the build needs must stay in the context
    needed = ["src", "Cargo.toml", "Cargo.lock", "build.rs", "proto"]
    cargo = open(os.path.join(root, "Cargo.toml"), encoding="utf-8").read()
    needed += re.findall(r'^path\s*=\s*"([^"]+)"', cargo, re.M)
    for n in needed:
        for pat in lines:
            if pat.startswith("!"):
                continue
            p = pat.strip("/")
            hit = fnmatch.fnmatch(n, p) or n.startswith(p + "/") or \
                (p.startswith("**/") and fnmatch.fnmatch(os.path.basename(n), p[3:]))
            need(not hit, f".dockerignore pattern {pat!r} excludes {n}, which the build needs")
