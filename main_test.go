package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/internal/fix"
)

func TestExitCodeSaysWhoseMistakeItWas(t *testing.T) {
	runtime := errors.New("connection refused")
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"success", nil, exitOK},
		{"a runtime failure", runtime, exitFailure},
		{"a runtime failure with a fix", fix.With(runtime, "start Postgres"), exitFailure},
		{"a usage error", usageError{errors.New("unexpected argument")}, exitUsage},
		{"a wrapped usage error", fmt.Errorf("load: %w", usageError{runtime}), exitUsage},
		{"a usage error with a fix", fix.With(usageError{runtime}, "pass --config"), exitUsage},
		{"the daemon's configuration problem", fmt.Errorf("%w: slot belongs to another database", daemon.ErrConfig), exitUsage},
		{"a shown usage error", shownError{usageError{flag.ErrHelp}}, exitUsage},
		{"a shown configuration problem", shownError{fmt.Errorf("start: %w", daemon.ErrConfig)}, exitUsage},
		{"a shown runtime failure", shownError{runtime}, exitFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, exitCode(tt.err))
		})
	}
}

func TestReportPrintsTheFixOnALineOfItsOwn(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
		code int
	}{
		{"no error", nil, "", exitOK},
		{"an error", errors.New("connection refused"), "pgpilot status: connection refused\n", exitFailure},
		{"an error with its fix", fmt.Errorf("drop: %w", fix.With(errors.New(`replication slot "s" is in use (pid 7)`), "stop pgpilot first")),
			"pgpilot status: drop: replication slot \"s\" is in use (pid 7)\n  fix: stop pgpilot first\n", exitFailure},
		{"a usage error with its fix", usageError{fix.With(errors.New("no such file"), "pass --config")},
			"pgpilot status: no such file\n  fix: pass --config\n", exitUsage},
		{"an error shown already", shownError{errors.New("3 check(s) failed")}, "", exitFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			assert.Equal(t, tt.code, report(&stderr, "status", tt.err))
			assert.Equal(t, tt.want, stderr.String())
		})
	}
}

// goodConfig writes a valid config file, pointing at a Postgres nobody
// listens on, and returns its path.
func goodConfig(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "pgpilot.yaml")
	require.NoError(t, os.WriteFile(path, []byte(`postgres:
  url: postgres://pgpilot@127.0.0.1:1/app
userpilot:
  api_key: cli-test-key-3e8a
state:
  dir: `+filepath.Join(dir, "state")+`
companies:
  table: companies
  company_id: id
  metadata:
    name: name
`), 0o600))
	return path
}

// TestCommandLineMistakesExitTwoBeforeTouchingPostgres runs the command
// line in-process: each mistake is printed once, as `pgpilot CMD: ...`
// with any fix on the line below, and exits 2 (no Postgres listens at the
// config's URL, so reaching it would fail with exit 1).
func TestCommandLineMistakesExitTwoBeforeTouchingPostgres(t *testing.T) {
	good := goodConfig(t)
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	data, err := os.ReadFile(good)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(bad, []byte(strings.Replace(string(data), "userpilot:\n", "  slot: PgPilot-1\n  bogus: 1\nuserpilot:\n", 1)), 0o600))

	tests := []struct {
		name   string
		args   []string
		stderr string // all of it, or (ending in …) how it starts
	}{
		{"no command", nil, "pgpilot keeps Userpilot company profiles in step with a Postgres table.\n…"},
		{"unknown command", []string{"sync"}, "pgpilot: unknown command \"sync\"\n\n…"},
		{"no --config", []string{"run"}, "pgpilot run: --config FILE is required (see mapping.example.yaml)\n"},
		{"an extra argument", []string{"status", "--config", good, "now"}, "pgpilot status: unexpected argument \"now\"\n"},
		{"an unknown flag, told once by the flag package", []string{"teardown", "--force"}, "flag provided but not defined: -force\nUsage of pgpilot teardown:\n…"},
		{"a config file that is not there", []string{"check", "--config", missing},
			"pgpilot check: invalid configuration:\nread config file: open " + missing + ": no such file or directory\n" +
				"  fix: pass --config with the path of your mapping file (mapping.example.yaml shows its shape)\n"},
		{"a bad config file, each fix under its problem", []string{"preview", "--config", bad},
			"pgpilot preview: invalid configuration:\n" +
				bad + ":3: postgres.slot: \"PgPilot-1\" is not a valid replication slot name\n" +
				"  fix: use 1 to 63 lower-case letters, digits and underscores, e.g. slot: pgpilot\n" +
				bad + ":4: postgres.bogus: unknown key \"bogus\"; allowed: url, slot, publication, failover_slot\n"},
		{"a bad log level", []string{"run", "--config", good, "--log-level", "loud"}, "pgpilot run: --log-level \"loud\": want debug, info, warn or error\n"},
		{"two row selections", []string{"resync", "--config", good, "--company", "1", "--where", "true"}, "pgpilot resync: give --company or --where, not both\n"},
		{"a re-sync before the first run", []string{"resync", "--config", good},
			"pgpilot resync: " + filepath.Join(filepath.Dir(good), "state") + " has no checkpoint: pgpilot has not run yet, and its first run sends every row anyway\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := cli(context.Background(), tt.args, strings.NewReader(""), &stdout, &stderr)
			assert.Equal(t, exitUsage, code, stderr.String())
			if prefix, ok := strings.CutSuffix(tt.stderr, "…"); ok {
				assert.True(t, strings.HasPrefix(stderr.String(), prefix), "stderr:\n%s", stderr.String())
				first, _, _ := strings.Cut(prefix, "\n")
				assert.Equal(t, 1, strings.Count(stderr.String(), first), "told once:\n%s", stderr.String())
			} else {
				assert.Equal(t, tt.stderr, stderr.String())
			}
			assert.NotContains(t, stderr.String()+stdout.String(), "cli-test-key-3e8a")
		})
	}
}

func TestHelpGoesToStdoutAndSucceeds(t *testing.T) {
	var stdout, stderr bytes.Buffer
	assert.Equal(t, exitOK, cli(context.Background(), []string{"help"}, nil, &stdout, &stderr))
	assert.Equal(t, usage, stdout.String())
	assert.Empty(t, stderr.String())
}

// TestHelpExitsZeroOnEveryCommand: -h asks for the usage, which is no
// mistake: every command (and every deadletters action) prints it and
// exits 0, while an unknown flag is still one (exit 2).
func TestHelpExitsZeroOnEveryCommand(t *testing.T) {
	var invocations [][]string
	for name := range commands {
		invocations = append(invocations, []string{name, "-h"}, []string{name, "--help"})
	}
	for _, action := range []string{"list", "replay", "drop"} {
		invocations = append(invocations, []string{"deadletters", action, "-h"})
	}
	for _, args := range invocations {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := cli(context.Background(), args, strings.NewReader(""), &stdout, &stderr)
			assert.Equal(t, exitOK, code, "stderr: %s", stderr.String())
			assert.Contains(t, strings.ToLower(stdout.String()+stderr.String()), "usage", "prints its usage")
			assert.NotContains(t, stderr.String(), "pgpilot "+args[0]+": ", "reports no error")
		})
	}
	var stdout, stderr bytes.Buffer
	assert.Equal(t, exitUsage, cli(context.Background(), []string{"run", "--no-such-flag"}, strings.NewReader(""), &stdout, &stderr))
}
