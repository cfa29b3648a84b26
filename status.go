package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/state"
)

// statusReport is what `pgpilot status --json` prints. It holds positions
// and counts only: no URL, no key.
type statusReport struct {
	Slot         string     `json:"slot"`
	SlotExists   bool       `json:"slot_exists"`
	SlotActive   bool       `json:"slot_active"`
	WALStatus    string     `json:"wal_status,omitempty"`
	Checkpoint   string     `json:"checkpoint,omitempty"`
	CheckpointAt *time.Time `json:"checkpoint_updated_at,omitempty"`
	// InitialSync is "in progress" until the table's rows are all
	// delivered, then "done".
	InitialSync      string `json:"initial_sync,omitempty"`
	ConfirmedFlush   string `json:"slot_confirmed_flush,omitempty"`
	RestartLSN       string `json:"slot_restart_lsn,omitempty"`
	ServerLSN        string `json:"server_lsn,omitempty"`
	LagBytes         *int64 `json:"lag_bytes,omitempty"`
	RetainedWALBytes *int64 `json:"retained_wal_bytes,omitempty"`
	DeadLetters      int    `json:"dead_letters"`
	// Snapshot is the running snapshot (initial sync or re-sync) as far as
	// it is delivered; ResyncRequested a `pgpilot resync` not started yet.
	Snapshot *state.Snapshot `json:"snapshot,omitempty"`
	// SnapshotRate is the running snapshot's rows delivered per second
	// since it began, and SnapshotETASeconds the time left at that rate
	// (absent until rows are delivered and the total is known).
	SnapshotRate       float64 `json:"snapshot_rows_per_second,omitempty"`
	SnapshotETASeconds float64 `json:"snapshot_eta_seconds,omitempty"`
	ResyncRequested    bool    `json:"resync_requested"`
	// ResyncQueue is the re-sync requests waiting, oldest first: they run
	// one after another.
	ResyncQueue []queuedResync `json:"resync_queue,omitempty"`
	// CancelRequested names the re-syncs a `pgpilot resync --cancel` ends
	// that are not ended yet.
	CancelRequested []string `json:"cancel_requested,omitempty"`
	// LastFailedResync is the last re-sync that ended before its last row
	// (its condition failed at run time or was refused when taken, or it
	// was cancelled), with the error, the fix and how far it got.
	LastFailedResync *state.Snapshot `json:"last_failed_resync,omitempty"`
	// Mode, outbox and pending figures, as the running daemon last wrote
	// them (absent before the first run).
	Delivery *state.Status `json:"delivery,omitempty"`
}

