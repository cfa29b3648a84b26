package delivery

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/row"
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

// deleter is the dispatcher's part for deletions: those waiting for a
// request, the halves of refused batches, and the one request on its way.
type deleter struct {
	waiting []*entry
	// splits are the halves of refused batches, sent (one request at a
	// time too) before any other deletion.
	splits [][]*entry
	// splitAt is when the batch an entry was in was first refused and
	// split; kept beside the entries, which are many, while split ones are
	// few.
	splitAt map[*entry]time.Time
	// sending is the batch of the request on its way (nil: none).
	sending []*entry
	// accepted is when Userpilot last accepted a delete request.
	accepted time.Time
}

func newDeleter() *deleter { return &deleter{splitAt: map[*entry]time.Time{}} }

// collect takes the deletions at the front of the ready queue into the
// next delete batch, marking them in flight.
func (d *deleter) collect(l *ledger, now time.Time) {
	for l.ready.len() > 0 && l.ready.front().delete {
		e := l.ready.popFront()
		l.send(e, now) // and again when its batch is sent
		d.waiting = append(d.waiting, e)
	}
}

// busy reports whether a delete request is on its way.
func (d *deleter) busy() bool { return d.sending != nil }

// next takes the next delete batch to send: the halves of a refused batch
// first, else up to MaxDeleteIDs waiting deletions of one entity (the
// oldest's: companies and users go to two endpoints); nil when none waits.
func (d *deleter) next(now time.Time) []*entry {
	var batch []*entry
	switch {
	case len(d.splits) > 0:
		batch, d.splits = d.splits[0], d.splits[1:]
	case len(d.waiting) > 0:
		entity, _ := subjectOf(d.waiting[0].id)
		kept := d.waiting[:0]
		for _, e := range d.waiting {
			if ent, _ := subjectOf(e.id); ent == entity && len(batch) < userpilot.MaxDeleteIDs {
				batch = append(batch, e)
			} else {
				kept = append(kept, e)
			}
		}
		clear(d.waiting[len(kept):])
		d.waiting = kept
	default:
		return nil
	}
	for _, e := range batch {
		e.sentAt = momentOf(now) // collected earlier, sent now
	}
	d.sending = batch
	return batch
}

// parked counts the deletions in flight that no request carries.
func (d *deleter) parked() int {
	n := len(d.waiting)
	for _, b := range d.splits {
		n += len(b)
	}
	return n
}

// deleteVerdict is what a delete request's answer means for its batch.
type deleteVerdict int

const (
	deleteAccepted deleteVerdict = iota // every id in it is deleted
	deleteSplit                         // refused: its halves go again
	deleteSetAside                      // the id Userpilot refuses, found alone: a dead letter
	deleteRefused                       // refused alone, or a 404: for the breaker to judge
	deleteFailed                        // not answered: delivery fails
)

// answered takes the answer to the request on its way and says what it
// means for its batch, which it returns.
func (d *deleter) answered(err error, now time.Time) ([]*entry, deleteVerdict) {
	batch := d.sending
	d.sending = nil
	var rej *userpilot.RejectedError
	switch {
	case err == nil:
		d.accepted = now
		return batch, deleteAccepted
	case errors.As(err, &rej) && len(batch) > 1 && rej.Status != http.StatusNotFound:
		// Which id Userpilot refuses is not said: find it by halves. The
		// halves go before deletions that arrived since, and are never
		// merged with them again.
		half := len(batch) / 2
		for _, e := range batch {
			if _, ok := d.splitAt[e]; !ok {
				d.splitAt[e] = now
			}
		}
		d.splits = append([][]*entry{batch[:half], batch[half:]}, d.splits...)
		return batch, deleteSplit
	case errors.As(err, &rej) && len(batch) == 1 && d.split(batch[0]) && d.accepted.After(d.splitAt[batch[0]]):
		// Isolated from a batch of which Userpilot has accepted a part
		// since: Userpilot works, and this is the id it refuses.
		return batch, deleteSetAside
	case errors.As(err, &rej):
		return batch, deleteRefused
	}
	return batch, deleteFailed
}

// split reports whether e was in a refused delete batch that was split.
func (d *deleter) split(e *entry) bool {
	_, ok := d.splitAt[e]
	return ok
}

// forget drops what is kept of a finished deletion.
func (d *deleter) forget(e *entry) { delete(d.splitAt, e) }

// deleteCall sends one delete request for the companies or users keys name
// (one entity), marked as being sent before it and forgotten by the no-op
// index once accepted (one created again later must be sent in full). It
// runs on a goroutine of its own.
func (c caller) deleteCall(ctx context.Context, keys []string) error {
	err := c.markSending(keys)
	if err == nil {
		entity, _ := subjectOf(keys[0])
		ids := make([]string, len(keys))
		for i, k := range keys {
			_, ids[i] = subjectOf(k)
		}
		if entity == mapping.User {
			err = c.sender.DeleteUsers(ctx, ids)
		} else {
			err = c.sender.DeleteCompanies(ctx, ids)
		}
	}
	if err == nil && c.index != nil {
		err = c.index.Forget(keys)
	}
	return err
}

// changedKey is the DELETE an UPDATE amounts to for the company (or user)
// it took its row away from: when the id changed, the old one's row is
// gone as surely as after a DELETE. Postgres sends the old key only when
// the key changed (or the whole old row under REPLICA IDENTITY FULL); when
// the id column is not part of what it sent, the change cannot be seen, as
// for a DELETE.
func (x *encoder) changedKey(ch row.Change) (row.Change, bool, error) {
	if ch.Old == nil {
		return row.Change{}, false, nil
	}
	_, oldID, _, readErr, err := x.idOf(ch.Relation, ch.Old)
	if err != nil || readErr != nil {
		return row.Change{}, false, err
	}
	if _, newID, _, readErr, _ := x.idOf(ch.Relation, ch.Values); readErr != nil || newID == oldID {
		return row.Change{}, false, nil // a row without an id is set aside by the row's own mapping
	}
	return row.Change{Op: row.Delete, Relation: ch.Relation, Values: ch.Old}, true, nil
}
