package daemon

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/metrics"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// Whereabouts is where one company stands between Postgres and Userpilot:
// what `pgpilot why` prints. A running pgpilot answers it on http.listen
// (GET /why/{company}), with what its pipeline holds in memory; with none
// running, `why` reads the state directory itself (Locate).
type Whereabouts struct {
	CompanyID string `json:"company_id,omitempty"`
	// UserID is set instead of CompanyID for a user (why --user).
	UserID string `json:"user_id,omitempty"`
	// Source is "running pgpilot" (asked over http.listen) or "state
	// directory" (read with no pgpilot running, or none answering).
	Source string `json:"source"`
	// State is one word: pending, in_flight, in_job, deleting, refused,
	// outbox, dead_lettered, delivered or unknown.
	State string `json:"state"`
	// WaitingFor says what has to happen next for Userpilot to hold the
	// company's latest values ("nothing" once it does).
	WaitingFor string `json:"waiting_for"`
	// LastChange is the newest change pgpilot holds of it, when it holds
	// one (pending, in the outbox, or set aside).
	LastChange *Change `json:"last_change,omitempty"`
	// Job is the bulk job carrying it, with Userpilot's id once known.
	Job *state.JobOf `json:"job,omitempty"`
	// Pipeline is what the running pipeline holds of it (nil when read
	// from the state directory).
	Pipeline *delivery.Whereabouts `json:"pipeline,omitempty"`
	// Store is what the state directory's store holds of it: the no-op
	// index's fingerprints, its outbox record, the jobs that carry it.
	Store *state.CompanyRecord `json:"store,omitempty"`
	// DeadLetters are its outstanding dead letters, oldest first.
	DeadLetters []DeadLetterOf `json:"dead_letters,omitempty"`
	// Delivered is when Userpilot last accepted it and by which path, when
	// the running pgpilot remembers (its last recentSize deliveries).
	Delivered *Delivered `json:"delivered,omitempty"`
	// Checkpoint is the durable position: everything before it is
	// delivered or set aside.
	Checkpoint string `json:"checkpoint,omitempty"`
	// Snapshot is the initial sync or re-sync running, as far as it is
	// delivered.
	Snapshot *state.Snapshot `json:"snapshot,omitempty"`
	// Notes are what else the operator should know.
	Notes []string `json:"notes,omitempty"`
}

// Change is a change pgpilot holds of a company.
type Change struct {
	LSN      string    `json:"lsn,omitempty"`
	Received time.Time `json:"received,omitzero"`
	Changes  int       `json:"changes,omitempty"`
}

// DeadLetterOf is one outstanding dead letter of the company.
type DeadLetterOf struct {
	Time   time.Time `json:"time"`
	LSN    string    `json:"lsn"`
	Status int       `json:"status"`
	Reason string    `json:"reason"`
}

// Delivered is a delivery the running pgpilot saw.
type Delivered struct {
	At   time.Time `json:"at"`
	Path string    `json:"path"` // realtime or bulk
}

// ErrNotRunning is the answer of a pgpilot whose delivery engine is not
// running (standing by, or starting).
var ErrNotRunning = fmt.Errorf("%w: no delivery engine is running in this pgpilot", metrics.ErrWhyUnavailable)

// Locate reads where company id stands from the state directory dir: the
// checkpoint, the dead letters and, when store is not nil, the store. The
// daemon passes its open store; `pgpilot why` one it opened read-only.
// key is the company's id, or a user's key (delivery.KeyOf): the state
// directory's records are keyed so.
func Locate(dir string, store *state.Store, cfg *config.Config, key string) (Whereabouts, error) {
	entity, id := delivery.SubjectOf(key)
	w := Whereabouts{CompanyID: id, Source: "state directory"}
	if entity == mapping.User {
		w.CompanyID, w.UserID = "", id
	}
	cp, ok, err := state.ReadCheckpoint(dir)
	if err != nil {
		return w, err
	}
	if ok {
		w.Checkpoint, w.Snapshot = cp.LSN.String(), cp.Snapshot
	}
	dls, err := state.ReadDeadLetters(dir)
	if err != nil {
		return w, err
	}
	for _, dl := range dls.Outstanding {
		if (entity == mapping.User && dl.UserID == id) || (entity == mapping.Company && dl.UserID == "" && dl.CompanyID == id) {
			w.DeadLetters = append(w.DeadLetters, DeadLetterOf{Time: dl.Time, LSN: dl.LSN.String(), Status: dl.Status, Reason: dl.Reason})
		}
	}
	if store != nil {
		rec, err := store.Company(key, metadataKeys(cfg, entity))
		if err != nil {
			return w, err
		}
		w.Store = &rec
	}
	w.decide()
	return w, nil
}

// metadataKeys are every key the mapping sends, to name the no-op index's
// fingerprints.
func metadataKeys(cfg *config.Config, entity mapping.Entity) []string {
	c := cfg.Companies
	if entity == mapping.User {
		c = cfg.Users.Entity()
	}
	var keys []string
	for _, f := range c.Metadata {
		keys = append(keys, f.Key)
	}
	for _, r := range c.Related {
		for _, f := range r.Metadata {
			keys = append(keys, f.Key)
		}
		for _, a := range r.Aggregate {
			keys = append(keys, a.Key)
		}
	}
	for k := range c.OnDeleteMetadata {
		keys = append(keys, k)
	}
	if c.OnDelete == "mark" && len(c.OnDeleteMetadata) == 0 {
		keys = append(keys, "deleted")
	}
	return keys
}

