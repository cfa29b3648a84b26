package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// Stamped at build time by scripts/image.sh and scripts/release.sh
// (scripts/build.sh): -ldflags "-X main.version=1.2.0 -X main.commit=<sha>
// -X main.buildDate=2025-06-01T10:00:00Z". A plain `go build` leaves them
// empty, and buildInfo falls back to what the Go toolchain records.
var (
	version   string
	commit    string
	buildDate string
)

// build describes the running binary.
type build struct {
	Version   string // "dev" when neither stamped nor a module version
	Commit    string // "unknown" when neither stamped nor recorded by go build
	Modified  bool   // built from a working tree with uncommitted changes
	BuildDate string // RFC 3339, UTC; the commit's time unless stamped
	GoVersion string
	Platform  string // GOOS/GOARCH
}

// buildInfo reads the stamped values and fills what is missing from
// debug.ReadBuildInfo: the module version (set by `go install …@v1.2.0`),
// and vcs.revision, vcs.time and vcs.modified (set by `go build` in a git
// checkout unless -buildvcs=false).
func buildInfo() build {
	b := build{Version: version, Commit: commit, BuildDate: buildDate,
		GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if info, ok := debug.ReadBuildInfo(); ok {
		b = fillFromBuildInfo(b, info)
	}
	if b.Version == "" {
		b.Version = "dev"
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	if b.BuildDate == "" {
		b.BuildDate = "unknown"
	}
	return b
}

// fillFromBuildInfo fills b's empty fields from what the toolchain
// recorded. A stamped commit is kept along with its own idea of modified
// (the stamping script appends "-dirty").
func fillFromBuildInfo(b build, info *debug.BuildInfo) build {
	if b.Version == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		b.Version = info.Main.Version
	}
	stamped := b.Commit != ""
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			if !stamped {
				b.Commit = s.Value
			}
		case "vcs.time":
			if b.BuildDate == "" {
				b.BuildDate = s.Value
			}
		case "vcs.modified":
			if !stamped {
				b.Modified = s.Value == "true"
			}
		}
	}
	if b.GoVersion == "" {
		b.GoVersion = info.GoVersion
	}
	return b
}

// String is what `pgpilot version` prints.
func (b build) String() string {
	c := b.Commit
	if b.Modified {
		c += " (modified)"
	}
	return fmt.Sprintf("pgpilot %s\ncommit:  %s\nbuilt:   %s\ngo:      %s %s\n", b.Version, c, b.BuildDate, b.GoVersion, b.Platform)
}

func versionCommand(_ context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		if args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
			fmt.Fprintln(stderr, "Usage: pgpilot version (or pgpilot --version)\n\nPrints the version, commit, Go version and build date.")
			return helpShown{}
		}
		return usageError{fmt.Errorf("unexpected argument %q", args[0])}
	}
	fmt.Fprint(stdout, buildInfo())
	return nil
}
