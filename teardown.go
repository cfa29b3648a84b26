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

	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/state"
)

// teardownCommand drops the slot (and the publication when pgpilot created
// it), and sets the checkpoint aside so that the next `run` starts over.
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
	dropPub := havePub && pub.CreatedByPgpilot
	if !haveSlot && !dropPub {
		fmt.Fprintf(stdout, "nothing to drop: no slot %q, and no publication %q created by pgpilot\n", cfg.Postgres.Slot, cfg.Postgres.Publication)
		return setCheckpointAside(cfg.State.Dir, stdout)
	}
	fmt.Fprintf(stdout, "This drops replication slot %q", cfg.Postgres.Slot)
	if dropPub {
		fmt.Fprintf(stdout, " and publication %q", cfg.Postgres.Publication)
	}
	fmt.Fprintln(stdout, ". The next `pgpilot run` re-sends every row.")
	if !*yes {
		fmt.Fprint(stdout, "Type yes to go on: ")
		answer, _ := bufio.NewReader(stdin).ReadString('\n')
		if strings.TrimSpace(answer) != "yes" {
			return errors.New("not confirmed; nothing dropped")
		}
	}
	if haveSlot {
		if err := replication.DropSlot(ctx, conn, slot.Name); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "dropped replication slot %q\n", slot.Name)
	}
	if dropPub {
		if err := replication.DropPublication(ctx, conn, pub.Name); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "dropped publication %q\n", pub.Name)
	}
	return setCheckpointAside(cfg.State.Dir, stdout)
}

// setCheckpointAside renames the checkpoint, which referred to the dropped
// slot, so the next run starts a fresh initial sync instead of refusing.
// It is kept, renamed, for the record.
func setCheckpointAside(dir string, stdout io.Writer) error {
	path := filepath.Join(dir, state.CheckpointFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	d, err := state.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	aside := path + ".torn-down-" + time.Now().UTC().Format("20060102T150405Z")
	if err := os.Rename(path, aside); err != nil {
		return fmt.Errorf("set the checkpoint aside: %w", err)
	}
	fmt.Fprintf(stdout, "checkpoint moved to %s\n", aside)
	// The next run's initial sync sends every row: a re-sync still asked
	// for would send them all a second time.
	jobs, _ := state.QueuedResyncs(dir)
	for _, job := range jobs {
		if err := d.TakeResync(job.ID); err != nil {
			return err
		}
	}
	if len(jobs) > 0 {
		fmt.Fprintf(stdout, "pending re-sync request dropped (%d queued): the next run sends every row anyway\n", len(jobs))
	}
	return nil
}

func derefPID(p *int32) int32 {
	if p == nil {
		return 0
	}
	return *p
}
