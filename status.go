package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/state"
)

// statusReport is what `pgpilot status --json` prints. It holds positions
// and counts only: no URL, no key.
type statusReport struct {
	Slot             string     `json:"slot"`
	SlotExists       bool       `json:"slot_exists"`
	SlotActive       bool       `json:"slot_active"`
	WALStatus        string     `json:"wal_status,omitempty"`
	Checkpoint       string     `json:"checkpoint,omitempty"`
	CheckpointAt     *time.Time `json:"checkpoint_updated_at,omitempty"`
	InitialSync      string     `json:"initial_sync,omitempty"`
	ConfirmedFlush   string     `json:"slot_confirmed_flush,omitempty"`
	RestartLSN       string     `json:"slot_restart_lsn,omitempty"`
	ServerLSN        string     `json:"server_lsn,omitempty"`
	LagBytes         *int64     `json:"lag_bytes,omitempty"`
	RetainedWALBytes *int64     `json:"retained_wal_bytes,omitempty"`
	DeadLetters      int        `json:"dead_letters"`
	// Snapshot is the running snapshot (initial sync or re-sync) as far as
	// it is delivered; ResyncRequested a `pgpilot resync` not started yet.
	Snapshot        *state.Snapshot `json:"snapshot,omitempty"`
	ResyncRequested bool            `json:"resync_requested"`
	// Mode, outbox and pending figures, as the running daemon last wrote
	// them (absent before the first run).
	Delivery *state.Status `json:"delivery,omitempty"`
}

// statusCommand prints the checkpoint, the slot's position and lag, and
// what the running daemon last wrote of its delivery.
func statusCommand(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs, path := commandFlags("status", stderr)
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	cfg, err := loadConfig(fs, path, args, stderr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	r := statusReport{Slot: cfg.Postgres.Slot}
	cp, ok, err := state.ReadCheckpoint(cfg.State.Dir)
	if err != nil {
		return err
	}
	if ok {
		r.Checkpoint, r.InitialSync = cp.LSN.String(), cp.InitialSync
		r.CheckpointAt = &cp.UpdatedAt
		r.Snapshot = cp.Snapshot
	}
	if _, err := os.Stat(filepath.Join(cfg.State.Dir, state.ResyncFile)); err == nil {
		r.ResyncRequested = true
	}
	if st, ok, err := state.ReadStatus(cfg.State.Dir); err == nil && ok {
		r.Delivery = &st
	}
	if r.DeadLetters, err = state.CountDeadLetters(cfg.State.Dir); err != nil {
		return err
	}
	conn, err := replication.ConnectSQL(ctx, cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	slot, found, err := replication.ReadSlot(ctx, conn, cfg.Postgres.Slot)
	if err != nil {
		return err
	}
	if found {
		r.SlotExists, r.SlotActive, r.WALStatus = true, slot.Active, slot.WALStatus
		r.ConfirmedFlush, r.RestartLSN = slot.ConfirmedFlush.String(), slot.Restart.String()
		pos, err := replication.CurrentLSN(ctx, conn)
		if err != nil {
			return err
		}
		lag, retained := int64(pos)-int64(slot.ConfirmedFlush), int64(pos)-int64(slot.Restart)
		r.ServerLSN, r.LagBytes, r.RetainedWALBytes = pos.String(), &lag, &retained
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(r)
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("slot", fmt.Sprintf("%s (exists: %t, active: %t, wal_status: %s)", r.Slot, r.SlotExists, r.SlotActive, orDash(r.WALStatus)))
	row("checkpoint", fmt.Sprintf("%s (initial sync: %s)", orDash(r.Checkpoint), orDash(r.InitialSync)))
	if r.CheckpointAt != nil {
		row("checkpoint written", r.CheckpointAt.Format(time.RFC3339))
	}
	row("slot confirmed", orDash(r.ConfirmedFlush))
	row("server position", orDash(r.ServerLSN))
	if r.LagBytes != nil {
		row("lag", fmt.Sprintf("%d bytes", *r.LagBytes))
		row("retained WAL", fmt.Sprintf("%d bytes", *r.RetainedWALBytes))
	}
	row("dead letters", fmt.Sprint(r.DeadLetters))
	if s := r.Snapshot; s != nil {
		total := "?"
		if s.Total >= 0 {
			total = fmt.Sprint(s.Total)
		}
		what := "every row"
		switch {
		case s.CompanyID != "":
			what = "company " + s.CompanyID
		case s.Where != "":
			what = "where " + s.Where
		}
		row("snapshot", fmt.Sprintf("%s (%s): %d of %s rows delivered, began %s", s.ID, what, s.Rows, total, s.Began.Format(time.RFC3339)))
	}
	if r.ResyncRequested {
		row("re-sync", "requested, not started yet")
	}
	if d := r.Delivery; d != nil {
		if d.Stopped != "" {
			row("delivery stopped", d.Stopped)
		}
		row("delivery mode", fmt.Sprintf("%s (%s, as of %s)", d.Mode, orDash(d.Reason), d.UpdatedAt.Format(time.RFC3339)))
		row("outbox", fmt.Sprintf("%d companies, %d bytes", d.OutboxCompanies, d.OutboxBytes))
		oldest := "-"
		if !d.OldestPending.IsZero() {
			oldest = fmt.Sprintf("%s (%s ago)", d.OldestPending.Format(time.RFC3339), time.Since(d.OldestPending).Round(time.Second))
		}
		row("pending", fmt.Sprintf("%d companies, oldest %s", d.Pending, oldest))
	}
	tw.Flush()
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