// flag is the command-line flag naming w's company or user.
func (w Whereabouts) flag() string {
	if w.UserID != "" {
		return "--user " + w.UserID
	}
	return "--company " + w.CompanyID
}

// decide sets State, WaitingFor and LastChange from what is known, the
// most pressing first: what is on its way, then what is owed, then what is
// set aside, then what is delivered.
func (w *Whereabouts) decide() {
	p, st := w.Pipeline, w.Store
	jobs := func() *state.JobOf {
		if st != nil && len(st.Jobs) > 0 {
			return &st.Jobs[len(st.Jobs)-1]
		}
		return nil
	}
	owed := func(o *delivery.Owed) {
		if w.LastChange == nil || o.LSN != "" {
			w.LastChange = &Change{LSN: o.LSN, Received: o.Since, Changes: o.Changes}
		}
	}
	stopped := ""
	if p != nil && p.Stopped != "" {
		stopped = "; delivery is stopped: " + p.Stopped
	}
	outbox := func() {
		w.State = "outbox"
		if st != nil && st.Outbox != nil {
			w.LastChange = &Change{LSN: st.Outbox.LSN.String(), Received: st.Outbox.Since}
		}
		switch {
		case p == nil:
			w.WaitingFor = "the next `pgpilot run`, which delivers what the outbox owes ahead of the stream"
		case p.Mode == state.ModeOutbox:
			w.WaitingFor = "Userpilot to accept again (outbox mode: " + p.ModeReason + "); its state is safe in the outbox meanwhile" + stopped
		default:
			w.WaitingFor = "its turn to be sent from the outbox" + stopped
		}
		if p != nil && p.OnItsWay != nil {
			owed(p.OnItsWay)
			w.Notes = append(w.Notes, "a call carrying it is on its way, retried until Userpilot answers")
		}
	}
	switch {
	case p != nil && p.OnItsWay != nil && p.OnItsWay.Path == "held":
		owed(p.OnItsWay)
		w.State, w.Job = "in_job", jobs()
		w.WaitingFor = "the end of a bulk job from before the restart, which pgpilot polls" + jobName(w.Job) + stopped
	case p != nil && (p.Overflow || p.OutboxBytes > 0):
		// In outbox mode what is owed is on disk: that is where it waits.
		outbox()
	case p != nil && p.OnItsWay != nil:
		o := p.OnItsWay
		owed(o)
		switch j := jobs(); {
		case o.Path == "refused":
			w.State = "refused"
			w.WaitingFor = "the breaker's verdict on Userpilot's refusal: set aside as a dead letter once Userpilot accepts another record (or after 30 s)" + stopped
		case o.Path == "delete":
			w.State = "deleting"
			w.WaitingFor = "its turn for Userpilot's delete request (one every 2 s)" + stopped
		case j != nil:
			w.State, w.Job = "in_job", j
			if j.ID == "" {
				w.WaitingFor = "Userpilot's answer to the bulk job's submission (" + fmt.Sprint(j.Records) + " records)"
			} else {
				w.WaitingFor = "Userpilot to complete bulk job " + j.ID + " (" + fmt.Sprint(j.Records) + " records); pgpilot polls it"
			}
		default:
			w.State = "in_flight"
			w.WaitingFor = "Userpilot's answer to the identify call sent at " + o.SentAt.UTC().Format(time.RFC3339) + " (retried until it is accepted)"
		}
		if p.Waiting != nil {
			owed(p.Waiting)
			w.Notes = append(w.Notes, "a newer state waits behind the one on its way: one state at a time per company, so an older one never lands after it")
		}
	case p != nil && p.Waiting != nil:
		owed(p.Waiting)
		w.State = "pending"
		switch {
		case stopped != "":
			w.WaitingFor = "a restart with the fix" + stopped
		case p.Ahead >= 0:
			w.WaitingFor = fmt.Sprintf("its turn: %d state(s) ahead of it on the real-time path, unless a bulk job takes it first", p.Ahead)
		default:
			w.WaitingFor = "its turn, once the look-up in the no-op index and the states before it are done"
		}
	case st != nil && st.Outbox != nil:
		outbox()
	case st != nil && len(st.Jobs) > 0:
		j := jobs()
		w.State, w.Job = "in_job", j
		w.WaitingFor = "the next `pgpilot run`, which holds it until bulk job" + jobName(j) + " ends at Userpilot, then sends what is newer"
	case len(w.DeadLetters) > 0:
		dl := w.DeadLetters[len(w.DeadLetters)-1]
		w.State = "dead_lettered"
		w.LastChange = &Change{LSN: dl.LSN}
		w.WaitingFor = fmt.Sprintf("you: fix the cause, then `pgpilot deadletters replay %s` sends its current row (or `drop`)", w.flag())
	case st != nil && st.Indexed:
		w.State = "delivered"
		w.WaitingFor = "nothing: Userpilot holds the values the no-op index records; a change to a mapped column sends them again"
	default:
		w.State = "unknown"
		w.WaitingFor = "a change: pgpilot holds no record of this company (no change since the no-op index was last set aside, or not a company_id of the table)"
		if w.Snapshot != nil {
			w.WaitingFor = fmt.Sprintf("the running snapshot (%s: %d rows delivered) to reach it, or a change", w.Snapshot.ID, w.Snapshot.Rows)
		}
	}
	if st != nil && st.Sending && w.Pipeline == nil {
		w.Notes = append(w.Notes, "marked as being sent when pgpilot stopped: its next state is sent whatever the no-op index says")
	}
	if p != nil && p.InDoubt {
		w.Notes = append(w.Notes, "an earlier run may have sent it without seeing the end: its next state is sent whatever the no-op index says")
	}
	if len(w.DeadLetters) > 0 && w.State != "dead_lettered" {
		w.Notes = append(w.Notes, fmt.Sprintf("%d outstanding dead letter(s) from before: `pgpilot deadletters list %s`", len(w.DeadLetters), w.flag()))
	}
}

