package delivery

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// on_delete: delete. Userpilot's delete API is a GDPR erasure run in a daily
// batch and limited to one request every 2 seconds, so deletions are sent in
// batches, one request at a time, each after any state already on its way
// for the company.
//
// Userpilot refuses a whole request for one bad id in it. A refused batch
// is split in halves, each sent again (still one request at a time, at
// Userpilot's pace), until the refused ids are alone: only they are set
// aside. One bad id among n costs about 2·log2(n) more requests: 21 for
// 1,000, some 45 s at one request every 2.1 s.

type deleteResult struct {
	entries []*entry
	err     error
}

// collectDeletes takes deletions at the front of the ready queue into the
// next delete batch.
func (p *Pipeline) collectDeletes() {
	for p.ready.len() > 0 && p.ready.front().delete {
		e := p.ready.popFront()
		p.send(e, time.Now()) // and again when its batch is sent
		p.deletes = append(p.deletes, e)
	}
}

// nextDeletes is the next delete batch to send: the halves of a refused
// batch first, else up to MaxDeleteIDs waiting deletions.
func (p *Pipeline) nextDeletes() []*entry {
	if len(p.deleteSplits) > 0 {
		batch := p.deleteSplits[0]
		p.deleteSplits = p.deleteSplits[1:]
		return batch
	}
	batch := p.deletes[:min(len(p.deletes), userpilot.MaxDeleteIDs)]
	p.deletes = p.deletes[len(batch):]
	return batch
}

func (p *Pipeline) runDelete(ctx context.Context, batch []*entry) deleteResult {
	ids := make([]string, len(batch))
	for i, e := range batch {
		ids[i] = e.id
	}
	err := p.markSending(ids...) // unmarked by the index's Forget
	if err == nil {
		err = p.opts.Sender.DeleteCompanies(ctx, ids)
	}
	if err == nil && p.opts.Index != nil {
		// A company created again later must be sent in full.
		err = p.opts.Index.Forget(ids)
	}
	return deleteResult{entries: batch, err: err}
}

func (p *Pipeline) deleteFinished(r deleteResult) error {
	var rej *userpilot.RejectedError
	switch {
	case r.err == nil:
		p.log.Info("deletion requested from Userpilot (on_delete: delete; Userpilot erases in its daily batch)", "companies", len(r.entries))
	case errors.As(r.err, &rej) && len(r.entries) > 1 && rej.Status != http.StatusNotFound:
		// Which id Userpilot refuses is not said: find it by halves. The
		// halves go before deletions that arrived since, and are never
		// merged with them again.
		half := len(r.entries) / 2
		for _, e := range r.entries {
			if _, ok := p.splitAt[e]; !ok {
				p.splitAt[e] = time.Now()
			}
		}
		p.deleteSplits = append([][]*entry{r.entries[:half], r.entries[half:]}, p.deleteSplits...)
		p.log.Info("deletion batch refused by Userpilot; sending it again in halves to find the refused id",
			"companies", len(r.entries), "status", rej.Status)
		return nil
	case errors.As(r.err, &rej) && len(r.entries) == 1 && p.split(r.entries[0]) && p.deleteAccepted.After(p.splitAt[r.entries[0]]):
		// Isolated from a batch of which Userpilot has accepted a part
		// since: Userpilot works, and this is the id it refuses.
		e := r.entries[0]
		if err := p.deadLetter(state.DeadLetter{LSN: state.LSN(e.lsn), CompanyID: e.id, Status: rej.Status,
			Reason: "deletion refused by Userpilot", Body: rej.Body}); err != nil {
			return err
		}
		p.finish(e)
		return nil
	case errors.As(r.err, &rej):
		// One id refused alone (or a 404: no Userpilot there to split
		// for): the breaker decides whether it is set aside.
		for _, e := range r.entries {
			if err := p.refused(e, rej, "DELETE /v1/companies", "deletion refused by Userpilot"); err != nil {
				return err
			}
		}
		return nil
	default:
		return fmt.Errorf("delete %d companies: %w", len(r.entries), r.err)
	}
	p.progress, p.deleteAccepted = time.Now(), time.Now()
	for _, e := range r.entries {
		p.finish(e)
	}
	return p.accepted(r.entries[0].sentAt)
}

// split reports whether e was in a refused delete batch that was split.
func (p *Pipeline) split(e *entry) bool {
	_, ok := p.splitAt[e]
	return ok
}

// addKeyChange applies the on_delete policy to the company an UPDATE took
// its row away from: when the company_id changed, the old company's row is
// gone as surely as after a DELETE. Postgres sends the old key only when
// the key changed (or the whole old row under REPLICA IDENTITY FULL); when
// the company_id column is not part of what it sent, the change cannot be
// seen, as for a DELETE.
func (p *Pipeline) addKeyChange(txn row.Transaction, ch row.Change) error {
	if ch.Old == nil || (p.opts.OnDelete != "mark" && p.opts.OnDelete != "delete") {
		return nil
	}
	m, err := p.mapperFor(ch.Relation)
	if err != nil {
		return err
	}
	oldID, err := m.CompanyID(ch.Old)
	if err != nil {
		return nil
	}
	if newID, err := m.CompanyID(ch.Values); err != nil || newID == oldID {
		return nil // a row without a company id is set aside by addRow
	}
	p.stats.Deletes.Add(1)
	return p.addDelete(txn, row.Change{Op: row.Delete, Relation: ch.Relation, Values: ch.Old})
}
