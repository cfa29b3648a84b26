package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
)

// teardownCommand drops the slot (and the publication when pgpilot created
// it), and sets the checkpoint and the store (no-op index and outbox) aside
// so that the next `run` starts over and sends every row: none skipped as
// already delivered, no stale outbox state ahead of them. What the outbox
// still owed is told, and kept as JSON lines.
func teardownCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs, path := commandFlags("teardown", stderr)
	yes := fs.Bool("yes", false, "do not ask for confirmation")
	cfg, err := loadConfig(fs, path, args, stderr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := replication.ConnectSQL(ctx, cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	slot, haveSlot, err := replication.ReadSlot(ctx, conn, cfg.Postgres.Slot)
	if err != nil {
		return err
	}
	pub, havePub, err := replication.ReadPublication(ctx, conn, cfg.Postgres.Publication)
	if err != nil {
		return err
	}
	if haveSlot && slot.Active {
		return fix.With(fmt.Errorf("replication slot %q is in use (pid %d)", slot.Name, derefPID(slot.ActivePID)), "stop pgpilot first")
	}
	// Hold the state directory from here on: a pgpilot that has it (between
	// two sessions, say) must not see its slot and store vanish.
	dir, err := lockStateDir(cfg.State.Dir)
	if err != nil {
		return err
	}
	if dir != nil {
		defer dir.Close()
	}
	suffix := stamp(time.Now())
	owed, err := state.SummarizeOutbox(cfg.State.Dir)
	if err != nil {
		return err
	}
	if d := owed.Damage; d != nil {
		fmt.Fprintf(stdout, "%s is damaged (%s): it is set aside like a whole one, with what can still be read of it", d.Path, d.Problem)
		if d.Held.Unreadable > 0 {
			fmt.Fprintf(stdout, " (%d of its pages cannot be read: what they held is not in the counts below)", d.Held.Unreadable)
		}
		fmt.Fprintln(stdout, ".")
	}
	dropPub := havePub && pub.CreatedByPgpilot
	// Say what is dropped, and only that: a slot already gone (dropped by
	// hand, or by an earlier teardown) is said to be gone.
	var drops []string
	if haveSlot {
		drops = append(drops, fmt.Sprintf("replication slot %q", cfg.Postgres.Slot))
	} else {
		fmt.Fprintf(stdout, "replication slot %q is already gone: nothing to drop there\n", cfg.Postgres.Slot)
	}
	if dropPub {
		drops = append(drops, fmt.Sprintf("publication %q", cfg.Postgres.Publication))
	}
	if len(drops) == 0 {
		fmt.Fprintf(stdout, "nothing to drop: no slot %q, and no publication %q created by pgpilot\n", cfg.Postgres.Slot, cfg.Postgres.Publication)
	} else {
		fmt.Fprintf(stdout, "This drops %s. The next `pgpilot run` re-sends every row.\n", strings.Join(drops, " and "))
		if cfg.Companies.OnDelete != mapping.OnDeleteIgnore {
			// They are in the slot's WAL past the checkpoint, or in the outbox.
			fmt.Fprintf(stdout, "Deleted rows whose deletion (on_delete: %s) is not yet delivered are not redone.\n", cfg.Companies.OnDelete)
		}
	}
	var exported string
	if owed.Companies > 0 {
		gone, err := companiesWithoutRow(ctx, conn, cfg, owed.IDs)
		exported = "outbox.torn-down-" + suffix + ".jsonl"
		warnOutbox(stdout, owed, gone, err, exported)
	}
	if !*yes && (haveSlot || dropPub || owed.Companies > 0) {
		fmt.Fprint(stdout, "Type yes to go on: ")
		answer, _ := bufio.NewReader(stdin).ReadString('\n')
		if strings.TrimSpace(answer) != "yes" {
			return errors.New("not confirmed; nothing dropped")
		}
	}
	if haveSlot {
		if err := replication.DropSlot(ctx, conn, slot.Name); err != nil {
			if isPermissionDenied(err) {
				// The slot stays, so the checkpoint that follows it must
				// too: nothing is set aside.
				return fix.With(fmt.Errorf("this role may not drop replication slot %q (%w); nothing was dropped or set aside", slot.Name, err),
					fmt.Sprintf("run on the server, as a superuser or a role that may stream changes (see `pgpilot check`): SELECT pg_drop_replication_slot(%s); then run pgpilot teardown again",
						quoteLiteral(slot.Name)))
			}
			return err
		}
		fmt.Fprintf(stdout, "dropped replication slot %q\n", slot.Name)
	}
	// What this role may not drop is left to whoever may, with the
	// statement: the slot is gone, so nothing streams into it any more.
	var left []string
	if dropPub {
		if err := replication.DropPublication(ctx, conn, pub.Name); err != nil {
			if !isPermissionDenied(err) {
				return err
			}
			fmt.Fprintf(stdout, "could not drop publication %q: only its owner (%s) or a superuser may\n", pub.Name, pub.Owner)
			left = append(left, fmt.Sprintf("DROP PUBLICATION %s; (as %s)", pgx.Identifier{pub.Name}.Sanitize(), pgx.Identifier{pub.Owner}.Sanitize()))
		} else {
			fmt.Fprintf(stdout, "dropped publication %q\n", pub.Name)
		}
	} else if havePub {
		fmt.Fprintf(stdout, "publication %q was not created by pgpilot (its owner is %s): left in place; if nothing else uses it, its owner drops it with: DROP PUBLICATION %s;\n",
			pub.Name, pub.Owner, pgx.Identifier{pub.Name}.Sanitize())
	}
	var leftErr error
	if len(left) > 0 {
		leftErr = fix.With(fmt.Errorf("teardown left publication %q in place: this role may not drop it", pub.Name),
			"run on the primary: "+strings.Join(left, " "))
	}
	if dir == nil {
		return leftErr // no state directory: nothing to set aside
	}
	if exported != "" {
		if err := state.ExportOutbox(dir.Path(), exported); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "what the outbox owed is written to %s (JSON lines)\n", filepath.Join(dir.Path(), exported))
	}
	if err := setStateAside(dir, suffix, stdout); err != nil {
		return err
	}
	return leftErr
}

