package daemon

import (
	"cmp"
	"fmt"
	"log/slog"
	"slices"

	"github.com/jackc/pglogrepl"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/metrics"
	"github.com/pgpilot/pgpilot/related"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/snapshot"
	"github.com/pgpilot/pgpilot/userpilot"
)

// The config file becomes each stage's options here, and only here: the
// loader (package config) has applied every default the stages declare,
// and what Options overrides (tests) wins.

// metricsOptions are the metrics' options from the config.
func metricsOptions(cfg *config.Config, log *slog.Logger) metrics.Options {
	return metrics.Options{Logger: log.With("subsystem", "http"), Slot: cfg.Postgres.Slot,
		UnreadyAfter: cfg.HTTP.UnreadyAfter, WarnRetainedWAL: cfg.Delivery.WarnRetainedWAL}
}

// userpilotOptions are the client's options: endpoint, key and budget from
// the config, the rest from override.
func userpilotOptions(cfg *config.Config, override userpilot.Options, log *slog.Logger) userpilot.Options {
	uo := override
	uo.Endpoint, uo.APIKey, uo.RateLimit = cfg.Userpilot.Endpoint, cfg.Userpilot.APIKey, cfg.Userpilot.RateLimit
	if uo.Concurrency == 0 {
		uo.Concurrency = workersFor(cfg.Userpilot.RateLimit)
	}
	if uo.Logger == nil {
		uo.Logger = log.With("subsystem", "userpilot")
	}
	return uo
}

// snapshotOptions are a section's snapshot stage's: what it reads (es),
// where the stream starts, and the pipeline's backlog it waits for.
func (s *session) snapshotOptions(src *source, es *entitySource, start pglogrepl.LSN, backlog func() int64) snapshot.Options {
	cfg := s.cfg
	return snapshot.Options{URL: cfg.Postgres.URL, Start: start, Table: es.table, Columns: es.readCols, Key: es.key, Identity: es.identity,
		CompanyID: es.spec.CompanyID, Where: es.spec.Where, ChunkRows: cmp.Or(s.opts.SnapshotChunkRows, cfg.Delivery.SnapshotChunkRows),
		Backlog: backlog, Logger: s.snapLog.With("table", es.table.String())}
}

// deliveryOptions are the pipeline's: the tuning the config sets (and
// Options.Delivery overrides), the mapping, and the session's checkpoint,
// store and metrics.
func (s *session) deliveryOptions(checkpointed pglogrepl.LSN, retained func() int64) (delivery.Options, error) {
	cfg := s.cfg
	do := s.opts.Delivery
	do.Mapping = compiler(cfg)
	do.Sender, do.DeadLetters, do.Index, do.InFlight, do.Estimates = s.sender, s.dir, s.where.recent.wrap(s.store), s.store, s.store
	if l, ok := s.sender.(realtimeLimiter); ok {
		do.RealtimeLimit = l.RealtimeLimit
	}
	if r, ok := s.sender.(retrier); ok {
		do.Retrying = r.Retrying
	}
	do.Outbox, do.RetainedWAL, do.Status = s.store, retained, s.writeStatus
	do.MaxRetainedWAL = cmp.Or(do.MaxRetainedWAL, cfg.Delivery.MaxRetainedWAL)
	do.OutboxAfter = cmp.Or(do.OutboxAfter, cfg.Delivery.OutboxAfter)
	do.Checkpoint, do.Checkpointed = s.checkpointer(), checkpointed
	do.Recorder = readRecorder{s.opts.Metrics}
	do.RealtimeRate, do.Workers, do.Logger = cfg.Userpilot.RateLimit, workersFor(cfg.Userpilot.RateLimit), s.base.With("subsystem", "delivery")
	// bulk_rate: 0 in the file turns the bulk path off.
	do.BulkRate, do.NoBulk = cfg.Userpilot.BulkRate, cfg.Userpilot.BulkRate == 0
	do.OnDelete = cfg.Companies.OnDelete
	if cfg.HasUsers() {
		do.Users.OnDelete = cfg.Users.OnDelete
		mark, err := userpilot.MetadataOf(cfg.Users.OnDeleteMetadata)
		if err != nil {
			return do, permanent(fmt.Errorf("%w: users.on_delete_metadata: %w", ErrConfig, err))
		}
		do.Users.Mark = mark
	}
	if do.Breaker == nil {
		do.Breaker = s.breaker
	}
	var err error
	if do.DeleteMark, err = userpilot.MetadataOf(cfg.Companies.OnDeleteMetadata); err != nil {
		return do, permanent(fmt.Errorf("%w: companies.on_delete_metadata: %w", ErrConfig, err))
	}
	return do, nil
}

// realtimeLimiter is a sender that lowers its real-time rate after 429s
// (*userpilot.Client).
type realtimeLimiter interface{ RealtimeLimit() float64 }

// retrier is a sender that says how many calls it is retrying now
// (*userpilot.Client): delivery then waits on Userpilot, not on itself.
type retrier interface{ Retrying() int }

// compiler compiles the mapping for a description of a table, or of the
// related values a related stage reads: the companies section's or the
// users section's, by the table.
func compiler(cfg *config.Config) func(*row.Relation) (delivery.Mapper, error) {
	return func(rel *row.Relation) (delivery.Mapper, error) {
		c, ok := sectionOf(cfg, rel.Table)
		if !ok {
			return nil, fmt.Errorf("changes of %s reached delivery, which maps %s only", rel.Table, tableNames(entityTables(cfg)))
		}
		if related.IsRelated(rel) {
			m, err := related.Mapper(c, rel)
			if err != nil {
				return nil, err
			}
			return m, nil
		}
		m, err := mapping.Compile(c, rel.Table.String(), rel.Columns)
		if err != nil {
			return nil, err // not a nil *Mapper in an interface
		}
		if k := rel.Keys; k != nil {
			// A backfill's rows: its keys, and null for those it clears
			// that the mapping no longer has anywhere (one it has again is
			// sent as it is now, here or with the related values).
			var null []string
			for _, key := range k.Clear {
				if !slices.Contains(c.Keys(), key) {
					null = append(null, key)
				}
			}
			return m.Restrict(append(slices.Clone(k.Set), k.Clear...), null), nil
		}
		return m, nil
	}
}

// sectionOf is the section (as the stages take it) whose table t is.
func sectionOf(cfg *config.Config, t row.Table) (mapping.Companies, bool) {
	for _, c := range cfg.Entities() {
		if (row.Table{Schema: c.Schema, Name: c.Name}) == t {
			return c, true
		}
	}
	return mapping.Companies{}, false
}

// entityTables are the sections' tables, companies first.
func entityTables(cfg *config.Config) []row.Table {
	var out []row.Table
	for _, c := range cfg.Entities() {
		out = append(out, row.Table{Schema: c.Schema, Name: c.Name})
	}
	return out
}

// relatedOptions are a related stage's: the plan the session compiled,
// the tables later stages need (keep), and the counters that outlive
// sessions.
func (s *session) relatedOptions(plan *related.Plan, keep []row.Table) related.Options {
	return related.Options{URL: s.cfg.Postgres.URL, Plan: plan, Keep: keep, Stats: s.relStats, Logger: s.base.With("subsystem", "related")}
}
