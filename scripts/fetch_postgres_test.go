// Package scripts tests the shell scripts in this folder as a user runs
// them.
package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestFetchPostgresShowsNpmsOwnError puts an npm that fails on PATH: the
// script must pass on what npm said, not point at a message it silenced.
func TestFetchPostgresShowsNpmsOwnError(t *testing.T) {
	bin := t.TempDir()
	npm := "#!/bin/sh\necho \"npm error code E418 (fake npm for $1)\" >&2\necho 'npm error I am a teapot' >&2\nexit 1\n"
	require.NoError(t, os.WriteFile(filepath.Join(bin, "npm"), []byte(npm), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(bin, "node"), []byte("#!/bin/sh\nexit 0\n"), 0o755))

	for _, tc := range []struct{ arg, command string }{
		{"16.99.0-never.1", "pack"}, // an exact version: straight to npm pack
		{"19", "view"},              // a major: npm view lists the versions first
	} {
		cmd := exec.Command("./fetch-postgres.sh", tc.arg)
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		require.Error(t, err, "%s", out)
		assert.Contains(t, string(out), "fetch-postgres: npm: npm error code E418 (fake npm for "+tc.command+")", tc.arg)
		assert.Contains(t, string(out), "fetch-postgres: npm: npm error I am a teapot", tc.arg)
		assert.Contains(t, string(out), "npm's message above", tc.arg)
	}
}