// isPermissionDenied reports Postgres refusing for want of a right or
// ownership (SQLSTATE 42501).
func isPermissionDenied(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42501"
}

// lockStateDir takes the state directory, or returns nil when there is
// none (teardown creates nothing).
func lockStateDir(path string) (*state.Dir, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	d, err := state.Open(path)
	if errors.Is(err, state.ErrLocked) {
		return nil, fix.With(err, "stop pgpilot first (every instance using this state directory)")
	}
	return d, err
}

// stamp is the suffix of what teardown sets aside.
func stamp(t time.Time) string { return t.UTC().Format("20060102T150405Z") }

// companiesWithoutRow returns those of ids that no row of the table holds
// any more: the next run's initial sync sends every row still there, which
// covers what the outbox owed them, but nothing for these.
func companiesWithoutRow(ctx context.Context, conn *pgx.Conn, cfg *config.Config, ids []string) ([]string, error) {
	table := row.Table{Schema: cfg.Companies.Schema, Name: cfg.Companies.Name}
	rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT id FROM unnest($1::text[]) AS owed(id)
		WHERE NOT EXISTS (SELECT 1 FROM %s t WHERE t.%s::text = owed.id) ORDER BY id`,
		table.Quoted(), pgx.Identifier{cfg.Companies.CompanyID}.Sanitize()), ids)
	if err != nil {
		return nil, fmt.Errorf("look up the outbox's companies in %s: %w", table, err)
	}
	gone, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("look up the outbox's companies in %s: %w", table, err)
	}
	return gone, nil
}

// warnOutbox says what the outbox still owes Userpilot and what of it the
// next run's full re-send does not cover.
func warnOutbox(w io.Writer, owed state.OutboxSummary, gone []string, lookupErr error, exported string) {
	fmt.Fprintf(w, "Warning: the outbox holds changes of %d companies not yet delivered to Userpilot", owed.Companies)
	if owed.Deletes > 0 {
		fmt.Fprintf(w, " (%d of them deletions)", owed.Deletes)
	}
	fmt.Fprintln(w, ".")
	switch {
	case lookupErr != nil:
		fmt.Fprintf(w, "  Rows still in the table are sent again by the next run, with their current values; "+
			"which companies have no row any more could not be told (%v): what the outbox owed those is lost.\n", lookupErr)
	case len(gone) == 0:
		fmt.Fprintln(w, "  Every one still has its row in the table: the next run sends it again, with its current values. Nothing is lost.")
	default:
		const show = 10
		list := strings.Join(gone[:min(show, len(gone))], ", ")
		if len(gone) > show {
			list += fmt.Sprintf(", and %d more", len(gone)-show)
		}
		fmt.Fprintf(w, "  Companies whose row is gone from the table (%d): %s. The next run does not send them, "+
			"so what the outbox owed them (a deletion, a mark, a last update) is lost.\n", len(gone), list)
		fmt.Fprintln(w, "  The others still have their row: the next run sends it again, with its current values.")
	}
	fmt.Fprintf(w, "  The records are kept in %s, to replay by hand.\n", exported)
}

// setStateAside moves the checkpoint (which referred to the dropped slot)
// and the store (the no-op index, which would skip rows the re-send must
// send, and the outbox, which would deliver stale states ahead of it) out
// of the way, so the next run starts a fresh initial sync. Both are kept,
// renamed, for the record; bulk jobs not seen end carry over.
func setStateAside(d *state.Dir, suffix string, stdout io.Writer) error {
	moved, jobs, err := d.SetAside(suffix)
	for _, name := range moved {
		what := "checkpoint"
		if name == state.StoreFile {
			what = "no-op index and outbox"
		}
		fmt.Fprintf(stdout, "%s moved to %s\n", what, filepath.Join(d.Path(), name+".torn-down-"+suffix))
	}
	if err != nil {
		return err
	}
	if jobs > 0 {
		fmt.Fprintf(stdout, "%d bulk job(s) the last run submitted and did not see end are kept in a new %s: "+
			"the next run holds their companies until Userpilot says the job ended, so an older job cannot land over the re-send\n",
			jobs, state.StoreFile)
	}
	// The next run's initial sync sends every row: a re-sync still asked
	// for would send them all a second time.
	queued, _ := state.QueuedResyncs(d.Path())
	for _, job := range queued {
		if err := d.TakeResync(job.ID); err != nil {
			return err
		}
	}
	if len(queued) > 0 {
		fmt.Fprintf(stdout, "pending re-sync request dropped (%d queued): the next run sends every row anyway\n", len(queued))
	}
	return nil
}

func derefPID(p *int32) int32 {
	if p == nil {
		return 0
	}
	return *p
}
