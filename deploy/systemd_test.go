package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/config"
)

const (
	unitFile       = "systemd/pgpilot.service"
	unitConfigFile = "systemd/pgpilot.yaml"
)

// unit is a systemd unit file: section → key → values, in order.
type unit map[string]map[string][]string

func readUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			require.True(t, ok, "%s: %q", path, line)
			require.NotEmpty(t, section, "%s: %q outside a section", path, line)
			u[section][k] = append(u[section][k], v)
		}
	}
	require.NoError(t, sc.Err())
	return u
}

// one is the value of a key set once.
func (u unit) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	require.Len(t, v, 1, "[%s] %s= set once", section, key)
	return v[0]
}

func TestSystemdUnitAgreesWithPgpilot(t *testing.T) {
	u := readUnit(t, unitFile)
	svc := func(key string) string { return u.one(t, "Service", key) }

	// Type=notify: pgpilot implements sd_notify (sdnotify.go).
	assert.Equal(t, "notify", svc("Type"))
	exec := strings.Fields(svc("ExecStart"))
	require.NotEmpty(t, exec)
	assert.Equal(t, "/usr/local/bin/pgpilot", exec[0], "where docs/deploy.md installs it")
	args := runArgs(t, exec[1:])
	grace := shutdownGrace(t, args)
	stop, err := time.ParseDuration(svc("TimeoutStopSec"))
	require.NoError(t, err)
	assert.Greater(t, stop, grace+afterGrace, "TimeoutStopSec above --shutdown-grace %s + %s", grace, afterGrace)
	assert.Equal(t, "on-failure", svc("Restart"))
	assert.Equal(t, "2", svc("RestartPreventExitStatus"), "exit 2 is a configuration problem: no restart loop")

	assert.Equal(t, "pgpilot", svc("StateDirectory"))
	assert.Equal(t, "yes", svc("DynamicUser"))
	for key, want := range map[string]string{
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
		"PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
		"ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
		"MemoryDenyWriteExecute": "yes", "CapabilityBoundingSet": "",
	} {
		assert.Equal(t, want, svc(key), "hardening: %s", key)
	}

	// Secrets through LoadCredential=, which the config reads from
	// $CREDENTIALS_DIRECTORY; state.dir is $STATE_DIRECTORY.
	creds := map[string]string{}
	for _, v := range u["Service"]["LoadCredential"] {
		id, src, ok := strings.Cut(v, ":")
		require.True(t, ok, "LoadCredential=ID:PATH, got %q", v)
		creds[id] = src
	}
	require.Contains(t, creds, "userpilot-api-key")
	require.Contains(t, creds, "pgpass")
	assert.NotContains(t, u["Service"], "Environment", "no secret in the unit's environment")

	configPath, ok := args["config"]
	require.True(t, ok, "--config")
	assert.Equal(t, "/etc/pgpilot/pgpilot.yaml", configPath, "the path docs/deploy.md installs %s to", unitConfigFile)
	data, err := os.ReadFile(unitConfigFile)
	require.NoError(t, err)
	for _, name := range envRefs(string(data)) {
		assert.Contains(t, []string{"CREDENTIALS_DIRECTORY", "STATE_DIRECTORY"}, name,
			"%s uses ${%s}, which systemd does not set for the unit", unitConfigFile, name)
	}
	credDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(credDir, "userpilot-api-key"), []byte("key-from-a-credential\n"), 0o400))
	require.NoError(t, os.WriteFile(filepath.Join(credDir, "pgpass"),
		[]byte("db.internal:5432:app:pgpilot:password-from-a-credential\n"), 0o400))
	t.Setenv("CREDENTIALS_DIRECTORY", credDir)
	t.Setenv("STATE_DIRECTORY", "/var/lib/pgpilot") // StateDirectory=pgpilot
	cfg, err := config.Load(unitConfigFile)
	require.NoError(t, err)
	assert.Empty(t, cfg.Warnings)
	assert.Equal(t, "/var/lib/pgpilot", cfg.State.Dir)
	assert.Equal(t, "key-from-a-credential", cfg.Userpilot.APIKey)
	// The database password: pgx reads the URL's passfile, the credential.
	assert.NotContains(t, cfg.Postgres.URL, "password-from")
	pc, err := pgconn.ParseConfig(cfg.Postgres.URL)
	require.NoError(t, err)
	assert.Equal(t, "password-from-a-credential", pc.Password, "the password from the pgpass credential")
	assert.Equal(t, "pgpilot", pc.User)

	// docs/deploy.md's commands install the credentials the unit loads.
	page := doc(t, "docs/deploy.md")
	for id, src := range creds {
		assert.True(t, strings.Contains(page, src), "docs/deploy.md's systemd section creates %s (credential %s)", src, id)
	}
}

// TestSystemdAnalyzeVerifiesTheUnit runs systemd's own checker on the
// unit (on a copy whose ExecStart is a real pgpilot binary: verify checks
// that it exists). systemd-analyze reports unknown keys and bad values as
// warnings with exit 0, so any output fails the test. It also scores the
// hardening (systemd-analyze security; 0 best, 10 worst).
func TestSystemdAnalyzeVerifiesTheUnit(t *testing.T) {
	analyze := tool(t, "systemd-analyze", "Debian's systemd package")
	data, err := os.ReadFile(unitFile)
	require.NoError(t, err)
	unit := strings.ReplaceAll(string(data), "/usr/local/bin/pgpilot", pgpilotBinary(t))
	dir := t.TempDir()
	path := filepath.Join(dir, "pgpilot.service")
	require.NoError(t, os.WriteFile(path, []byte(unit), 0o644))

	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	require.NoError(t, err, "systemd-analyze verify:\n%s", out)
	assert.Empty(t, strings.TrimSpace(string(out)), "systemd-analyze verify has something to say")

	out, err = exec.Command(analyze, "security", "--offline=true", "--threshold=20", path).CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	require.NoError(t, err, "exposure above 2.0:\n%s", out)
	t.Log(lines[len(lines)-1])
}
