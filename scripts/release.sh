#!/usr/bin/env bash
# Builds the release artefacts of pgpilot VERSION:
#
#   ./scripts/release.sh VERSION      e.g. ./scripts/release.sh 1.2.0
#
# into dist/VERSION/ ($OUT_DIR overrides): for linux/amd64 and linux/arm64
# a pgpilot-VERSION-linux-ARCH.tar.gz holding pgpilot-VERSION-linux-ARCH/
# with the static binary (version stamped, scripts/build.sh),
# mapping.example.yaml, pgpilot.service and the pgpilot.yaml it reads
# (deploy/systemd/), README.md, CHANGELOG.md and docs/; and SHA256SUMS
# over the archives.
# Prints the output directory on the last line.
#
# Reproducible: the same commit gives the same bytes on any machine with
# the same Go: -trimpath and -buildvcs=false, and every time stamped, in
# the binary and in the archives, is the commit's ($SOURCE_DATE_EPOCH
# overrides); tar sorts names and records owner 0, group 0 and fixed
# modes; gzip -n stores no name or time.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fail() { printf 'release: error: %s\n' "$*" >&2; exit 1; }
[ $# -eq 1 ] || { printf 'usage: %s VERSION\n' "$0" >&2; exit 2; }
version="$1"
[[ "$version" =~ ^[0-9A-Za-z][0-9A-Za-z._+-]*$ ]] || fail "version \"$version\": letters, digits and . _ + - only (e.g. 1.2.0)"
cd "$repo_root"
command -v go >/dev/null 2>&1 || export PATH="/usr/local/go/bin:$PATH"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null)" || fail "not a git checkout: set SOURCE_DATE_EPOCH"
fi
export SOURCE_DATE_EPOCH
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
  printf 'release: warning: the working tree has uncommitted changes: these archives are not what the commit builds\n' >&2
fi

out="${OUT_DIR:-$repo_root/dist/$version}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

archives=()
for arch in amd64 arm64; do
  name="pgpilot-$version-linux-$arch"
  dir="$stage/$name"
  mkdir -p "$dir"
  GOOS=linux GOARCH="$arch" ./scripts/build.sh "$dir/pgpilot" "$version"
  cp mapping.example.yaml README.md CHANGELOG.md deploy/systemd/pgpilot.service deploy/systemd/pgpilot.yaml "$dir/"
  # The README links into docs/: the pages go along, under the same names.
  mkdir -p "$dir/docs"
  cp docs/*.md "$dir/docs/"
  chmod 0755 "$dir" "$dir/pgpilot" "$dir/docs"
  chmod 0644 "$dir/mapping.example.yaml" "$dir/README.md" "$dir/CHANGELOG.md" "$dir/pgpilot.service" "$dir/pgpilot.yaml" "$dir"/docs/*.md
  tar --create --format=gnu --sort=name --mtime="@$SOURCE_DATE_EPOCH" \
    --owner=0 --group=0 --numeric-owner --directory="$stage" "$name" |
    gzip -9 -n >"$out/$name.tar.gz"
  archives+=("$name.tar.gz")
  printf 'release: %s/%s.tar.gz (%s)\n' "$out" "$name" "$(du -h "$out/$name.tar.gz" | cut -f1)" >&2
done
(cd "$out" && sha256sum "${archives[@]}" >SHA256SUMS)
sed 's/^/release: /' "$out/SHA256SUMS" >&2
printf '%s\n' "$out"
