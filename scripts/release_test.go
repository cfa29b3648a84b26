package scripts

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReleaseBuildsReproducibleStaticArchives runs scripts/release.sh
// twice: the archives hold what they promise, the amd64 binary reports its
// version, both binaries are static for their architecture, every time
// stamp is the commit's, and the second run's bytes equal the first's.
func TestReleaseBuildsReproducibleStaticArchives(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-compiles pgpilot twice")
	}
	const version = "9.9.9-test"
	release := func(out string) string {
		t.Helper()
		cmd := exec.Command("./release.sh", version)
		cmd.Env = append(os.Environ(), "OUT_DIR="+out)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.Output()
		require.NoError(t, err, "release.sh: %s%s", stdout, stderr.String())
		lines := strings.Split(strings.TrimSpace(string(stdout)), "\n")
		require.Equal(t, out, lines[len(lines)-1], "release.sh prints the output directory last")
		sums, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
		require.NoError(t, err)
		return string(sums)
	}
	out := t.TempDir()
	sums := release(out)

	commitTime := time.Unix(gitInt(t, "log", "-1", "--format=%ct"), 0).UTC()
	head := git(t, "rev-parse", "HEAD")

	// SHA256SUMS lists both archives with their real digests.
	names := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(sums), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		require.True(t, ok, "%q", line)
		names[name] = sum
		data, err := os.ReadFile(filepath.Join(out, name))
		require.NoError(t, err)
		digest := sha256.Sum256(data)
		assert.Equal(t, hex.EncodeToString(digest[:]), sum, name)
	}
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	require.Len(t, names, len(want))

	for arch, machine := range want {
		base := fmt.Sprintf("pgpilot-%s-linux-%s", version, arch)
		require.Contains(t, names, base+".tar.gz")
		files := readArchive(t, filepath.Join(out, base+".tar.gz"), commitTime)
		var got []string
		for name := range files {
			got = append(got, name)
		}
		sort.Strings(got)
		sources := map[string]string{"README.md": "../README.md", "CHANGELOG.md": "../CHANGELOG.md", "mapping.example.yaml": "../mapping.example.yaml",
			"pgpilot.service": "../deploy/systemd/pgpilot.service", "pgpilot.yaml": "../deploy/systemd/pgpilot.yaml"}
		// The README links into docs/: every page goes along.
		pages, err := filepath.Glob("../docs/*.md")
		require.NoError(t, err)
		require.NotEmpty(t, pages)
		want := []string{base + "/", base + "/docs/", base + "/pgpilot"}
		for _, p := range pages {
			sources["docs/"+filepath.Base(p)] = p
		}
		for name := range sources {
			want = append(want, base+"/"+name)
		}
		sort.Strings(want)
		assert.Equal(t, want, got, arch)
		for name, src := range sources {
			data, err := os.ReadFile(src)
			require.NoError(t, err)
			assert.Equal(t, string(data), string(files[base+"/"+name]), "%s in the %s archive", name, arch)
		}

		bin := filepath.Join(t.TempDir(), "pgpilot")
		require.NoError(t, os.WriteFile(bin, files[base+"/pgpilot"], 0o755))
		f, err := elf.Open(bin)
		require.NoError(t, err)
		assert.Equal(t, machine, f.Machine, "%s binary", arch)
		for _, p := range f.Progs {
			assert.NotEqual(t, elf.PT_INTERP, p.Type, "%s binary is static: no dynamic loader", arch)
		}
		f.Close()

		if arch == "amd64" {
			out, err := exec.Command(bin, "version").CombinedOutput()
			require.NoError(t, err, "%s", out)
			lines := strings.Split(string(out), "\n")
			assert.Equal(t, "pgpilot "+version, lines[0])
			assert.Regexp(t, "^commit:  "+head+"(-dirty)?$", lines[1])
			assert.Equal(t, "built:   "+commitTime.Format(time.RFC3339), lines[2], "the commit's time, not the clock's")
			assert.Regexp(t, `^go:      go1\.\d+(\.\d+)? linux/amd64$`, lines[3])
		}
	}

	assert.Equal(t, sums, release(t.TempDir()), "a second build makes the same bytes")
}

// readArchive reads a .tar.gz that must have been made reproducibly: no
// name or time in the gzip header, owner and group 0, mtime the commit's.
func readArchive(t *testing.T, path string, mtime time.Time) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	require.NoError(t, err)
	assert.Empty(t, zr.Name, "gzip -n: no file name in the header")
	assert.True(t, zr.ModTime.IsZero(), "gzip -n: no time in the header")
	files := map[string][]byte{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		assert.Equal(t, 0, h.Uid, h.Name)
		assert.Equal(t, 0, h.Gid, h.Name)
		assert.Empty(t, h.Uname+h.Gname, "%s: numeric owner only", h.Name)
		assert.True(t, h.ModTime.Equal(mtime), "%s: mtime %s, want the commit's %s", h.Name, h.ModTime, mtime)
		data, err := io.ReadAll(tr)
		require.NoError(t, err)
		files[h.Name] = data
	}
	return files
}

func git(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("git", args...).Output()
	require.NoError(t, err, "git %v", args)
	return strings.TrimSpace(string(out))
}

func gitInt(t *testing.T, args ...string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(git(t, args...), 10, 64)
	require.NoError(t, err)
	return n
}
