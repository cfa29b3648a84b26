#!/usr/bin/env bash
# Builds the pgpilot container image from the Dockerfile at the repository
# root: first a static binary (scripts/build.sh), then an image FROM scratch
# around it, with docker or podman, whichever is installed and works
# (CONTAINER_ENGINE=docker or podman chooses). Tags pgpilot:VERSION and
# pgpilot:latest and prints the image reference on the last line of
# stdout; everything else goes to stderr.
#
#   ./scripts/image.sh [VERSION]    VERSION defaults to git describe --tags --always --dirty
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fail() { printf 'image: error: %s\n' "$*" >&2; exit 1; }
cd "$repo_root"

engine="${CONTAINER_ENGINE:-}"
if [ -z "$engine" ]; then
  # A docker CLI without a daemon is common (a remote context, a stopped
  # service): only a docker that answers counts.
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    engine=docker
  elif command -v podman >/dev/null 2>&1; then
    engine=podman
  else
    fail "neither a working docker nor podman found; install podman (apt-get install podman runc, or ./scripts/setup.sh test)"
  fi
fi
command -v "$engine" >/dev/null 2>&1 || fail "CONTAINER_ENGINE=$engine is not installed"

version="${1:-}"
if [ -z "$version" ]; then
  if git rev-parse --git-dir >/dev/null 2>&1; then version="$(git describe --tags --always --dirty)"; else version=dev; fi
fi
# An image tag is at most 128 letters, digits, _ . and -, not starting with . or -.
[[ "$version" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] ||
  fail "version \"$version\" cannot be an image tag (letters, digits, _ . -; e.g. 1.2.0)"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
GOOS=linux ./scripts/build.sh "$ctx/pgpilot" "$version"
# The state directory, empty: the Dockerfile copies it in owned by the
# image's user, so a fresh named volume mounted there is writable by it.
mkdir "$ctx/state"

revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
created="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"
printf 'image: building pgpilot:%s with %s\n' "$version" "$engine" >&2
# --no-cache: the layers are one binary and an empty folder, so caching
# saves nothing, and buildah 1.28 (Debian 12's podman) reuses a cached
# COPY layer even when its --chown changed.
"$engine" build --no-cache --file "$repo_root/Dockerfile" \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "CREATED=$created" \
  --tag "pgpilot:$version" --tag pgpilot:latest "$ctx" >&2
printf 'image: pgpilot:%s, %s\n' "$version" \
  "$("$engine" image inspect --format '{{.Size}}' "pgpilot:$version" | awk '{printf "%.1f MB", $1/1e6}')" >&2
printf 'pgpilot:%s\n' "$version"
