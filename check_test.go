package main

import (
	"bytes"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/replication"
)

func TestCheckPrintsTheFixUnderTheFailedCheck(t *testing.T) {
	var out bytes.Buffer
	c := &checker{out: &out}
	assert.True(t, c.report("config p.yaml", nil))
	assert.False(t, c.report(`role "app" may stream changes (REPLICATION)`,
		fix.With(errors.New("it has neither the REPLICATION attribute nor superuser"), `run on the primary, as a superuser: ALTER ROLE "app" REPLICATION;`)))
	assert.False(t, c.report("server settings readable", errors.New("permission denied")))
	assert.Equal(t, `✓ config p.yaml
✗ role "app" may stream changes (REPLICATION): it has neither the REPLICATION attribute nor superuser
  fix: run on the primary, as a superuser: ALTER ROLE "app" REPLICATION;
✗ server settings readable: permission denied
`, out.String())
	assert.Equal(t, 2, c.failed)
}

// TestTLSWarningForEverySSLModeAndHost reads postgres.url's TLS policy as
// pgx will act on it and warns exactly when a connection to another
// machine may run in plaintext.
func TestTLSWarningForEverySSLModeAndHost(t *testing.T) {
	for _, env := range []string{"PGSSLMODE", "PGHOST", "PGSSLROOTCERT", "PGSERVICE", "PGSERVICEFILE", "PGSSLNEGOTIATION"} {
		t.Setenv(env, "")
	}
	tests := []struct {
		url       string
		mode      string
		plaintext bool
		warn      string // "" : no warning
	}{
		{"postgres://u:pw@db.internal:5432/app", "prefer", true, "sslmode=prefer (pgx's default when postgres.url names none) falls back to plaintext"},
		{"postgres://u:pw@db.internal/app?sslmode=prefer", "prefer", true, "db.internal is not this machine"},
		{"postgres://u:pw@db.internal/app?sslmode=allow", "allow", true, "sslmode=allow tries without TLS first"},
		{"postgres://u:pw@10.0.0.5/app?sslmode=disable", "disable", true, "sslmode=disable never encrypts, and 10.0.0.5 is not this machine"},
		{"host=db.internal user=u password=pw dbname=app", "prefer", true, "sslmode=prefer"},
		{"host=db.internal user=u dbname=app sslmode=disable", "disable", true, "sslmode=disable"},
		{"postgres://u:pw@db.internal/app?sslmode=require", "require", false, ""},
		{"postgres://u:pw@db.internal/app?sslmode=verify-full&sslrootcert=system", "verify-full", false, ""},
		{"postgres://u:pw@db.internal/app?sslrootcert=system", "verify-full", false, ""},
		{"postgres://u:pw@127.0.0.1:5432/app", "prefer", true, ""},
		{"postgres://u:pw@localhost/app?sslmode=disable", "disable", true, ""},
		{"postgres://u:pw@[::1]:5432/app?sslmode=disable", "disable", true, ""},
		{"host=/var/run/postgresql user=u dbname=app", "disable", true, ""}, // no TLS over a Unix socket, nor need
		{"postgres://u:pw@127.0.0.1,db2.internal/app?sslmode=prefer", "prefer", true, "db2.internal is not this machine"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			p, err := replication.ReadTLSPolicy(tt.url)
			require.NoError(t, err)
			assert.Equal(t, tt.mode, p.Mode)
			assert.Equal(t, tt.plaintext, p.Plaintext)
			problem := tlsProblem(p)
			if tt.warn == "" {
				assert.NoError(t, problem)
				return
			}
			require.Error(t, problem)
			assert.Contains(t, problem.Error(), tt.warn)
			assert.NotContains(t, problem.Error(), "pw", "the password never appears")
			assert.Contains(t, fix.Of(problem), "sslmode=verify-full&sslrootcert=")
		})
	}
}
