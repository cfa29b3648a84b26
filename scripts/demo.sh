#!/usr/bin/env bash
# pgpilot end to end on this machine: installs what is missing (only what
# the demo needs: scripts/setup.sh demo), builds pgpilot, then runs it
# between a throw-away Postgres with sample companies and the local
# Userpilot stand-in, makes a few changes and shows the identify calls
# arriving. Cleans up after itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh demo >/dev/null
command -v go >/dev/null 2>&1 || export PATH="/usr/local/go/bin:$PATH"
go build -o pgpilot .
go run ./cmd/demo --pgpilot ./pgpilot
