package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseEnvironmentVariables(t *testing.T) {
	vars := map[string]string{
		"USERPILOT_API_KEY": testAPIKey,
		"PGUSER":            "app",
		"PGPASSWORD":        "s3cr3t-pass",
		"COL":               "plan_code",
		"EMPTY":             "",
	}
	data := `postgres:
  url: postgres://${PGUSER}:${PGPASSWORD}@db/app
  slot: ${EMPTY}
userpilot:
  api_key: ${USERPILOT_API_KEY}
companies:
  table: companies
  company_id: id
  metadata:
    plan: ${COL}
    literal: "$${COL}"
    dollar: "cost$"
    flow: {column: "${COL}", type: string}
`
	cfg, err := Parse("p.yaml", []byte(data), env(vars))
	require.NoError(t, err)
	assert.Equal(t, "postgres://app:s3cr3t-pass@db/app", cfg.Postgres.URL)
	assert.Equal(t, "pgpilot", cfg.Postgres.Slot, "an empty variable selects the default")
	assert.Equal(t, "plan_code", cfg.Companies.Metadata[0].Column)
	assert.Equal(t, "${COL}", cfg.Companies.Metadata[1].Column)
	assert.Equal(t, "cost$", cfg.Companies.Metadata[2].Column)
	assert.Equal(t, "plan_code", cfg.Companies.Metadata[3].Column, "quoted ${VAR} works inside {column, type}")
}

func TestParseErrorsNeverShowSecrets(t *testing.T) {
	tests := []struct {
		name string
		data string
		env  map[string]string
		want []problem
	}{
		{
			name: "malformed URL from the environment",
			env:  map[string]string{"DATABASE_URL": "postgres://pgpilot:p%ss#word@db/app"},
			data: minimal,
			want: []problem{{`p.yaml:2: postgres.url: is not a valid URL (value not shown: it may hold a password)`, `percent-encode special characters in the user name and password (@ as %40, : as %3A, / as %2F, # as %23, ? as %3F, % as %25)`}},
		},
		{
			name: "URL cut short by a # in the password",
			env:  map[string]string{"DATABASE_URL": "postgres://pgpilot:p@ss#word@db/app"},
			data: minimal,
			want: []problem{{`p.yaml:2: postgres.url: is not a valid URL (value not shown: it may hold a password)`, `percent-encode special characters in the user name and password (@ as %40, : as %3A, / as %2F, # as %23, ? as %3F, % as %25)`}},
		},
		{
			name: "malformed URL written in the file",
			data: replaceLine(2, "  url: postgres://pgpilot:topsecret@db:port/app"),
			want: []problem{{`p.yaml:2: postgres.url: is not a valid URL (value not shown: it may hold a password)`, `percent-encode special characters in the user name and password (@ as %40, : as %3A, / as %2F, # as %23, ? as %3F, % as %25)`}},
		},
		{
			name: "password with ${ in it",
			data: replaceLine(2, "  url: postgres://u:top${secret@x}@db/app"),
			want: []problem{{`p.yaml:2: postgres.url: a ${...} (value not shown: it may hold a password) is not an environment variable name`, `write ${NAME} with letters, digits and underscores, or $${ for a literal ${`}},
		},
		{
			name: "URL with a foreign scheme",
			data: replaceLine(2, "  url: mysql://root:topsecret@db/app"),
			want: []problem{{`p.yaml:2: postgres.url: has an unsupported scheme (value not shown: it may hold a password)`, `start the URL with postgres:// or postgresql://`}},
		},
		{
			name: "URL that is no connection string",
			data: replaceLine(2, "  url: topsecret"),
			want: []problem{{`p.yaml:2: postgres.url: is neither a libpq URL nor a key=value string (value not shown: it may hold a password)`, `write postgres://user:password@host:5432/dbname or host=... dbname=... user=...`}},
		},
		{
			name: "several variables are named once each",
			env:  map[string]string{"SCHEMA": "Sales-EU"},
			data: replaceLine(6, "  table: ${SCHEMA}.${USERPILOT_API_KEY}_${SCHEMA}"),
			want: []problem{{`p.yaml:6: companies.table: the value from ${SCHEMA} and ${USERPILOT_API_KEY} has the character '-', which needs quotes`, `write name or schema.name; quote parts that have capitals or other characters, e.g. table: '"My Schema"."Companies"'`}},
		},
		{
			name: "API key pasted into another key",
			data: replaceLine(4, "  api_key: topsecretkey\n  endpoint: topsecretkey"),
			want: []problem{{`p.yaml:5: userpilot.endpoint: "[redacted]" is not an absolute URL`, `write us, eu, or your account's base URL such as https://analytex.userpilot.io`}},
		},
		{
			name: "database password pasted into another key",
			data: replaceLine(2, "  url: postgres://u:topsecretpw@db/app\n  slot: topsecretpw!"),
			want: []problem{{`p.yaml:3: postgres.slot: "[redacted]!" is not a valid replication slot name`, `use 1 to 63 lower-case letters, digits and underscores, e.g. slot: pgpilot`}},
		},
		{
			name: "secret variable used in another key",
			data: replaceLine(6, "  table: ${USERPILOT_API_KEY}!"),
			want: []problem{{`p.yaml:6: companies.table: the value from ${USERPILOT_API_KEY} has the character '-', which needs quotes`, `write name or schema.name; quote parts that have capitals or other characters, e.g. table: '"My Schema"."Companies"'`}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vars := baseEnv()
			for k, v := range tt.env {
				vars[k] = v
			}
			_, err := Parse("p.yaml", []byte(tt.data), env(vars))
			got := fixedProblems(t, err)
			assert.Equal(t, tt.want, got)
			for _, secret := range []string{testAPIKey, "hunter2", "p@ss", "p%ss", "topsecret"} {
				assert.NotContains(t, err.Error(), secret)
			}
		})
	}
}

