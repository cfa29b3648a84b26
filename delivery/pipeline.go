// Package delivery owns the delivery invariant: a transaction's end LSN is
// checkpointed only after every change in it, and in every transaction
// before it, was accepted by Userpilot or durably set aside.
//
// It takes replication.Transactions in commit order, maps each row change
// with the mapping, merges the changes of one flush per company (newer
// values win key by key, so per-company order holds), sends one identify per
// company, and then checkpoints. Flushes never overlap, so a newer state of
// a company is never overtaken by an older one.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"golang.org/x/sync/errgroup"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// Sender delivers one company profile to Userpilot. It retries transient
// failures itself and returns a *userpilot.RejectedError for a record
// Userpilot refused; any other error means "not delivered".
type Sender interface {
	IdentifyCompany(ctx context.Context, co userpilot.Company) error
}

// DeadLetters sets aside records that cannot be delivered. A record counts
// as handled once AppendDeadLetter has returned.
type DeadLetters interface {
	AppendDeadLetter(state.DeadLetter) error
}

// Options configure a Pipeline.
type Options struct {
	Companies   mapping.Companies
	Sender      Sender
	DeadLetters DeadLetters
	// Checkpoint durably records that everything up to lsn is delivered.
	// Only after it returns may lsn be confirmed to Postgres.
	Checkpoint func(lsn pglogrepl.LSN) error
	// Checkpointed is the position already checkpointed; older positions are
	// not written again.
	Checkpointed pglogrepl.LSN
	// Workers is how many identify calls run at once; 0 → 8.
	Workers int
	// MaxBatch is the most distinct companies gathered into one flush;
	// 0 → 5000.
	MaxBatch int
	Logger   *slog.Logger
}

// ErrSchema is wrapped when the table's columns no longer fit the mapping.
// It is permanent: retrying cannot help until the mapping is fixed.
var ErrSchema = errors.New("the table no longer fits the mapping")

// Stats counts what a Pipeline did.
type Stats struct {
	Changes, Delivered, DeadLettered, Deletes, Truncates, Flushes atomic.Int64
}

// Pipeline delivers transactions. Use New.
type Pipeline struct {
	opts  Options
	log   *slog.Logger
	stats Stats

	rel    *replication.Relation
	mapper *mapping.Mapper
	done   pglogrepl.LSN
}

// New makes a Pipeline.
func New(opts Options) *Pipeline {
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 5000
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Pipeline{opts: opts, log: opts.Logger, done: opts.Checkpointed}
}

// Stats returns the pipeline's counters.
func (p *Pipeline) Stats() *Stats { return &p.stats }

// Run delivers the transactions read from in until in is closed (nil), ctx
// is done, or delivery fails for good. Whatever was received but not yet
// checkpointed when it returns with an error is simply not confirmed: the
// slot sends it again after a restart.
func (p *Pipeline) Run(ctx context.Context, in <-chan replication.Transaction) error {
	for {
		var txn replication.Transaction
		var ok bool
		select {
		case txn, ok = <-in:
		case <-ctx.Done():
			return ctx.Err()
		}
		if !ok {
			return nil
		}
		b := newBatch()
		if err := p.add(b, txn); err != nil {
			return err
		}
		// Take what is already waiting, without waiting for more: a lone
		// change goes out at once, a burst goes out as one flush.
		closed := false
	gather:
		for len(b.companies) < p.opts.MaxBatch {
			select {
			case txn, ok = <-in:
				if !ok {
					closed = true
					break gather
				}
				if err := p.add(b, txn); err != nil {
					return err
				}
			default:
				break gather
			}
		}
		if err := p.flush(ctx, b); err != nil {
			return err
		}
		if closed {
			return nil
		}
	}
}

// batch is what one flush sends: the merged pending state per company.
type batch struct {
	companies map[string]*pending
	order     []*pending
	changes   int
	end       pglogrepl.LSN
}

type pending struct {
	co  userpilot.Company
	lsn pglogrepl.LSN // the transaction of the newest change merged in
}

func newBatch() *batch { return &batch{companies: map[string]*pending{}} }

func (p *Pipeline) add(b *batch, txn replication.Transaction) error {
	for _, ch := range txn.Changes {
		p.stats.Changes.Add(1)
		switch ch.Op {
		case replication.Insert, replication.Update:
			if err := p.addRow(b, txn, ch); err != nil {
				return err
			}
		case replication.Delete:
			// Deleting in Userpilot is a GDPR erasure, not mirroring: the
			// default policy is to leave the profile and say so.
			p.stats.Deletes.Add(1)
			p.log.Info("row deleted in Postgres; Userpilot profile left as is (on_delete: ignore)",
				"table", ch.Relation.Table.String(), "lsn", txn.EndLSN.String())
		case replication.Truncate:
			p.stats.Truncates.Add(1)
			p.log.Warn("TRUNCATE is never mirrored to Userpilot: the profiles stay",
				"table", ch.Relation.Table.String(), "lsn", txn.EndLSN.String())
		}
	}
	b.changes += len(txn.Changes)
	if txn.EndLSN > b.end {
		b.end = txn.EndLSN
	}
	return nil
}

