package delivery

import (
	"errors"
	"time"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// Taking transactions in: each change becomes what a company owes, in
// the ledger (or, while memory is full in outbox mode, on disk).

// take hands one transaction from the input to the ledger (or the outbox),
// or notes that the input closed.
func (p *Pipeline) take(txn row.Transaction, ok bool) error {
	if !ok {
		p.in.closed = true
		return nil
	}
	// Taken in: the stream may hand on as much again (row.Budget).
	defer txn.Charge.Release()
	coalesced := p.stats.Coalesced.Load()
	if err := p.add(txn); err != nil {
		if errors.Is(err, ErrSchema) {
			p.in.stopFor, p.in.closed = err, true
			return nil
		}
		return err
	}
	if p.outbox.overflowing() {
		if err := p.outbox.flushOverflow(); err != nil {
			return err
		}
	}
	p.in.took(time.Now(), coalesced)
	return nil
}

// bulkTime says whether to consider a bulk job now: the burst has been
// read (input quiet, or closed), or waiting would not make it better (the
// backlog fills a whole job, or memory is half full and reading has to go
// on), unless the rest of a backlog is being read ahead (backlog.go).
func (p *Pipeline) bulkTime(now time.Time, merged bool) bool {
	l := p.ledger
	paused, _ := p.in.paused(now, merged)
	if p.readAheadDue(now) {
		// See backlog.go: wait for the read-ahead to pause: something
		// read since it began, then the input quiet and nothing waiting in
		// it. (Quiet alone is not enough: before the read-ahead the window
		// held the input back, and the outbox's first write holds the
		// dispatcher while transactions queue.)
		quiet := now.Sub(p.in.last) >= readAheadQuiet
		return quiet && !p.waiting() && p.outbox.mode == ModeOutbox && p.in.last.After(p.backlog.readAhead)
	}
	if paused {
		return true
	}
	return l.ready.len() >= userpilot.MaxBulkRecords || l.order.len() >= p.opts.MaxPending/2 || l.windowBytes >= p.opts.MaxPendingBytes/2
}

// add maps a transaction's changes into what is owed.
func (p *Pipeline) add(txn row.Transaction) error {
	if p.ledger.seen(txn) {
		return nil
	}
	if p.opts.Recorder != nil {
		p.opts.Recorder.Took(txn)
	}
	p.takenAt = time.Now()
	// The transaction and its changes by pointer: copied at each call,
	// they were most of this loop's own time.
	p.stats.Changes.Add(int64(len(txn.Changes)))
	for i := range txn.Changes {
		ch := &txn.Changes[i]
		switch ch.Op {
		case row.Insert, row.Update:
			if err := p.addKeyChange(&txn, ch); err != nil {
				return err
			}
			if err := p.addRow(&txn, ch); err != nil {
				return err
			}
		case row.Delete:
			p.stats.Deletes.Add(1)
			if err := p.addDelete(&txn, *ch); err != nil {
				return err
			}
		case row.Truncate:
			p.stats.Truncates.Add(1)
			p.log.Warn("TRUNCATE is never mirrored to Userpilot: the profiles stay",
				"table", ch.Relation.Table.String(), "commit_lsn", txn.CommitLSN.String())
		}
	}
	p.ledger.took(txn)
	return nil
}

func (p *Pipeline) addRow(txn *row.Transaction, ch *row.Change) error {
	entity, id, key, md, mapErr, err := p.enc.mapRow(ch.Relation, ch.Values)
	if err != nil {
		return err
	}
	if mapErr != nil {
		// A row that cannot become a payload is set aside; the stream goes
		// on. A row with only some keys held back (one bad value costs one
		// key) is set aside for those, named with their values, and the
		// company's (or user's) other keys go out.
		dl := state.DeadLetter{LSN: state.LSN(txn.CommitLSN), Reason: "not mapped: " + mapErr.Error()}
		if entity == mapping.User {
			dl.UserID, dl.Payload = id, userpilot.User{UserID: id}
		} else {
			dl.CompanyID, dl.Payload = id, userpilot.Company{CompanyID: id}
		}
		if err := p.deadLetter(dl); err != nil {
			return err
		}
		var held heldBack
		if !errors.As(mapErr, &held) {
			return nil
		}
	}
	p.pend(key, md, false, txn)
	return nil
}

// addDelete applies the entity's on_delete policy to a deleted row. A
// DELETE carries only the old replica identity, so only the id is read
// from it.
func (p *Pipeline) addDelete(txn *row.Transaction, ch row.Change) error {
	entity, _, key, readErr, err := p.enc.idOf(ch.Relation, ch.Values)
	if err != nil {
		return err
	}
	pol := p.opts.policy(entity)
	if pol.OnDelete != "mark" && pol.OnDelete != "delete" {
		// Deleting in Userpilot is a GDPR erasure, not mirroring: the
		// default policy is to leave the profile and say so.
		p.log.Info("row deleted in Postgres; Userpilot profile left as is ("+entity.Section()+".on_delete: ignore)",
			"table", ch.Relation.Table.String(), "commit_lsn", txn.CommitLSN.String())
		return nil
	}
	if readErr != nil {
		return p.deadLetter(state.DeadLetter{LSN: state.LSN(txn.CommitLSN), Reason: "deleted row not mapped: " + readErr.Error() +
			"; a DELETE carries only the replica identity: make the " + entity.IDKey() + " column part of it (the primary key), or ALTER TABLE ... REPLICA IDENTITY FULL"})
	}
	if pol.OnDelete == "mark" {
		p.pend(key, p.enc.markFields(entity), false, txn)
		return nil
	}
	p.pend(key, nil, true, txn)
	return nil
}

// addKeyChange applies the on_delete policy to the company (or user) an
// UPDATE took its row away from (encoder.changedKey).
func (p *Pipeline) addKeyChange(txn *row.Transaction, ch *row.Change) error {
	if ch.Old == nil {
		return nil
	}
	m, err := p.enc.mapperFor(ch.Relation)
	if err != nil {
		return err
	}
	if pol := p.opts.policy(m.entity); pol.OnDelete != "mark" && pol.OnDelete != "delete" {
		return nil
	}
	del, ok, err := p.enc.changedKey(*ch)
	if err != nil || !ok {
		return err
	}
	p.stats.Deletes.Add(1)
	return p.addDelete(txn, del)
}

// pend merges a company's new state (metadata, or a deletion) into what is
// owed for it: in memory, or, while memory is full in outbox mode, on disk.
func (p *Pipeline) pend(id string, md fields, del bool, txn *row.Transaction) {
	resend := txn.Resend || p.leftover.inDoubt(id)
	l := p.ledger
	c := l.company(id)
	if c == nil && p.outbox.spills(id, l.full()) {
		if p.outbox.spill(id, p.enc.keys.unpack(md), del, resend, txn.EndLSN, p.takenAt) {
			p.stats.Coalesced.Add(1)
		}
		return
	}
	if c == nil {
		c = l.adopt(id, p.outbox.adopt(id))
	}
	if l.order.len() == 0 {
		p.progress = p.takenAt // the clock for OutboxAfter starts now
	}
	if l.pend(id, c, md, del, resend, txn.EndLSN, p.takenAt) {
		p.stats.Coalesced.Add(1)
	}
}

// full reports whether the window holds all memory may.
func (p *Pipeline) full() bool { return p.ledger.full() }

// pending is how many companies are owed: those in memory with a state
// undelivered (or held for a job from before a restart), and those only on
// disk.
func (p *Pipeline) pending() int { return len(p.ledger.companies) + p.outbox.owed() }
