#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, then
# go vet and go test -race over every package. Tests start their own
# throw-away Postgres servers and Userpilot stand-ins; nothing else is needed.
# Extra arguments go to go test (e.g. -run TestKill -v).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
command -v go >/dev/null 2>&1 || export PATH="/usr/local/go/bin:$PATH"

echo "== go vet ./..."
go vet ./...
echo "== go test -race ./..."
go test -race -count=1 -timeout 20m "$@" ./...
