#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing
# (scripts/setup.sh test), then go vet and go test -race over every package,
# then the same in deploy/, the Go module that checks the Kubernetes
# manifests, the systemd unit and the alert rules against pgpilot. Tests
# start their own throw-away Postgres servers, Userpilot stand-ins and
# containers; nothing else is needed.
# Extra arguments go to go test (e.g. -run TestKill -v).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh test
command -v go >/dev/null 2>&1 || export PATH="/usr/local/go/bin:$PATH"
# Where setup.sh puts promtool when it has to fetch it.
export PATH="$PATH:$PWD/.cache/bin"

echo "== go vet ./..."
go vet ./...
(cd deploy && echo "== go vet ./... (in deploy/)" && go vet ./...)
echo "== go test -race ./..."
go test -race -count=1 -timeout 20m "$@" ./...
(cd deploy && echo "== go test -race ./... (in deploy/)" && go test -race -count=1 -timeout 10m "$@" ./...)
