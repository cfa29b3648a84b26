#!/usr/bin/env bash
# Builds one static pgpilot binary with its version stamped, as the image
# (scripts/image.sh) and the release archives (scripts/release.sh) ship it:
#
#   GOOS=linux GOARCH=arm64 ./scripts/build.sh OUT [VERSION]
#
# GOOS and GOARCH default to the host's. VERSION defaults to
# `git describe --tags --always --dirty`.
#
# Static: CGO_ENABLED=0, so it runs on an empty image and on any Linux;
# Go's own resolver and Mozilla's roots compiled in (roots.go) replace what
# libc and the host would give. Reproducible: -trimpath, -buildvcs=false,
# and the build date stamped is the commit's time (or $SOURCE_DATE_EPOCH),
# never the clock's, so the same commit builds the same bytes.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fail() { printf 'build: error: %s\n' "$*" >&2; exit 1; }
[ $# -ge 1 ] && [ $# -le 2 ] || { printf 'usage: %s OUT [VERSION]\n' "$0" >&2; exit 2; }
out="$1"
cd "$repo_root"
command -v go >/dev/null 2>&1 || export PATH="/usr/local/go/bin:$PATH"

in_git=false
if git rev-parse --git-dir >/dev/null 2>&1; then in_git=true; fi
version="${2:-}"
if [ -z "$version" ]; then
  if $in_git; then version="$(git describe --tags --always --dirty)"; else version=dev; fi
fi
commit=unknown
epoch="${SOURCE_DATE_EPOCH:-}"
if $in_git; then
  commit="$(git rev-parse HEAD)"
  # Uncommitted changes: this binary is not what the commit builds.
  [ -z "$(git status --porcelain)" ] || commit="$commit-dirty"
  [ -n "$epoch" ] || epoch="$(git log -1 --format=%ct)"
fi
[ -n "$epoch" ] || epoch="$(date +%s)" # neither git nor SOURCE_DATE_EPOCH: not reproducible
date="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"

CGO_ENABLED=0 go build -trimpath -buildvcs=false \
  -ldflags "-s -w -X main.version=$version -X main.commit=$commit -X main.buildDate=$date" \
  -o "$out" .
printf 'build: %s (%s/%s, version %s, commit %s, %s)\n' "$out" \
  "$(go env GOOS)" "$(go env GOARCH)" "$version" "$commit" "$date" >&2
