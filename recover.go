package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/related"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
)

// recoverCommand asks the next `pgpilot run` to start over, keeping what
// the state directory knows, when what the checkpoint streams from is lost:
// the slot (dropped, or invalidated), the publication it decodes through
// (dropped, or made anew), or store.db (damaged: it is set aside here).
// It says first what the start over will do, counted: every row read again,
// and the companies Userpilot holds whose row is gone treated as deleted.
func recoverCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs, path := commandFlags("recover", stderr)
	yes := fs.Bool("yes", false, "do not ask for confirmation")
	cfg, err := loadConfig(fs, path, args, stderr)
	if err != nil {
		return err
	}
	cp, ok, err := state.ReadCheckpoint(cfg.State.Dir)
	if err != nil {
		return err
	}
	if !ok || cp.InitialSync != state.InitialSyncDone {
		fmt.Fprintf(stdout, "nothing to recover: %s has no checkpoint of a finished initial sync, and `pgpilot run` starts (or finishes) one anyway\n", cfg.State.Dir)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	conn, err := replication.ConnectSQL(ctx, cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	f, err := findLoss(ctx, conn, cfg, cp)
	if err != nil {
		return err
	}
	dir, err := lockStateDir(cfg.State.Dir)
	if err != nil {
		return err
	}
	defer dir.Close()
	var damage *state.StoreDamage
	if err := state.CheckStore(dir.Path()); errors.As(err, &damage) {
		f.found = append(f.found, fmt.Sprintf("%s is damaged: %s", damage.Path, damage.Problem))
		f.reason = state.RecoverStoreDamaged
	} else if err != nil {
		return err
	}
	pending, havePending, err := state.ReadRecovery(dir.Path())
	if err != nil {
		return err
	}
	if len(f.found) == 0 {
		if havePending {
			fmt.Fprintf(stdout, "a start over is asked for already (%s, %s): the next `pgpilot run` does it; `pgpilot check` shows the plan\n",
				pending.ID, pending.Reason)
			return nil
		}
		fmt.Fprintf(stdout, "nothing to recover: replication slot %q streams from the checkpoint, publication %q is the one it began with, "+
			"and %s is whole. To send rows again, use `pgpilot resync`.\n", cfg.Postgres.Slot, cfg.Postgres.Publication, state.StoreFile)
		return nil
	}

	plan, err := planFor(ctx, conn, cfg, dir, damage, f.newSlot)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, "Found:")
	for _, s := range f.found {
		fmt.Fprintf(stdout, "  - %s\n", s)
	}
	fmt.Fprintf(stdout, "The next `pgpilot run` starts over, keeping what %s knows: %s.\n", cfg.State.Dir, plan)
	suffix := stamp(time.Now())
	if damage != nil {
		fmt.Fprintf(stdout, "%s is set aside as %s.damaged-%s; what its outbox owed (%d companies, as far as it can be read) is written beside it as JSON lines, "+
			"and its bulk jobs not seen end are carried into a new store.\n", state.StoreFile, state.StoreFile, suffix, damage.Held.Owed)
	}
	if f.waitsForPublication != "" {
		fmt.Fprintf(stdout, "It waits until the publication exists again: %s\n", f.waitsForPublication)
	}
	if !*yes {
		fmt.Fprint(stdout, "Type yes to go on: ")
		answer, _ := bufio.NewReader(stdin).ReadString('\n')
		if strings.TrimSpace(answer) != "yes" {
			return errors.New("not confirmed; nothing changed")
		}
	}
	req := state.Recovery{Reason: f.reason, NewSlot: f.newSlot}
	if damage != nil {
		aside, exported, jobs, err := dir.SetStoreAside(suffix)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s set aside as %s\n", state.StoreFile, filepath.Join(dir.Path(), aside))
		if exported != "" {
			fmt.Fprintf(stdout, "what its outbox owed is written to %s (JSON lines)\n", filepath.Join(dir.Path(), exported))
		}
		if jobs > 0 {
			fmt.Fprintf(stdout, "%d bulk job(s) not seen end carried into a new %s\n", jobs, state.StoreFile)
		}
		req.KnownFrom = []string{aside}
	}
	req, err = dir.RequestRecovery(req)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "start over %s asked for: the next `pgpilot run` does it (`pgpilot check` shows the plan)\n", req.ID)
	return nil
}