func (p *Pipeline) addRow(b *batch, txn replication.Transaction, ch replication.Change) error {
	m, err := p.mapperFor(ch.Relation)
	if err != nil {
		return err
	}
	vals := make([]mapping.Value, len(ch.Values))
	for i, v := range ch.Values {
		vals[i] = mapping.Value{Text: v.Text, Null: v.Null, Unchanged: v.Unchanged}
	}
	id, err := m.Identify(vals)
	if err != nil {
		// A row that cannot become a payload is set aside; the stream goes on.
		return p.deadLetter(state.DeadLetter{LSN: state.LSN(txn.EndLSN), CompanyID: id.CompanyID,
			Reason: "not mapped: " + err.Error(), Payload: id})
	}
	if e, ok := b.companies[id.CompanyID]; ok {
		// A newer change to the same company: its values win key by key;
		// keys it leaves out (unchanged TOAST) keep the pending value.
		for k, v := range id.Metadata {
			e.co.Metadata[k] = v
		}
		e.lsn = txn.EndLSN
		return nil
	}
	e := &pending{co: userpilot.Company{CompanyID: id.CompanyID, Metadata: id.Metadata}, lsn: txn.EndLSN}
	if e.co.Metadata == nil {
		e.co.Metadata = map[string]any{}
	}
	b.companies[id.CompanyID] = e
	b.order = append(b.order, e)
	return nil
}

// mapperFor compiles the mapping against rel's columns whenever Postgres
// describes the table anew (a new Relation), so a schema change is met with
// a clear stop rather than values in the wrong keys.
func (p *Pipeline) mapperFor(rel *replication.Relation) (*mapping.Mapper, error) {
	if rel == p.rel && p.mapper != nil {
		return p.mapper, nil
	}
	cols := make([]mapping.Column, len(rel.Columns))
	for i, c := range rel.Columns {
		cols[i] = mapping.Column{Name: c.Name, TypeOID: c.TypeOID, TypeName: c.TypeName}
	}
	m, err := mapping.Compile(p.opts.Companies, rel.Table.String(), cols)
	if err != nil {
		return nil, fmt.Errorf("%w: %w; fix the mapping and restart pgpilot: nothing is lost, the slot keeps the changes", ErrSchema, err)
	}
	p.rel, p.mapper = rel, m
	return m, nil
}

func (p *Pipeline) deadLetter(dl state.DeadLetter) error {
	if err := p.opts.DeadLetters.AppendDeadLetter(dl); err != nil {
		return fmt.Errorf("set aside company %q: %w", dl.CompanyID, err)
	}
	p.stats.DeadLettered.Add(1)
	p.log.Warn("record set aside in the dead-letter file", "company_id", dl.CompanyID, "status", dl.Status,
		"reason", dl.Reason, "lsn", dl.LSN.String())
	return nil
}

// flush sends every pending company, then checkpoints the batch's end. If
// any send fails (only cancellation makes the Sender give up), nothing is
// checkpointed and the error is returned.
func (p *Pipeline) flush(ctx context.Context, b *batch) error {
	start := time.Now()
	var delivered, rejected atomic.Int64
	if len(b.order) > 0 {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(p.opts.Workers)
		for _, e := range b.order {
			g.Go(func() error {
				err := p.opts.Sender.IdentifyCompany(gctx, e.co)
				var rej *userpilot.RejectedError
				switch {
				case err == nil:
					delivered.Add(1)
					return nil
				case errors.As(err, &rej):
					rejected.Add(1)
					return p.deadLetter(state.DeadLetter{LSN: state.LSN(e.lsn), CompanyID: e.co.CompanyID,
						Status: rej.Status, Reason: "rejected by Userpilot", Body: rej.Body, Payload: e.co})
				default:
					return fmt.Errorf("deliver company %q: %w", e.co.CompanyID, err)
				}
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
	}
	p.stats.Delivered.Add(delivered.Load())
	if b.end > p.done {
		if err := p.opts.Checkpoint(b.end); err != nil {
			return fmt.Errorf("checkpoint %s: %w", b.end, err)
		}
		p.done = b.end
	}
	if b.changes > 0 {
		p.stats.Flushes.Add(1)
		p.log.Info("flushed", "changes", b.changes, "companies", len(b.order), "delivered", delivered.Load(),
			"rejected", rejected.Load(), "path", "realtime", "duration", time.Since(start).Round(time.Millisecond).String(),
			"checkpoint", p.done.String())
	}
	return nil
}
