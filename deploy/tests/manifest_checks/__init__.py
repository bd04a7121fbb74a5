"""The offline checks of cachalot's deployment files, one module per concern;
deploy/tests/check_manifests.py runs them in order (see its docstring for
what is checked and why).

    common      CheckError, need, the Runner; DRIVER, SNAPSHOT_GROUP
    render      YAML loading, kustomize and Helm rendering, object lookups
    podspec     containers, flags, volumes and host paths of pod specs
    schemas     OpenAPI validation; structural checks of the CRD kinds
    install     invariants of a rendered install (controller, node, mounter)
    rbac        the controller's RBAC, Secrets, Pod Security labels
    metrics     --metrics-addr, `metrics` ports, PodMonitors
    storage     StorageClass parameters and inline volume attributes
    examples    the example manifests and what they need from the base
    image       the image name and tag (base, chart, overlay)
    helm        the chart's values
    docs        docs/deploy.md's commands and counts
    dashboard   the Grafana dashboard against README.md's metrics
    docker      Dockerfile and .dockerignore
"""
