package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// StatusFile is where a running pgpilot reports its delivery mode and
// outbox for `pgpilot status` (which cannot open the store while the
// daemon holds it).
const StatusFile = "status.json"

// Delivery modes.
const (
	// ModeHold: the slot is confirmed only after delivery.
	ModeHold = "hold"
	// ModeOutbox: pending changes are written to the outbox and the slot is
	// confirmed up to what is written there, so Postgres can free its WAL
	// during a Userpilot outage.
	ModeOutbox = "outbox"
)

// Status is what the daemon last reported.
type Status struct {
	Mode   string `json:"mode"`
	Reason string `json:"reason,omitempty"`
	// Stopped says why delivery is stopped until a restart (the endpoint
	// refuses every record), or "".
	Stopped         string    `json:"stopped,omitempty"`
	OutboxCompanies int       `json:"outbox_companies"`
	OutboxBytes     int64     `json:"outbox_bytes"`
	OldestPending   time.Time `json:"oldest_pending,omitzero"`
	Pending         int       `json:"pending_companies"`
	// What delivery has measured of Userpilot: the bulk speed
	// (records/s; 0: bulk is off) and a job's overhead, the completed jobs
	// they come from (0: still the configured start), the real-time rate
	// (requests/s), and how long the pending companies should take at
	// those rates.
	BulkRate            float64 `json:"bulk_records_per_second,omitempty"`
	BulkOverheadSeconds float64 `json:"bulk_job_overhead_seconds,omitempty"`
	BulkJobsLearned     int     `json:"bulk_jobs_measured"`
	RealtimeRate        float64 `json:"realtime_requests_per_second,omitempty"`
	BacklogETASeconds   float64 `json:"backlog_eta_seconds,omitempty"`
	// Related counts the re-reads of related values (companies.related)
	// since the daemon started; nil when none is configured.
	Related   *RelatedReads `json:"related,omitempty"`
	UpdatedAt time.Time     `json:"updated_at"`
}

// RelatedReads are the related stage's counters, for `pgpilot status`.
type RelatedReads struct {
	Reads     int64   `json:"reads"`
	Queries   int64   `json:"queries"`
	Companies int64   `json:"companies"`
	Rows      int64   `json:"rows"`
	Seconds   float64 `json:"seconds"`
}

// WriteStatus replaces the status file.
func (d *Dir) WriteStatus(s Status) error {
	s.UpdatedAt = time.Now().UTC()
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode status: %w", err)
	}
	return WriteFileAtomic(d.path, StatusFile, append(b, '\n'), 0o600)
}

// ReadStatus reads dir's status file; ok is false when there is none.
func ReadStatus(dir string) (s Status, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, StatusFile))
	if errors.Is(err, os.ErrNotExist) {
		return Status{}, false, nil
	}
	if err != nil {
		return Status{}, false, fmt.Errorf("read status: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return Status{}, false, fmt.Errorf("read status %s: %w", filepath.Join(dir, StatusFile), err)
	}
	return s, true, nil
}
