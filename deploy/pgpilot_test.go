package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// repoRoot is the pgpilot repository, this module's parent.
const repoRoot = ".."

var binary struct {
	sync.Once
	dir, path string
	err       error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binary.dir != "" {
		os.RemoveAll(binary.dir)
	}
	os.Exit(code)
}

// pgpilotBinary builds pgpilot from the repository, with its own go.mod
// (not this module's), once per test run.
func pgpilotBinary(t *testing.T) string {
	t.Helper()
	binary.Do(func() {
		binary.dir, binary.err = os.MkdirTemp("", "pgpilot-deploy-")
		if binary.err != nil {
			return
		}
		binary.path = filepath.Join(binary.dir, "pgpilot")
		cmd := exec.Command("go", "build", "-o", binary.path, ".")
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			binary.err = fmt.Errorf("build pgpilot: %w\n%s", err, out)
		}
	})
	require.NoError(t, binary.err)
	return binary.path
}

// runFlags are `pgpilot run`'s flags as the binary itself lists them
// (`pgpilot run -h`): name → the kind of value ("" for a boolean).
func runFlags(t *testing.T) map[string]string {
	t.Helper()
	out, _ := exec.Command(pgpilotBinary(t), "run", "-h").CombinedOutput() // exits 2 after the help
	flags := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z][a-z-]*)(?: (\w+))?`).FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = m[2]
	}
	require.Contains(t, flags, "config", "pgpilot run -h:\n%s", out)
	return flags
}

// runArgs checks args (after the binary) against pgpilot's real flags and
// returns the flag values: `run` first, every flag known, each with its
// value.
func runArgs(t *testing.T, args []string) map[string]string {
	t.Helper()
	require.NotEmpty(t, args)
	require.Equal(t, "run", args[0], "the daemon is `pgpilot run`: %v", args)
	flags := runFlags(t)
	values := map[string]string{}
	for i := 1; i < len(args); i++ {
		a := args[i]
		require.True(t, strings.HasPrefix(a, "-"), "unexpected argument %q in %v", a, args)
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		kind, ok := flags[name]
		require.True(t, ok, "pgpilot run has no flag %q (it has %v)", a, flags)
		if kind != "" && !hasValue {
			i++
			require.Less(t, i, len(args), "flag %s needs a value", a)
			value = args[i]
		}
		if kind == "duration" {
			_, err := time.ParseDuration(value)
			require.NoError(t, err, "%s", a)
		}
		values[name] = value
	}
	return values
}

// shutdownGrace is --shutdown-grace as given, or pgpilot's default.
func shutdownGrace(t *testing.T, values map[string]string) time.Duration {
	t.Helper()
	v, ok := values["shutdown-grace"]
	if !ok {
		return 10 * time.Second
	}
	d, err := time.ParseDuration(v)
	require.NoError(t, err)
	return d
}

// afterGrace is how long pgpilot may still take once the grace is over:
// its HTTP server gets up to 5 s to finish requests (metrics.Server.Close).
const afterGrace = 5 * time.Second

// envRefs are the ${VAR} names a config refers to.
func envRefs(config string) []string {
	var names []string
	seen := map[string]bool{}
	for _, m := range regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`).FindAllStringSubmatch(config, -1) {
		if !seen[m[1]] {
			seen[m[1]] = true
			names = append(names, m[1])
		}
	}
	return names
}

// imageUser is the USER the Dockerfile runs pgpilot as.
func imageUser(t *testing.T) int64 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^USER (\d+):(\d+)$`).FindStringSubmatch(string(data))
	require.NotNil(t, m, "the Dockerfile sets USER uid:gid")
	var uid int64
	_, err = fmt.Sscan(m[1], &uid)
	require.NoError(t, err)
	return uid
}

// tool finds a program the tests need: on PATH, or where scripts/setup.sh
// puts it (.cache/bin). Missing, it fails in CI (setup installs it there)
// and skips elsewhere, saying how to get it.
func tool(t *testing.T, name, install string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if p := filepath.Join(repoRoot, ".cache", "bin", name); isExecutable(p) {
		abs, err := filepath.Abs(p)
		require.NoError(t, err)
		return abs
	}
	msg := fmt.Sprintf("%s is not installed: run ./scripts/setup.sh test (%s)", name, install)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// readme is the repository's README.md.
func readme(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	require.NoError(t, err)
	return string(data)
}

// markdownAnchors are the anchors GitHub gives the headings of the
// repository's markdown file at path.
func markdownAnchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, path))
	require.NoError(t, err)
	anchors := map[string]bool{}
	inCode := false
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "```") {
			inCode = !inCode
		}
		if inCode || !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
				b.WriteRune(r)
			}
		}
		anchors[b.String()] = true
	}
	return anchors
}
