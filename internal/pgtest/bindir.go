package pgtest

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// fetchedCacheDirs are where scripts/fetch-postgres.sh installs a major
// version, relative to the repository (first) or absolute (when the
// repository is not traversable by the "postgres" OS user).
const (
	repoCacheDir   = ".cache/postgres"
	sharedCacheDir = "/var/cache/pgpilot/postgres"
)

// majorBinDirEnv names the variable that points Options.Major = major at a
// directory of binaries, e.g. PGPILOT_PG17_BIN.
func majorBinDirEnv(major int) string {
	return "PGPILOT_PG" + strconv.Itoa(major) + "_BIN"
}

// findBinDir picks the directory holding initdb and postgres for opts (see
// Options.Major) and checks the server binary is there and, when the
// servers run as "postgres", reachable by that user.
func findBinDir(opts Options, owner *osOwner) (string, error) {
	major := opts.Major
	switch {
	case opts.BinDir != "":
		return checkBinDir(opts.BinDir, owner, BinDirEnv)
	case major == 0:
		return checkBinDir(cmp.Or(os.Getenv(BinDirEnv), DefaultBinDir), owner, BinDirEnv)
	case major == 15:
		return checkBinDir(cmp.Or(os.Getenv(majorBinDirEnv(15)), DefaultBinDir), owner, majorBinDirEnv(15))
	case major < 15:
		return "", fmt.Errorf("pgtest: Options.Major %d is not supported: pgpilot is tested on Postgres 15 and later", major)
	}
	env := majorBinDirEnv(major)
	if dir := os.Getenv(env); dir != "" {
		return checkBinDir(dir, owner, env)
	}
	var candidates []string
	if root, ok := moduleRoot(); ok {
		candidates = append(candidates, filepath.Join(root, repoCacheDir, strconv.Itoa(major), "bin"))
	}
	candidates = append(candidates,
		filepath.Join(sharedCacheDir, strconv.Itoa(major), "bin"),
		filepath.Join("/usr/lib/postgresql", strconv.Itoa(major), "bin"))
	var looked []string
	for _, dir := range candidates {
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err != nil {
			looked = append(looked, dir)
			continue
		}
		if owner != nil && !traversableByOthers(dir) {
			looked = append(looked, dir+" (not reachable by OS user "+superuser+")")
			continue
		}
		return dir, nil
	}
	return "", fmt.Errorf("pgtest: postgres binary not found for Postgres %d (looked in %s); run scripts/fetch-postgres.sh %d "+
		"(scripts/setup.sh installs 17), or set $%s to the directory holding initdb and postgres",
		major, strings.Join(looked, ", "), major, env)
}

func checkBinDir(dir string, owner *osOwner, env string) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, "postgres")); err != nil {
		return "", fmt.Errorf("pgtest: postgres binary not found in %s (%w); run scripts/setup.sh or set $%s to the directory holding initdb and postgres", dir, err, env)
	}
	if owner != nil && !traversableByOthers(dir) {
		return "", fmt.Errorf("pgtest: %s is not reachable by OS user %q, who runs the servers when the tests run as root; "+
			"make every directory above it traversable (chmod o+x) or install the binaries elsewhere", dir, superuser)
	}
	return dir, nil
}

// moduleRoot finds the repository from the working directory (a package
// directory under go test, the repository root for the demo).
func moduleRoot() (string, bool) {
	dir, err := os.Getwd()
	if err != nil {
		return "", false
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}