// statusCommand prints the checkpoint, the slot's position and lag, and
// what the running daemon last wrote of its delivery.
func statusCommand(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs, path := commandFlags("status", stderr)
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	watch := fs.Bool("watch", false, "keep showing the running snapshot's progress and what is owed (a bar on a terminal), until Ctrl-C")
	every := fs.Duration("interval", 0, "with --watch, how often to look (default 1s on a terminal, 5s otherwise)")
	cfg, err := loadConfig(fs, path, args, stderr)
	if err != nil {
		return err
	}
	if *watch {
		return watchStatus(ctx, cfg.State.Dir, stdout, *every)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	r := statusReport{Slot: cfg.Postgres.Slot}
	// The queue before the checkpoint: a request the daemon takes in
	// between then shows as queued and as running (and is shown once),
	// where the other order would miss it.
	queue, err := state.QueuedResyncs(cfg.State.Dir)
	if err != nil {
		fmt.Fprintf(stderr, "pgpilot status: warning: %v\n", err)
	}
	cp, ok, err := state.ReadCheckpoint(cfg.State.Dir)
	if err != nil {
		return err
	}
	if ok {
		r.Checkpoint, r.InitialSync = cp.LSN.String(), cp.InitialSync
		r.CheckpointAt = &cp.UpdatedAt
		r.Snapshot, r.LastFailedResync = cp.Snapshot, cp.LastFailed
		if cp.Snapshot != nil && cp.Snapshot.ID == state.InitialSnapshot {
			// The checkpoint says "done" once the slot exists; the rows
			// are owed until the snapshot job ends.
			r.InitialSync = state.InitialSyncInProgress
		}
		r.SnapshotRate, r.SnapshotETASeconds = snapshotPace(cp.Snapshot, cp.UpdatedAt)
	}
	cancels, err := state.PendingCancels(cfg.State.Dir)
	if err != nil {
		fmt.Fprintf(stderr, "pgpilot status: warning: %v\n", err)
	}
	for _, c := range cancels {
		r.CancelRequested = append(r.CancelRequested, c.IDs...)
	}
	for _, job := range queue {
		if r.Snapshot == nil || job.ID != r.Snapshot.ID {
			r.ResyncQueue = append(r.ResyncQueue, queuedResync{ID: job.ID, Where: job.Where, CompanyID: job.CompanyID, Backfill: job.Backfill})
		}
	}
	r.ResyncRequested = len(r.ResyncQueue) > 0
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
	row("checkpoint", fmt.Sprintf("%s (initial sync: %s)", orDash(r.Checkpoint), orDash(strings.ReplaceAll(r.InitialSync, "_", " "))))
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
		line := fmt.Sprintf("%s (%s): %d of %s rows delivered, began %s", s.ID, what(*s), s.Rows, total, s.Began.Format(time.RFC3339))
		if r.SnapshotRate > 0 {
			line += fmt.Sprintf(", %.0f rows/s", r.SnapshotRate)
		}
		if r.SnapshotETASeconds > 0 {
			line += ", ETA " + secs(r.SnapshotETASeconds).String()
		}
		row("snapshot", line)
	}
	for i, q := range r.ResyncQueue {
		row("re-sync queued", fmt.Sprintf("%d. %s (%s)", i+1, q.ID, what(state.Snapshot{Where: q.Where, CompanyID: q.CompanyID, Backfill: q.Backfill})))
	}
	if len(r.CancelRequested) > 0 {
		row("cancel requested", strings.Join(r.CancelRequested, ", "))
	}
	if f := r.LastFailedResync; f != nil {
		row("re-sync ended early", fmt.Sprintf("%s (%s): ended %s after %d rows delivered: %s",
			f.ID, what(*f), f.Ended.Format(time.RFC3339), f.Rows, f.Error))
		row("  fix", f.Fix)
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
		if rr := d.Related; rr != nil {
			rate := "-"
			if rr.Seconds > 0 {
				rate = fmt.Sprintf("%.0f", float64(rr.Rows)/rr.Seconds)
			}
			row("related re-reads", fmt.Sprintf("%d queries in %d batches, %d companies, %d related rows (%s rows/s while reading), since pgpilot started",
				rr.Queries, rr.Reads, rr.Companies, rr.Rows, rate))
		}
		if d.Pending > 0 && d.BacklogETASeconds > 0 {
			row("backlog ETA", fmt.Sprintf("%s at the rates below", secs(d.BacklogETASeconds)))
		}
		row("bulk path", bulkPath(d))
		if d.RealtimeRate > 0 {
			row("real-time path", fmt.Sprintf("%.4g requests/s (rate_limit, or less after 429s or as achieved)", d.RealtimeRate))
		}
	}
	tw.Flush()
	return nil
}

// bulkPath says what delivery believes of Userpilot's bulk jobs and
// where that comes from.
func bulkPath(d *state.Status) string {
	switch {
	case d.BulkRate <= 0:
		return "off (bulk_rate: 0)"
	case d.BulkJobsLearned == 0:
		return fmt.Sprintf("%.4g records/s, %s a job (userpilot.bulk_rate: nothing measured yet)", d.BulkRate, secs(d.BulkOverheadSeconds))
	}
	return fmt.Sprintf("%.4g records/s, %s a job beyond its records (measured over %d jobs)", d.BulkRate, secs(d.BulkOverheadSeconds), d.BulkJobsLearned)
}

func secs(s float64) durationText {
	return durationText(time.Duration(s * float64(time.Second)).Round(time.Millisecond))
}

// durationText prints a duration rounded for a person.
type durationText time.Duration

func (d durationText) String() string {
	t := time.Duration(d)
	if t >= time.Minute {
		t = t.Round(time.Second)
	}
	return t.String()
}

