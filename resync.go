package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/state"
)

// resyncCommand asks the daemon to send rows again: every row, one
// company's, or those a WHERE clause selects. The request is a file in the
// state directory; the running daemon (or the next `pgpilot run`) takes it
// and sends the rows alongside the live stream.
func resyncCommand(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs, path := commandFlags("resync", stderr)
	company := fs.String("company", "", "re-send this company only (its company_id)")
	where := fs.String("where", "", "re-send the rows this SQL condition selects, e.g. \"plan = 'pro'\"")
	cfg, err := loadConfig(fs, path, args, stderr)
	if err != nil {
		return err
	}
	if *company != "" && *where != "" {
		return usageError{errors.New("give --company or --where, not both")}
	}
	if _, ok, err := state.ReadCheckpoint(cfg.State.Dir); err != nil || !ok {
		if err != nil {
			return err
		}
		return usageError{fmt.Errorf("%s has no checkpoint: pgpilot has not run yet, and its first run sends every row anyway", cfg.State.Dir)}
	}
	if *where != "" {
		// Refuse a condition Postgres refuses now, not in the daemon later.
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		conn, table, _, err := openTable(ctx, cfg)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		// The extended protocol runs one statement only: the condition
		// cannot smuggle in another.
		if _, err := conn.Exec(ctx, "EXPLAIN SELECT 1 FROM "+table.Quoted()+" WHERE "+*where, pgx.QueryExecModeDescribeExec); err != nil {
			return usageError{fmt.Errorf("--where %q does not work on %s: %w", *where, table, err)}
		}
	}
	if err := state.RequestResync(cfg.State.Dir, state.Snapshot{Where: *where, CompanyID: *company}); err != nil {
		return err
	}
	what := "every row"
	switch {
	case *company != "":
		what = fmt.Sprintf("company %q", *company)
	case *where != "":
		what = fmt.Sprintf("the rows where %s", *where)
	}
	fmt.Fprintf(stdout, "re-sync of %s requested. The running pgpilot starts it within a second, once no other snapshot runs "+
		"(or the next `pgpilot run` does); `pgpilot status` shows its progress.\n", what)
	return nil
}

// requestCompanyResync asks the daemon to send these companies' current
// rows again, as `pgpilot resync --company` does: one request, selecting
// them by the company id column (compared as text, as the daemon does for
// one company). It is the one way other commands queue a re-sync.
func requestCompanyResync(stateDir, companyIDColumn string, ids []string) error {
	job := state.Snapshot{}
	if len(ids) == 1 {
		job.CompanyID = ids[0]
	} else {
		quoted := make([]string, len(ids))
		for i, id := range ids {
			quoted[i] = quoteLiteral(id)
		}
		job.Where = pgx.Identifier{companyIDColumn}.Sanitize() + "::text IN (" + strings.Join(quoted, ", ") + ")"
	}
	return state.RequestResync(stateDir, job)
}

// quoteLiteral is s as an SQL string literal. The E” form reads
// backslashes the same whatever standard_conforming_strings says.
func quoteLiteral(s string) string {
	return "E'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(s) + "'"
}
