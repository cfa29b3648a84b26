package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestVersionAndDashDashVersionPrintTheStampedValues(t *testing.T) {
	defer func(v, c, d string) { version, commit, buildDate = v, c, d }(version, commit, buildDate)
	version, commit, buildDate = "1.4.0", "0123456789abcdef0123456789abcdef01234567", "2025-06-01T10:00:00Z"
	want := "pgpilot 1.4.0\n" +
		"commit:  0123456789abcdef0123456789abcdef01234567\n" +
		"built:   2025-06-01T10:00:00Z\n" +
		"go:      " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + "\n"
	for _, arg := range []string{"version", "--version"} {
		var stdout, stderr bytes.Buffer
		code := cli(context.Background(), []string{arg}, nil, &stdout, &stderr)
		assert.Equal(t, exitOK, code, arg)
		assert.Equal(t, want, stdout.String(), arg)
		assert.Empty(t, stderr.String(), arg)
	}
}

func TestVersionRefusesArguments(t *testing.T) {
	var stdout, stderr bytes.Buffer
	assert.Equal(t, exitUsage, cli(context.Background(), []string{"version", "--json"}, nil, &stdout, &stderr))
	assert.Contains(t, stderr.String(), `unexpected argument "--json"`)
}

func TestVersionFallsBackToWhatTheToolchainRecorded(t *testing.T) {
	info := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/pgpilot/pgpilot", Version: "(devel)"},
		Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "c144c63aaaabbbbccccddddeeeeffff000011112"},
			{Key: "vcs.time", Value: "2025-05-30T08:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		}}
	b := fillFromBuildInfo(build{}, info)
	assert.Equal(t, "", b.Version, "(devel) is no version")
	assert.Equal(t, "c144c63aaaabbbbccccddddeeeeffff000011112", b.Commit)
	assert.Equal(t, "2025-05-30T08:00:00Z", b.BuildDate)
	assert.True(t, b.Modified)
	assert.Equal(t, "go1.26.8", b.GoVersion)

	info.Main.Version = "v1.2.3" // go install github.com/pgpilot/pgpilot@v1.2.3
	assert.Equal(t, "v1.2.3", fillFromBuildInfo(build{}, info).Version)

	// Stamped values win; a stamped commit carries its own "-dirty".
	b = fillFromBuildInfo(build{Version: "2.0.0", Commit: "feedface", BuildDate: "2025-01-01T00:00:00Z"}, info)
	assert.Equal(t, build{Version: "2.0.0", Commit: "feedface", BuildDate: "2025-01-01T00:00:00Z", GoVersion: "go1.26.8"}, b)
	assert.Contains(t, b.String(), "commit:  feedface\n")
	assert.Contains(t, fillFromBuildInfo(build{}, info).String(), "(modified)")
}

// TestBuiltBinaryReportsItsStampOrItsCommit builds pgpilot twice, as
// scripts/build.sh stamps it and as a plain `go build` in this checkout
// does, and runs `pgpilot version`.
func TestBuiltBinaryReportsItsStampOrItsCommit(t *testing.T) {
	if testing.Short() {
		t.Skip("builds pgpilot")
	}
	dir := t.TempDir()
	stamped := filepath.Join(dir, "stamped")
	build := exec.Command("go", "build", "-o", stamped, "-ldflags",
		"-X main.version=9.8.7 -X main.commit=abc123 -X main.buildDate=2025-02-03T04:05:06Z", ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	out, err = exec.Command(stamped, "--version").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.True(t, strings.HasPrefix(string(out), "pgpilot 9.8.7\ncommit:  abc123\nbuilt:   2025-02-03T04:05:06Z\ngo:      go1."), "%s", out)

	// A plain build: the commit and time are whatever the toolchain
	// recorded (none with -buildvcs=false or outside a git checkout).
	plain := filepath.Join(dir, "plain")
	out, err = exec.Command("go", "build", "-buildvcs=auto", "-o", plain, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	recorded, err := exec.Command("go", "version", "-m", plain).CombinedOutput()
	require.NoError(t, err, "%s", recorded)
	wantVersion, wantCommit, wantTime := "dev", "unknown", "unknown"
	for _, line := range strings.Split(string(recorded), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "mod" && f[2] != "(devel)" {
			wantVersion = f[2] // Go 1.24+ derives a pseudo-version from git
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "build\tvcs.revision="); ok {
			wantCommit = v
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "build\tvcs.time="); ok {
			wantTime = v
		}
	}
	out, err = exec.Command(plain, "version").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.True(t, strings.HasPrefix(string(out), "pgpilot "+wantVersion+"\ncommit:  "+wantCommit), "%s\nrecorded:\n%s", out, recorded)
	assert.Contains(t, string(out), "\nbuilt:   "+wantTime+"\n")
	t.Logf("plain build: %s", strings.ReplaceAll(string(out), "\n", "; "))
}
