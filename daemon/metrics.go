package daemon

import (
	"time"

	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/metrics"
	"github.com/pgpilot/pgpilot/related"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// Package metrics knows no other pgpilot package: what the stages do
// reaches it here, turned into its own plain values, where the daemon
// wires the stages together.

// readRecorder tells metrics what delivery takes in (delivery.Recorder).
type readRecorder struct{ m *metrics.Metrics }

// Took counts txn: a chunk's rows, or a transaction's changes by operation
// and its commit time for the lag.
func (r readRecorder) Took(txn row.Transaction) {
	if r.m == nil {
		return
	}
	rd := metrics.Read{Commit: txn.CommitLSN, End: txn.EndLSN, CommitTime: txn.CommitTime}
	switch txn.Kind {
	case row.Chunk:
		for _, ch := range txn.Changes {
			if !related.IsRelated(ch.Relation) {
				rd.ChunkRows++
			}
		}
		r.m.Read(rd)
		return
	case row.Commit:
		rd.Deliverable = true
	case row.Piece:
		rd.Deliverable, rd.End = true, 0
	}
	for _, ch := range txn.Changes {
		if related.IsRelated(ch.Relation) {
			continue // re-read values, not changes read: pgpilot_related_*
		}
		switch ch.Op {
		case row.Insert:
			rd.Inserts++
		case row.Update:
			rd.Updates++
		case row.Delete:
			rd.Deletes++
		case row.Truncate:
			rd.Truncates++
		}
	}
	r.m.Read(rd)
}

// deliveryCounts reads a pipeline's counters for metrics.
func deliveryCounts(s *delivery.Stats) func() metrics.DeliveryCounts {
	return func() metrics.DeliveryCounts {
		return metrics.DeliveryCounts{Changes: s.Changes.Load(), Coalesced: s.Coalesced.Load(), Skipped: s.Skipped.Load(),
			Realtime: s.Realtime.Load(), Bulk: s.Bulk.Load(), BulkJobs: s.BulkJobs.Load(), DeadLettered: s.DeadLettered.Load(),
			Pending: s.Pending.Load(), UserSkipped: s.Users.Skipped.Load(), UserRealtime: s.Users.Realtime.Load(),
			UserBulk: s.Users.Bulk.Load(), UserDeadLettered: s.Users.DeadLettered.Load()}
	}
}

// estimates reads what a pipeline has measured of Userpilot for metrics.
func estimates(p *delivery.Pipeline) func() metrics.Estimates {
	return func() metrics.Estimates {
		l := p.Learned()
		return metrics.Estimates{BulkRate: l.BulkRate, BulkOverhead: l.BulkOverhead, BulkJobs: l.BulkJobs,
			RealtimeRate: l.RealtimeRate, BacklogETA: l.ETA(int(p.Stats().Pending.Load()))}
	}
}

// userpilotCounts reads the client's counters for metrics.
func userpilotCounts(c *userpilot.Client) func() metrics.UserpilotCounts {
	return func() metrics.UserpilotCounts {
		st := c.Stats()
		return metrics.UserpilotCounts{Retries: st.Retries, StatusCounts: st.StatusCounts, RateLimited: st.RateLimited,
			RealtimeLimit: st.RealtimeLimit}
	}
}

// snapshotJob is the checkpointed snapshot job as metrics shows it.
func snapshotJob(job *state.Snapshot) *metrics.SnapshotJob {
	if job == nil {
		return nil
	}
	return &metrics.SnapshotJob{Initial: job.ID == state.InitialSnapshot, Rows: job.Rows, Total: job.Total}
}

// deliveryStatus is the pipeline's mode and outbox figures as metrics
// shows them.
func deliveryStatus(st state.Status) metrics.DeliveryStatus {
	return metrics.DeliveryStatus{Outbox: st.Mode == state.ModeOutbox, OutboxCompanies: st.OutboxCompanies,
		OutboxBytes: st.OutboxBytes, Pending: st.Pending, OldestPending: st.OldestPending}
}

// relatedCounts reads the related stage's counters for metrics and status.
func (s *session) relatedCounts() metrics.RelatedCounts {
	r := s.relStats
	return metrics.RelatedCounts{Reads: r.Reads.Load(), Queries: r.Queries.Load(), Companies: r.Companies.Load(), Rows: r.Rows.Load(),
		Seconds: time.Duration(r.Nanos.Load()).Seconds()}
}