func TestAPIKeyFileIsReadAndTrimmed(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "key"), []byte("from-a-secret-file\n"), 0o600))
	path := filepath.Join(dir, "pgpilot.yaml")
	data := strings.Replace(minimal, "  api_key: ${USERPILOT_API_KEY}\n", "  api_key_file: key\n", 1)
	require.NoError(t, os.WriteFile(path, []byte(data), 0o600))
	t.Setenv("DATABASE_URL", "postgres://u@h/db")
	cfg, err := Load(path)
	require.NoError(t, err)
	assert.Equal(t, "from-a-secret-file", cfg.Userpilot.APIKey, "relative to the config file, trailing newline dropped")

	require.NoError(t, os.WriteFile(filepath.Join(dir, "key"), []byte("\n"), 0o600))
	_, err = Load(path)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "pgpilot.yaml:4: userpilot.api_key_file: ")
	assert.Contains(t, err.Error(), "is empty")

	both := strings.Replace(minimal, "  api_key: ${USERPILOT_API_KEY}\n", "  api_key: ${USERPILOT_API_KEY}\n  api_key_file: key\n", 1)
	_, err = Parse("p.yaml", []byte(both), env(baseEnv()))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "both api_key and api_key_file are set")
}

func TestWorldReadableFileWithLiteralSecretIsWarnedAbout(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pgpilot.yaml")
	literal := strings.Replace(strings.Replace(minimal, "${DATABASE_URL}", "postgres://u:s3cret@h/db", 1),
		"${USERPILOT_API_KEY}", "literal-key", 1)
	tests := []struct {
		name, data string
		perm       os.FileMode
		warn       bool
	}{
		{"literal secrets, world-readable", literal, 0o644, true},
		{"literal secrets, private file", literal, 0o600, false},
		{"secrets from the environment", minimal, 0o644, false},
	}
	t.Setenv("DATABASE_URL", "postgres://u:pw@h/db")
	t.Setenv("USERPILOT_API_KEY", "k")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.NoError(t, os.WriteFile(path, []byte(tt.data), tt.perm))
			require.NoError(t, os.Chmod(path, tt.perm))
			cfg, err := Load(path)
			require.NoError(t, err)
			if !tt.warn {
				assert.Empty(t, cfg.Warnings)
				return
			}
			require.Len(t, cfg.Warnings, 1)
			assert.Contains(t, cfg.Warnings[0], "the password in postgres.url and userpilot.api_key")
			assert.Contains(t, cfg.Warnings[0], "chmod 600")
			assert.NotContains(t, cfg.Warnings[0], "s3cret")
			assert.NotContains(t, cfg.Warnings[0], "literal-key")
		})
	}
}
