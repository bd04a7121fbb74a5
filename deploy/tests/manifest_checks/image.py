"""The cachalot image: there is no public one, so every install names the image
the user built. The kustomize base runs cachalot:<Cargo.toml version>, what
scripts/image.sh builds and loads by default; the chart requires
image.repository and defaults its tag to that version; the example overlay
changes nothing but the image."""

import copy
import os
import re

from helm_python import errors as helm_errors

from .common import CheckError, need
from .render import load_docs, render_helm, render_kustomize, split_image
from .podspec import cachalot_containers
from .install import check_install

IMAGE_NAME = "cachalot"  # the image name in the base, the default of scripts/image.sh


def cargo_version(root):
    """The [package] version of root's Cargo.toml."""
    text = open(os.path.join(root, "Cargo.toml"), encoding="utf-8").read()
    m = re.search(r'^\[package\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.M | re.S)
    need(m, "Cargo.toml: no [package] version")
    return m.group(1)


def with_image(values, repository=IMAGE_NAME):
    """values with image.repository set (the chart requires it) unless given."""
    v = copy.deepcopy(values)
    v.setdefault("image", {}).setdefault("repository", repository)
    return v


def cachalot_images(objs):
    """{where: image} of the controller plugin, node plugin and mounter."""
    return {f"{role} ({c['name']})": c["image"] for role, _, c in cachalot_containers(objs)}


def check_base_image(objs, root):
    """The base runs IMAGE_NAME:<Cargo version>, what scripts/image.sh builds
    by default (so a cluster that loaded it runs the base as is), and the
    chart's appVersion (its default tag) is that version too."""
    version = cargo_version(root)
    want = f"{IMAGE_NAME}:{version}"
    for where, img in cachalot_images(objs).items():
        need(img == want, f"{where}: image {img}, want {want} (scripts/image.sh builds "
                          f"{IMAGE_NAME}:<Cargo.toml version>; overlays replace the name "
                          f"{IMAGE_NAME!r})")
    for role, _, c in cachalot_containers(objs):
        need(c.get("imagePullPolicy") == "IfNotPresent",
             f"{role}: imagePullPolicy {c.get('imagePullPolicy')!r}, want IfNotPresent (an "
             "image loaded into the nodes by scripts/image.sh --kind/--minikube exists in no "
             "registry)")
    (chart,) = load_docs(os.path.join(root, "deploy/helm/cachalot/Chart.yaml"))
    need(str(chart.get("appVersion")) == version,
         f"Chart.yaml appVersion {chart.get('appVersion')!r} != Cargo.toml version {version} "
         "(the chart's default image tag)")


def check_helm_image_required(chart_dir):
    """Without image.repository the chart refuses to render, naming the fix."""
    (values,) = load_docs(os.path.join(chart_dir, "values.yaml"))
    default = (values.get("image") or {}).get("repository")
    need(not default,
         f"values.yaml image.repository defaults to {default!r}: there is "
         "no public image, leave it empty (required)")
    try:
        render_helm(chart_dir, {})
    except helm_errors.HelmRenderError as e:
        msg = str(e)
        need("image.repository is required" in msg and "scripts/image.sh" in msg,
             f"rendering without image.repository fails with {msg!r}: want a message naming "
             "image.repository and scripts/image.sh")
        return
    raise CheckError("the chart renders without image.repository: make it "
                     "{{ required \"image.repository is required: ...\" }}")


def strip_images(objs):
    """objs without container images, to compare what an overlay left alone."""
    out = copy.deepcopy(objs)
    for o in out:
        spec = o.get("spec", {}).get("template", {}).get("spec")
        for c in (spec or {}).get("containers", []):
            c.pop("image", None)
    return out


def check_overlay(odir, base):
    """The example overlay: the base with the cachalot image replaced,
    nothing else changed."""
    objs = render_kustomize(odir)
    (k,) = load_docs(os.path.join(odir, "kustomization.yaml"))
    entry = next((i for i in k.get("images", []) if i.get("name") == IMAGE_NAME), None)
    need(entry and entry.get("newName"),
         f"{odir}: no images entry with name {IMAGE_NAME!r} and a newName")
    _, base_tag = split_image(next(iter(cachalot_images(base).values())))
    want = f"{entry['newName']}:{entry.get('newTag', base_tag)}"
    for where, img in cachalot_images(objs).items():
        need(img == want, f"overlay: {where} runs {img}, want {want} (the images entry)")
    need(strip_images(objs) == strip_images(base),
         "overlay: differs from the base in more than the cachalot image")
    check_install(objs)
