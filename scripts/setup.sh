#!/usr/bin/env bash
# Installs what pgpilot's build and tests need on Debian 12: PostgreSQL 15
# (the tests start throw-away servers from its binaries) and the Go module
# dependencies. Idempotent: when everything is present it only checks.
# Run as root (CI) or as a user with sudo.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pg_bin=/usr/lib/postgresql/15/bin

step() { printf 'setup: %s\n' "$*"; }
fail() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || fail "not root and sudo is missing; run this script as root"
  sudo_cmd=(sudo)
fi

if [ -x "$pg_bin/postgres" ]; then
  step "postgresql-15: present ($pg_bin)"
else
  step "postgresql-15: installing with apt-get"
  # The package may warn that it cannot start its default cluster (no init
  # system in a container): harmless, the tests start their own servers.
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends postgresql-15 postgresql-client-15
  [ -x "$pg_bin/postgres" ] || fail "postgresql-15 installed but $pg_bin/postgres is missing"
fi

# Postgres refuses to run as root; the test harness runs it as this user.
if id -u postgres >/dev/null 2>&1; then
  step "OS user postgres: present"
else
  step "OS user postgres: creating (system user)"
  "${sudo_cmd[@]}" useradd --system --user-group --home-dir /var/lib/postgresql \
    --shell /bin/bash --comment "PostgreSQL administrator" postgres
fi

# Postgres 17 for the standby tests (Debian 12 has 15); pinned so every
# machine tests against the same build.
"$repo_root/scripts/fetch-postgres.sh" 17.10.0-beta.17 >/dev/null
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
step "go modules: downloaded"
step "done"
