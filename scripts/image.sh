#!/usr/bin/env bash
# Build the cachalot container image (the Dockerfile at the repository root)
# and optionally load it into a kind or minikube cluster or push it.
# Run `bash scripts/image.sh --help`. Needs docker or podman; uses nothing
# but bash builtins besides them (and kind / minikube when asked to load).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bash scripts/image.sh [--name NAME] [--tag TAG] [--engine docker|podman]
                             [--kind CLUSTER] [--minikube] [--push]

Builds the cachalot image from the repository's Dockerfile as NAME:TAG
(ENGINE build -t NAME:TAG REPO), then optionally makes it available to a
cluster.

  --name NAME       image name (default: cachalot, the name the kustomize base
                    deploy/kubernetes uses; a registry path such as
                    registry.example.com/cachalot for --push)
  --tag TAG         image tag (default: the version in Cargo.toml, the tag
                    of the kustomize base and the chart's appVersion)
  --engine ENGINE   docker or podman (default: docker if on PATH, else podman)
  --kind CLUSTER    load the image into the nodes of the kind cluster CLUSTER
                    (kind load docker-image; with podman: podman save + kind
                    load image-archive)
  --minikube        load the image into minikube (minikube image load)
  --push            push NAME:TAG to its registry (NAME must name one)
  -h, --help        this help

Then install with the image:
  kustomize base, loaded into kind/minikube with the default name and tag:
      kubectl apply -k deploy/kubernetes
  pushed to a registry: an overlay such as deploy/overlays/example
      (images: newName/newTag), then kubectl apply -k <overlay>
  Helm: helm install cachalot deploy/helm/cachalot -n cachalot --create-namespace \
      --set image.repository=NAME --set image.tag=TAG
See docs/deploy.md.
EOF
}

die() {
    echo "image.sh: $*" >&2
    exit 1
}

script="${BASH_SOURCE[0]}"
script_dir=.
if [[ "$script" == */* ]]; then script_dir="${script%/*}"; fi
root="$(cd "$script_dir/.." && pwd)"

# version = "..." of Cargo.toml's [package] table, with bash only
cargo_version() {
    local line section=""
    while IFS= read -r line || [[ -n "$line" ]]; do
        if [[ "$line" =~ ^\[([^]]*)\] ]]; then
            section="${BASH_REMATCH[1]}"
        elif [[ "$section" == package && "$line" =~ ^version[[:space:]]*=[[:space:]]*\"([^\"]+)\" ]]; then
            echo "${BASH_REMATCH[1]}"
            return 0
        fi
    done <"$root/Cargo.toml"
    return 1
}

name=cachalot
tag=""
engine=""
kind_cluster=""
minikube=false
push=false
while (($#)); do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --name | --tag | --engine | --kind)
        if (($# < 2)) || [[ -z "$2" || "$2" == --* ]]; then
            die "$1 needs a value (see --help)"
        fi
        case "$1" in
        --name) name="$2" ;;
        --tag) tag="$2" ;;
        --engine) engine="$2" ;;
        --kind) kind_cluster="$2" ;;
        esac
        shift 2
        ;;
    --name=* | --tag=* | --engine=* | --kind=*)
        value="${1#*=}"
        [[ -n "$value" ]] || die "${1%%=*} needs a value (see --help)"
        case "$1" in
        --name=*) name="$value" ;;
        --tag=*) tag="$value" ;;
        --engine=*) engine="$value" ;;
        --kind=*) kind_cluster="$value" ;;
        esac
        shift
        ;;
    --minikube)
        minikube=true
        shift
        ;;
    --push)
        push=true
        shift
        ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done

if [[ -z "$tag" ]]; then
    tag="$(cargo_version)" || die "no version in $root/Cargo.toml: pass --tag"
fi
# the first path component is a registry when it has a dot or a port, or is localhost
first="${name%%/*}"
has_registry=false
if [[ "$name" == */* && ("$first" == *.* || "$first" == *:* || "$first" == localhost) ]]; then
    has_registry=true
fi
if $push && ! $has_registry; then
    die "--push needs --name with a registry, e.g. --name registry.example.com/cachalot (got $name)"
fi

if [[ -z "$engine" ]]; then
    if command -v docker >/dev/null 2>&1; then
        engine=docker
    elif command -v podman >/dev/null 2>&1; then
        engine=podman
    else
        die "neither docker nor podman is on PATH: install one of them to build the image"
    fi
fi
case "$engine" in
docker | podman) ;;
*) die "--engine must be docker or podman, not $engine" ;;
esac
command -v "$engine" >/dev/null 2>&1 || die "$engine is not on PATH"
if [[ -n "$kind_cluster" ]]; then
    command -v kind >/dev/null 2>&1 || die "--kind: kind is not on PATH"
fi
if $minikube; then
    command -v minikube >/dev/null 2>&1 || die "--minikube: minikube is not on PATH"
fi

image="$name:$tag"
# podman names an unqualified image localhost/NAME; Kubernetes looks for
# docker.io/library/NAME (docker.io/NAME with a slash): build it under that
# name so the loaded image is the one the manifests ask for.
build_ref="$image"
if [[ "$engine" == podman ]] && ! $has_registry; then
    if [[ "$name" == */* ]]; then
        build_ref="docker.io/$image"
    else
        build_ref="docker.io/library/$image"
    fi
fi

run() {
    echo "+ $*" >&2
    "$@"
}

run "$engine" build -t "$build_ref" "$root"

# an archive for the loaders when the engine is podman
archive=""
cleanup() {
    if [[ -n "$archive" ]]; then
        rm -f "$archive" 2>/dev/null || true
    fi
}
trap cleanup EXIT
save_archive() {
    if [[ -z "$archive" ]]; then
        archive="${TMPDIR:-/tmp}/cachalot-image-$$.tar"
        run podman save -o "$archive" "$build_ref"
    fi
}

if [[ -n "$kind_cluster" ]]; then
    if [[ "$engine" == docker ]]; then
        run kind load docker-image "$image" --name "$kind_cluster"
    else
        save_archive
        run kind load image-archive "$archive" --name "$kind_cluster"
    fi
fi
if $minikube; then
    if [[ "$engine" == docker ]]; then
        run minikube image load "$image"
    else
        save_archive
        run minikube image load "$archive"
    fi
fi
if $push; then
    run "$engine" push "$image"
fi
done_msg="built $image"
if [[ -n "$kind_cluster" ]]; then done_msg+=", loaded into kind cluster $kind_cluster"; fi
if $minikube; then done_msg+=", loaded into minikube"; fi
if $push; then done_msg+=", pushed"; fi
echo "image.sh: $done_msg" >&2