// snapshotPace is a running snapshot's rows delivered per second since it
// began (as of the checkpoint), and the time left at that pace; zeros
// while nothing is delivered or the total is unknown.
func snapshotPace(job *state.Snapshot, asOf time.Time) (rate, eta float64) {
	if job == nil || job.Rows <= 0 || job.Began.IsZero() {
		return 0, 0
	}
	took := asOf.Sub(job.Began).Seconds()
	if took <= 0 {
		return 0, 0
	}
	rate = float64(job.Rows) / took
	if job.Total > job.Rows {
		eta = float64(job.Total-job.Rows) / rate
	}
	return rate, eta
}

// queuedResync is a re-sync request waiting, as status shows it.
type queuedResync struct {
	ID        string          `json:"id"`
	Where     string          `json:"where,omitempty"`
	CompanyID string          `json:"company_id,omitempty"`
	Backfill  *state.Backfill `json:"backfill,omitempty"`
}

// what says which rows a job sends, and what of them.
func what(job state.Snapshot) string {
	switch {
	case job.CompanyID != "":
		return "company " + job.CompanyID
	case job.Where != "":
		return "where " + job.Where
	case job.Backfill != nil:
		// A backfill after a mapping change.
		var parts []string
		if len(job.Backfill.Keys) > 0 {
			parts = append(parts, "keys "+strings.Join(job.Backfill.Keys, ", "))
		}
		if len(job.Backfill.Clear) > 0 {
			parts = append(parts, "null for "+strings.Join(job.Backfill.Clear, ", "))
		}
		return "mapping change, every row: " + strings.Join(parts, "; ")
	}
	return "every row"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// watchStatus shows, until ctx ends (Ctrl-C), the running snapshot's
// progress (rows delivered of the estimate, the rate over the last half
// minute, the ETA) and what delivery owes, as the state directory says:
// one line redrawn in place on a terminal, a line every interval
// otherwise. It needs no connection.
func watchStatus(ctx context.Context, dir string, out io.Writer, every time.Duration) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	tty := isTerminal(out)
	if every <= 0 {
		every = 5 * time.Second
		if tty {
			every = time.Second
		}
	}
	var samples []paceSample
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		cp, _, err := state.ReadCheckpoint(dir)
		if err != nil {
			return err
		}
		st, _, _ := state.ReadStatus(dir)
		line := watchLine(cp.Snapshot, st, &samples, time.Now())
		if tty {
			fmt.Fprintf(out, "\r%s\033[K", line)
		} else {
			fmt.Fprintln(out, line)
		}
		select {
		case <-ctx.Done():
			if tty {
				fmt.Fprintln(out)
			}
			return nil
		case <-tick.C:
		}
	}
}

// paceSample is a snapshot's delivered rows at a moment, for its rate.
type paceSample struct {
	job  string
	rows int64
	at   time.Time
}

// watchLine is one line of status --watch: the snapshot's bar, or that
// none runs, and what delivery owes.
func watchLine(job *state.Snapshot, st state.Status, samples *[]paceSample, now time.Time) string {
	owed := fmt.Sprintf("owed: %d companies pending, %d in the outbox", st.Pending, st.OutboxCompanies)
	if st.Stopped != "" {
		owed += "; delivery stopped: " + st.Stopped
	}
	if job == nil {
		*samples = (*samples)[:0]
		return "no snapshot running; " + owed
	}
	s := *samples
	if len(s) > 0 && s[0].job != job.ID {
		s = s[:0]
	}
	s = append(s, paceSample{job.ID, job.Rows, now})
	for len(s) > 2 && now.Sub(s[0].at) > 30*time.Second {
		s = s[1:]
	}
	*samples = s
	rate := 0.0
	if first, last := s[0], s[len(s)-1]; last.at.Sub(first.at) >= time.Second {
		rate = float64(last.rows-first.rows) / last.at.Sub(first.at).Seconds()
	}
	const width = 30
	pct, total, eta := 0.0, "?", "ETA ?"
	if job.Total > 0 {
		pct = min(100, 100*float64(job.Rows)/float64(job.Total))
		total = fmt.Sprint(job.Total)
		if rate > 0 && job.Rows < job.Total {
			eta = "ETA " + secs(float64(job.Total-job.Rows)/rate).String()
		}
	}
	filled := int(pct / 100 * width)
	return fmt.Sprintf("%s [%s%s] %3.0f%% %d of %s rows delivered, %.0f rows/s, %s; %s", job.ID,
		strings.Repeat("#", filled), strings.Repeat(".", width-filled), pct, job.Rows, total, rate, eta, owed)
}
