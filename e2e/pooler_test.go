package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/pgtest"
	"github.com/pgpilot/pgpilot/internal/workload"
)

// TestPoolerIsNamedByCheckAndRefusedByRun puts PgBouncer in transaction
// mode (Debian's) between pgpilot and Postgres, configured three ways,
// each showing itself differently: refusing pgpilot's session settings,
// refusing the replication parameter, or dropping it silently. check and
// run both name the pooler and say logical replication needs a direct
// connection; run exits 2 before it creates anything in Postgres.
func TestPoolerIsNamedByCheckAndRefusedByRun(t *testing.T) {
	t.Parallel()
	srv := pgtest.StartT(t, pgtest.Options{})
	tests := []struct {
		name     string
		ignore   []string
		evidence string
	}{
		{"refuses session settings", nil, `PgBouncer: it refused the startup parameter "`},
		{"refuses replication", []string{"extra_float_digits", "IntervalStyle", "bytea_output"}, `PgBouncer: it refused the startup parameter "replication"`},
		{"drops replication", []string{"extra_float_digits", "IntervalStyle", "bytea_output", "replication"}, "IDENTIFY_SYSTEM reached an ordinary session"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := checkEnvOn(t, srv)
			bouncer := srv.StartPgBouncerT(t, pgtest.PgBouncerOptions{PoolMode: "transaction", IgnoreStartupParameters: tt.ignore})
			db := e.url[strings.LastIndex(e.url, "/")+1 : strings.Index(e.url, "?")]
			e.writeCheckConfig(bouncer.URL(db, "postgres"), "")

			code, out := e.runCheck("--skip-userpilot")
			assert.Equal(t, 1, code, out)
			requireFailedLine(t, out, "postgres.url reaches Postgres directly, not through a connection pooler",
				"postgres.url goes through a connection pooler", tt.evidence, "logical replication needs a direct connection to Postgres",
				"fix: point postgres.url at Postgres itself", "[databases]")

			p := e.run()
			assert.Equal(t, 2, p.wait(t, 60*time.Second), "a pooler in the way is a configuration problem")
			logged := strings.ReplaceAll(p.out.String(), `\"`, `"`) // the log is JSON
			assert.Contains(t, logged, "postgres.url goes through a connection pooler")
			assert.Contains(t, logged, tt.evidence)
			assert.Contains(t, logged, "logical replication needs a direct connection to Postgres")
			assert.Contains(t, logged, `"fix":"point postgres.url at Postgres itself`)

			// Nothing was created: no slot, no publication, no state.
			var slots, pubs int
			require.NoError(t, e.conn.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1),
				(SELECT count(*) FROM pg_publication WHERE pubname = $1)`, workload.SlotName(e.url)).Scan(&slots, &pubs))
			assert.Zero(t, slots, "run created the slot through the pooler")
			assert.Zero(t, pubs, "run created the publication through the pooler")
			_, err := os.Stat(e.stateDir)
			assert.True(t, os.IsNotExist(err), "run created the state directory: %v", err)
		})
	}
}