// loss is what recover found lost, and the start over it needs.
type loss struct {
	found   []string
	reason  string
	newSlot bool
	// waitsForPublication is the statement that makes the publication
	// again, when it is missing ("" when it is there).
	waitsForPublication string
}

// findLoss looks at the slot and the publication the checkpoint streams
// from.
func findLoss(ctx context.Context, conn *pgx.Conn, cfg *config.Config, cp state.Checkpoint) (loss, error) {
	var f loss
	srv, err := replication.ReadServer(ctx, conn)
	if err != nil {
		return f, err
	}
	slot, haveSlot, err := replication.ReadSlot(ctx, conn, cfg.Postgres.Slot)
	if err != nil {
		return f, err
	}
	switch {
	case haveSlot && slot.Active:
		return f, fix.With(fmt.Errorf("replication slot %q is in use (pid %d)", slot.Name, derefPID(slot.ActivePID)), "stop pgpilot first")
	case !haveSlot:
		f.found = append(f.found, fmt.Sprintf("replication slot %q is gone, and the checkpoint is at %s", cfg.Postgres.Slot, cp.LSN))
		f.reason, f.newSlot = state.RecoverSlotMissing, true
	default:
		if err := slot.Usable(srv.Database); errors.Is(err, replication.ErrSlotLost) {
			f.found = append(f.found, err.Error())
			f.reason, f.newSlot = state.RecoverSlotInvalidated, true
		} else if err != nil {
			return f, err // not pgpilot's slot: the config's to fix
		}
	}
	pub, havePub, err := replication.ReadPublication(ctx, conn, cfg.Postgres.Publication)
	if err != nil {
		return f, err
	}
	switch {
	case !havePub:
		f.found = append(f.found, fmt.Sprintf("publication %q is gone", cfg.Postgres.Publication))
		f.reason, f.newSlot = state.RecoverPublicationMissing, true
		f.waitsForPublication = createPublicationSQL(cfg)
	case cp.Publication != nil && cp.Publication.OID != pub.OID:
		f.found = append(f.found, fmt.Sprintf("publication %q was dropped and created again since the checkpoint (oid %d, was %d)",
			cfg.Postgres.Publication, pub.OID, cp.Publication.OID))
		f.reason, f.newSlot = state.RecoverPublicationRecreated, true
	}
	return f, nil
}

// planFor counts what the start over will do: the companies the state
// directory knows (of the damaged store, as far as it can be read).
func planFor(ctx context.Context, conn *pgx.Conn, cfg *config.Config, dir *state.Dir, damage *state.StoreDamage, newSlot bool) (daemon.Plan, error) {
	var known []string
	var err error
	if damage != nil {
		known, err = state.KnownInStoreFile(dir.Path(), state.StoreFile)
	} else {
		known, err = knownOf(dir)
	}
	if err != nil {
		return daemon.Plan{}, err
	}
	plan, err := daemon.PlanStartOver(ctx, conn, cfg, known, newSlot)
	if err != nil {
		return daemon.Plan{}, err
	}
	if damage != nil {
		plan.IndexLost, plan.Unreadable = true, damage.Held.Unreadable
	}
	return plan, nil
}

// knownOf reads the companies the store of dir (held) knows.
func knownOf(dir *state.Dir) ([]string, error) {
	store, err := dir.OpenStore()
	if err != nil {
		return nil, err
	}
	defer store.Close()
	return store.KnownCompanies()
}

// createPublicationSQL is the statement that makes cfg's publication.
func createPublicationSQL(cfg *config.Config) string {
	return fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s;", pgx.Identifier{cfg.Postgres.Publication}.Sanitize(), quotedTables(publishedTables(cfg)))
}

// publishedTables are the tables cfg's publication must publish: each
// section's table and its related tables, each once, companies' first.
func publishedTables(cfg *config.Config) []row.Table {
	var tables []row.Table
	for _, e := range cfg.Entities() {
		for _, t := range append([]row.Table{{Schema: e.Schema, Name: e.Name}}, related.Tables(e)...) {
			if !slices.Contains(tables, t) {
				tables = append(tables, t)
			}
		}
	}
	return tables
}

func uniqueSorted(ids []string) []string {
	slices.Sort(ids)
	return slices.Compact(ids)
}
