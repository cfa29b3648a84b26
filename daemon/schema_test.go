package daemon_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// TestSchemaChangesMidStream: adding a column, dropping an unmapped one and
// changing a mapped column's type to another mappable type go on streaming;
// renaming a mapped column stops with an error naming it, and once the
// mapping names the new column, pgpilot resumes and nothing is lost.
func TestSchemaChangesMidStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	_, err := e.conn.Exec(ctx, `ALTER TABLE companies ADD COLUMN internal_note text`)
	require.NoError(t, err)
	_, err = e.conn.Exec(ctx, `INSERT INTO companies (id, name, plan, seats) VALUES (1, 'a', 'free', 1), (2, 'b', 'free', 2)`)
	require.NoError(t, err)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- daemon.Run(runCtx, daemon.Options{Config: e.cfg, Logger: testLogger(t)}) }()
	e.converge(30 * time.Second)

	for _, stmt := range []string{
		`ALTER TABLE companies ADD COLUMN region text; UPDATE companies SET region = 'eu', plan = 'added-column' WHERE id = 1`,
		`ALTER TABLE companies DROP COLUMN internal_note; UPDATE companies SET plan = 'dropped-unmapped' WHERE id = 1`,
		`ALTER TABLE companies ALTER COLUMN seats TYPE bigint; UPDATE companies SET seats = 9000000000 WHERE id = 2`,
	} {
		_, err := e.conn.Exec(ctx, stmt)
		require.NoError(t, err, stmt)
		e.converge(30 * time.Second)
	}

	// Renaming a mapped column: the mapping no longer fits.
	_, err = e.conn.Exec(ctx, `ALTER TABLE companies RENAME COLUMN plan TO tier; UPDATE companies SET tier = 'after-rename' WHERE id = 2`)
	require.NoError(t, err)
	select {
	case err := <-done:
		require.ErrorIs(t, err, daemon.ErrConfig)
		assert.Contains(t, err.Error(), `"plan"`, "the error names the column")
		assert.Contains(t, err.Error(), "nothing is lost")
	case <-time.After(60 * time.Second):
		t.Fatal("pgpilot kept running with a mapping that no longer fits")
	}
	got, _ := e.up.Company("2")
	require.NotEqual(t, "after-rename", got["plan"])

	// The operator points the mapping at the new name and starts again.
	for i := range e.cfg.Companies.Metadata {
		if e.cfg.Companies.Metadata[i].Column == "plan" {
			e.cfg.Companies.Metadata[i].Column = "tier"
		}
	}
	stop := e.start(ctx, 5*time.Second)
	require.Eventually(t, func() bool {
		got, _ := e.up.Company("2")
		return got["plan"] == "after-rename"
	}, 60*time.Second, 50*time.Millisecond, "the change made under the new name is delivered after the fix")
	require.NoError(t, stop())
}
