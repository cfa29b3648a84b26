package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/snapshot"
	"github.com/pgpilot/pgpilot/state"
)

// resyncCommand asks the daemon to send rows again: every row, one
// company's, or those a WHERE clause selects; or, with --cancel, to end the
// running re-sync and the queued ones. The request is a file in the state
// directory's queue; the running daemon (or the next `pgpilot run`) takes
// it and sends the rows alongside the live stream.
func resyncCommand(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs, path := commandFlags("resync", stderr)
	company := fs.String("company", "", "re-send this company only (its company_id)")
	users := fs.Bool("users", false, "re-send the users table's rows (users:) instead of the companies'")
	user := fs.String("user", "", "re-send this user only (its user_id)")
	where := fs.String("where", "", "re-send the rows this SQL condition selects, e.g. \"plan = 'pro'\"")
	cancel := fs.Bool("cancel", false, "end the running re-sync and every queued one")
	cfg, err := loadConfig(fs, path, args, stderr)
	if err != nil {
		return err
	}
	if *user != "" {
		*users = true
	}
	id := *company
	if *users {
		if *company != "" {
			return usageError{errors.New("--company names a company: give --user ID for a user")}
		}
		if !cfg.HasUsers() {
			return usageError{fix.With(errors.New("--users: the config has no users section"), "add a users: section (docs/configure.md), or re-sync companies")}
		}
		id = *user
	} else if !cfg.HasCompanies() {
		return usageError{fix.With(errors.New("the config has no companies section"), "give --users (or --user ID) to re-sync users")}
	}
	if id != "" && *where != "" {
		if *users {
			return usageError{errors.New("give --user or --where, not both")}
		}
		return usageError{errors.New("give --company or --where, not both")}
	}
	if *cancel && (id != "" || *where != "" || *users) {
		return usageError{errors.New("--cancel ends re-syncs: give it alone")}
	}
	if _, ok, err := state.ReadCheckpoint(cfg.State.Dir); err != nil || !ok {
		if err != nil {
			return err
		}
		return usageError{fmt.Errorf("%s has no checkpoint: pgpilot has not run yet, and its first run sends every row anyway", cfg.State.Dir)}
	}
	if *cancel {
		return cancelResyncs(cfg.State.Dir, stdout)
	}
	spec := cfg.Companies
	if *users {
		spec = cfg.Users.Entity()
	}
	if *where != "" {
		if err := checkWhere(ctx, cfg, spec, *where); err != nil {
			return err
		}
	}
	job, err := state.RequestResync(cfg.State.Dir, state.Snapshot{Where: *where, CompanyID: id, Users: *users})
	if err != nil {
		return err
	}
	what := "every row"
	switch {
	case id != "":
		what = fmt.Sprintf("%s %q", spec.Kind, id)
	case *where != "":
		what = fmt.Sprintf("the rows where %s", *where)
	}
	if *users {
		what += " of the users table"
	}
	fmt.Fprintf(stdout, "re-sync %s of %s requested. The running pgpilot starts it within a second, once no other snapshot runs "+
		"and the requests queued before it have run (or the next `pgpilot run` does); `pgpilot status` shows the queue and its progress.\n", job.ID, what)
	return nil
}

// checkWhere refuses a condition that is not one SQL condition, or that
// Postgres refuses in exactly the chunk queries the daemon will run: now,
// not in the daemon later.
func checkWhere(ctx context.Context, cfg *config.Config, spec mapping.Companies, where string) error {
	if err := replication.CheckCondition(where); err != nil {
		return usageError{fix.With(fmt.Errorf("--where %q: %w", where, err),
			"give one condition, as after WHERE, without comments or semicolons, its parentheses balanced")}
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, table, cols, err := openEntity(ctx, cfg, spec)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	key, err := replication.KeyColumns(ctx, conn, table)
	if err != nil {
		return err
	}
	identity, err := replication.IdentityColumns(ctx, conn, table)
	if err != nil {
		return err
	}
	readCols := replication.PickColumns(cols, append(append(spec.Columns(), key...), identity...))
	if spec.Where != "" {
		readCols = cols // as the daemon reads them (companies.where may read any column)
	}
	// companies.where holds for a re-sync too: the chunk queries planned
	// are the daemon's.
	stage, err := snapshot.New(snapshot.Options{Table: table, Key: key, Identity: identity, CompanyID: spec.CompanyID,
		Where: spec.Where, Columns: readCols})
	if err != nil {
		return err
	}
	if err := stage.Check(ctx, conn, state.Snapshot{Where: where}); err != nil {
		return usageError{fmt.Errorf("--where %q does not work on %s: %w", where, table, err)}
	}
	return nil
}

// cancelResyncs asks the daemon to end the running re-sync and the queued
// ones, by ID: a re-sync requested after this is not cancelled.
func cancelResyncs(dir string, stdout io.Writer) error {
	// The queue before the checkpoint: a request the daemon takes in
	// between is then named either way.
	queue, err := state.QueuedResyncs(dir)
	if err != nil {
		return err
	}
	cp, _, err := state.ReadCheckpoint(dir)
	if err != nil {
		return err
	}
	var ids []string
	for _, job := range queue {
		ids = append(ids, job.ID)
	}
	if job := cp.Snapshot; job != nil && !job.Initial() && !slices.Contains(ids, job.ID) {
		ids = append(ids, job.ID)
	}
	if len(ids) == 0 {
		msg := "no re-sync is running or queued: nothing to cancel"
		if cp.Snapshot != nil {
			msg += " (the initial sync runs; it cannot be cancelled: every row must reach Userpilot once)"
		}
		fmt.Fprintln(stdout, msg)
		return nil
	}
	if err := state.RequestCancel(dir, ids); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "cancel of %s requested. The running pgpilot ends them within a second (or the next `pgpilot run` does); "+
		"rows already sent stay sent; `pgpilot status` shows the cancelled job.\n", strings.Join(ids, ", "))
	return nil
}

// requestCompanyResync asks the daemon to send these companies' current
// rows again, as `pgpilot resync --company` does: one request, selecting
// them by the company id column (compared as text, as the daemon does for
// one company). It is the one way other commands queue a re-sync.
func requestCompanyResync(stateDir, companyIDColumn string, ids []string, users bool) error {
	job := state.Snapshot{Users: users}
	if len(ids) == 1 {
		job.CompanyID = ids[0]
	} else {
		quoted := make([]string, len(ids))
		for i, id := range ids {
			quoted[i] = quoteLiteral(id)
		}
		job.Where = pgx.Identifier{companyIDColumn}.Sanitize() + "::text IN (" + strings.Join(quoted, ", ") + ")"
	}
	_, err := state.RequestResync(stateDir, job)
	return err
}

// quoteLiteral is s as an SQL string literal. The E” form reads
// backslashes the same whatever standard_conforming_strings says.
func quoteLiteral(s string) string {
	return "E'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(s) + "'"
}