func jobName(j *state.JobOf) string {
	if j == nil || j.ID == "" {
		return ""
	}
	return " " + j.ID
}

// whereabouts answers `pgpilot why` in the daemon: the pipeline of the
// running engine (attached by startEngine), the deliveries it remembers,
// and the state directory.
type whereabouts struct {
	pipe   atomic.Pointer[delivery.Pipeline]
	recent recentDeliveries
}

// attach makes p the pipeline questions go to.
func (wh *whereabouts) attach(p *delivery.Pipeline) { wh.pipe.Store(p) }

// why is the handler of GET /why/{company}.
func (s *session) why(ctx context.Context, id string, user bool) (any, error) {
	if user {
		id = delivery.KeyOf(mapping.User, id)
	}
	p := s.where.pipe.Load()
	if p == nil {
		return nil, ErrNotRunning
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	pw, err := p.Where(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("ask the delivery engine: %w", err)
	}
	w, err := Locate(s.cfg.State.Dir, s.store, s.cfg, id)
	if err != nil {
		return nil, err
	}
	w.Source, w.Pipeline = "running pgpilot", &pw
	w.Notes = nil
	if d, ok := s.where.recent.get(id); ok {
		w.Delivered = &d
	}
	w.decide()
	if w.State == "delivered" && w.Delivered == nil {
		w.Notes = append(w.Notes, fmt.Sprintf("delivered before this pgpilot's last %d deliveries, or before it started: when is not known", recentSize))
	}
	return w, nil
}

// recentSize is how many deliveries the daemon remembers for `why`: a
// bounded memory, 32 bytes each beside the id (which the delivery made).
const recentSize = 8192

// recentDeliveries remembers the last recentSize deliveries: company (or
// user), when, which path. A ring and nothing more: `why` looks through it
// from the newest, 8,192 comparisons at most, once per question; a map
// beside it, for a look-up nobody makes between questions, was 170 bytes
// a delivery (the map's room and the entries deleted from it).
type recentDeliveries struct {
	mu   sync.Mutex
	ring []ringSlot
	next int
}

type ringSlot struct {
	id   string
	at   int64 // Unix nanoseconds
	bulk bool
}

func (r *recentDeliveries) add(id string, bulk bool, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ring == nil {
		r.ring = make([]ringSlot, recentSize)
	}
	r.ring[r.next] = ringSlot{id, at.UnixNano(), bulk}
	r.next = (r.next + 1) % recentSize
}

// get is id's newest delivery among those remembered.
func (r *recentDeliveries) get(id string) (Delivered, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for n := range len(r.ring) {
		sl := r.ring[(r.next-1-n+2*len(r.ring))%len(r.ring)]
		if sl.id == "" {
			break // never filled: nothing older
		}
		if sl.id == id {
			d := Delivered{At: time.Unix(0, sl.at).UTC(), Path: "realtime"}
			if sl.bulk {
				d.Path = "bulk"
			}
			return d, true
		}
	}
	return Delivered{}, false
}

// wrap is index, noting each delivery it records: Record is the real-time
// path's write, RecordProfiles a bulk job's.
func (r *recentDeliveries) wrap(index delivery.Index) delivery.Index {
	return recordingIndex{Index: index, r: r}
}

type recordingIndex struct {
	delivery.Index
	r *recentDeliveries
}

func (x recordingIndex) Record(cos []userpilot.Company) error {
	if err := x.Index.Record(cos); err != nil {
		return err
	}
	now := time.Now().UTC()
	for _, co := range cos {
		x.r.add(co.CompanyID, false, now)
	}
	return nil
}

func (x recordingIndex) RecordProfiles(ps state.Profiles) error {
	if err := x.Index.RecordProfiles(ps); err != nil {
		return err
	}
	now := time.Now().UTC()
	for i := range ps.Len() {
		x.r.add(ps.CompanyID(i), true, now)
	}
	return nil
}
