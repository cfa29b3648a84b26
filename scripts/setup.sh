#!/usr/bin/env bash
# Installs what pgpilot's demo or test suite needs on Debian 12, and only
# that:
#
#   ./scripts/setup.sh demo   what scripts/demo.sh needs: PostgreSQL 15 (the
#                             demo's throw-away server), the OS user
#                             postgres, Go 1.26+ and the Go modules
#   ./scripts/setup.sh test   what scripts/test.sh needs (the default): the
#                             demo's, and gcc + libc6-dev (go test -race
#                             needs cgo), Postgres 17 (the standby tests;
#                             Node.js and npm fetch it, see
#                             fetch-postgres.sh), podman + runc (the image
#                             test), promtool (the alert rules tests),
#                             systemd-analyze (the unit file test), PgBouncer
#                             (the connection pooler tests), and the
#                             deploy/ module's Go modules
#
# Idempotent: when everything is present it only checks (no network) and
# takes a second or two. Missing Debian packages are installed with one
# apt-get run. Run as root (CI) or as a user with sudo.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pg_bin=/usr/lib/postgresql/15/bin
profile="${1:-test}"

step() { printf 'setup: %s\n' "$*"; }
fail() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

case "$profile" in
  demo | test) ;;
  *) printf 'usage: %s [demo | test]\n' "$0" >&2; exit 2 ;;
esac

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || fail "not root and sudo is missing; run this script as root"
  sudo_cmd=(sudo)
fi
apt_get() {
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"
}

# What is missing, as Debian packages, and why; installed together below.
packages=()
need() { # need WHY PACKAGE...
  local why="$1"
  shift
  local IFS=,
  step "$(printf '%s' "$*" | sed 's/,/, /g'): installing with apt-get ($why)"
  packages+=("$@")
}

if [ -x "$pg_bin/postgres" ]; then
  step "postgresql-15: present ($pg_bin)"
else
  # The package may warn that it cannot start its default cluster (no init
  # system in a container): harmless, the tests start their own servers.
  need "the demo and the tests start throw-away servers from its binaries" postgresql-15 postgresql-client-15
fi

# promtool comes out of Debian's prometheus package without installing the
# package: installing it would also enable and start a Prometheus server on
# :9090 on a developer's machine. Tests find it on PATH or here.
promtool_dir="$repo_root/.cache/bin"
want_promtool=false
if [ "$profile" = test ]; then
  # go test -race needs cgo, and cgo a C compiler and libc headers, which a
  # fresh Debian lacks ("-race requires cgo").
  if command -v gcc >/dev/null 2>&1 && printf 'int main(void){return 0;}\n' |
    gcc -x c -o /dev/null - >/dev/null 2>&1; then
    step "gcc, libc6-dev: present (cgo, for go test -race)"
  else
    need "go test -race needs cgo, and Debian has no C compiler by default" gcc libc6-dev
  fi
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    step "nodejs, npm: present"
  else
    need "scripts/fetch-postgres.sh fetches Postgres 17 with npm, for the standby tests" nodejs npm
  fi
  if command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1; then
    step "podman, runc: present"
  else
    need "the image test builds and runs the pgpilot image" podman runc
  fi
  if command -v promtool >/dev/null 2>&1; then
    step "promtool: present ($(command -v promtool))"
  elif [ -x "$promtool_dir/promtool" ]; then
    step "promtool: present ($promtool_dir/promtool)"
  else
    want_promtool=true
  fi
  if command -v systemd-analyze >/dev/null 2>&1; then
    step "systemd-analyze: present"
  else
    need "the unit file test runs systemd-analyze verify" systemd
  fi
  # The tests start their own PgBouncer on a free port, as the OS user
  # postgres (it refuses root, like the servers). Debian's package also
  # enables a service of its own (localhost:6432, where systemd runs);
  # the tests never use it.
  if command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; then
    step "pgbouncer: present"
  else
    need "the pooler tests put PgBouncer in transaction mode between pgpilot and Postgres" pgbouncer
  fi
fi

if [ "${#packages[@]}" -gt 0 ] || $want_promtool; then
  apt_get update -q
fi
if [ "${#packages[@]}" -gt 0 ]; then
  apt_get install -y -q --no-install-recommends "${packages[@]}"
  [ -x "$pg_bin/postgres" ] || fail "postgresql-15 installed but $pg_bin/postgres is missing"
fi
if $want_promtool; then
  step "promtool: extracting from Debian's prometheus package into $promtool_dir (the package itself is not installed)"
  work="$(mktemp -d)"
  (cd "$work" && apt-get download -q prometheus) || fail "apt-get download prometheus failed (see apt's message above)"
  dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool
  mkdir -p "$promtool_dir"
  if [ ! -f "$repo_root/.cache/.gitignore" ]; then
    printf '# Written by scripts/setup.sh: downloaded binaries, never committed.\n*\n' >"$repo_root/.cache/.gitignore"
  fi
  mv "$work/usr/bin/promtool" "$promtool_dir/promtool"
  rm -rf "$work"
  "$promtool_dir/promtool" --version >/dev/null || fail "$promtool_dir/promtool does not run"
fi

# Postgres refuses to run as root; the test harness runs it as this user.
if id -u postgres >/dev/null 2>&1; then
  step "OS user postgres: present"
else
  step "OS user postgres: creating (system user)"
  "${sudo_cmd[@]}" useradd --system --user-group --home-dir /var/lib/postgresql \
    --shell /bin/bash --comment "PostgreSQL administrator" postgres
fi

if [ "$profile" = test ]; then
  # Postgres 17 for the standby tests (Debian 12 has 15); pinned so every
  # machine tests against the same build.
  "$repo_root/scripts/fetch-postgres.sh" 17.10.0-beta.17 >/dev/null
fi

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 || fail "Go not found (not on PATH, not in /usr/local/go); install Go 1.26+ from https://go.dev/dl/"
go_version="$(go env GOVERSION)" # e.g. go1.26.8
minor="$(printf '%s' "$go_version" | sed -n 's/^go1\.\([0-9][0-9]*\).*/\1/p')"
if [ -z "$minor" ] || [ "$minor" -lt 26 ]; then
  fail "found $go_version at $(command -v go); pgpilot needs Go 1.26+ (https://go.dev/dl/)"
fi
step "go: $go_version"

cd "$repo_root"
go mod download
if [ "$profile" = test ]; then
  (cd deploy && go mod download)
fi
step "go modules: downloaded"
step "done ($profile)"
