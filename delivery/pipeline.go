// Package delivery owns the delivery invariant: a position is checkpointed
// only once every change before it was accepted by Userpilot (for a bulk
// job: the job completed) or durably set aside.
//
// It takes replication.Transactions in commit order and keeps, per company,
// the merged pending state (newer values win key by key). Pending companies
// go out on the real-time endpoint, or, when the backlog is larger than the
// real-time budget clears quickly, partly in a bulk job running alongside.
// An update that changes nothing Userpilot already holds is skipped. A
// company never has two states on their way at once, so an older state never
// lands after a newer one, across retries, paths and restarts.
//
// The checkpoint is a watermark: entries are kept in the order they were
// made, and the position that may be checkpointed is the one the oldest
// undelivered entry recorded when it was made (or, with nothing pending, the
// last position received).
package delivery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// Sender is Userpilot. Calls retry transient failures themselves; a
// *userpilot.RejectedError means Userpilot refused the record(s); any other
// error means "not delivered".
type Sender interface {
	IdentifyCompany(ctx context.Context, co userpilot.Company) error
	IdentifyUser(ctx context.Context, u userpilot.User) error
	DeleteCompanies(ctx context.Context, ids []string) error
	DeleteUsers(ctx context.Context, ids []string) error
	// BulkIdentify submits a bulk job of the companies or the users body
	// holds.
	BulkIdentify(ctx context.Context, body userpilot.BulkBody) (userpilot.Job, error)
	BackgroundJob(ctx context.Context, id string) (userpilot.Job, error)
}

// DeadLetters sets aside records that cannot be delivered. A record counts
// as handled once AppendDeadLetter has returned.
type DeadLetters interface {
	AppendDeadLetter(state.DeadLetter) error
}

// Mapper turns rows of one description of the table into payloads
// (*mapping.Mapper).
type Mapper interface {
	// Identify maps a row; a *mapping.RowError means the row cannot be
	// mapped (it is set aside), any other error a bug (but see Map: an
	// error with keys held back).
	Identify(values []row.Value) (userpilot.Company, error)
	// CompanyID reads only the company id (a DELETE carries no more).
	CompanyID(values []row.Value) (string, error)
	// Keys are the metadata keys Map fills, in its order.
	Keys() []string
	// Entity is what the rows become: companies or users. A user's company
	// is one of its keys (mapping.MembershipKey), at Membership (-1: none).
	Entity() mapping.Entity
	Membership() int
	// Map is Identify without a map (the pipeline packs the values): it
	// sets vals[i] (len(Keys())) to key i's JSON, nil where the row leaves
	// the key out, appending the JSON to buf, which it returns; vals share
	// its bytes. An error that is a heldBack (mapping.BadValues) left
	// only those keys out: the others in vals go out.
	Map(values []row.Value, buf []byte, vals []json.RawMessage) (companyID string, _ []byte, err error)
}

// Recorder hears of each transaction the pipeline takes in, where it takes
// it in (for metrics). Optional.
type Recorder interface {
	Took(row.Transaction)
}

// Index remembers what Userpilot last accepted per company, so no-op
// updates are skipped. Optional.
type Index interface {
	// UnchangedProfiles answers, in same[i], whether Userpilot holds every
	// metadata value of company i already, and in absent[i] whether the
	// index holds nothing of it (for RecordProfiles: state.KnownAbsent).
	// The pipeline's profiles are read from the entries' packed fields (no
	// map of each).
	UnchangedProfiles(ps state.Profiles, same, absent []bool) error
	// RecordProfiles notes that Userpilot accepted these profiles.
	RecordProfiles(ps state.Profiles) error
	// Record is RecordProfiles for a company unpacked already (for the
	// real-time call).
	Record([]userpilot.Company) error
	Forget(companyIDs []string) error
}

// Options configure a Pipeline.
type Options struct {
	// Mapping compiles the mapping for a description of the table; it is
	// called once for each description met (Postgres describes the table
	// anew after a schema change, and a snapshot has its own).
	Mapping     func(*row.Relation) (Mapper, error)
	Sender      Sender
	DeadLetters DeadLetters
	Index       Index
	// Checkpoint durably records that everything up to lsn is delivered,
	// and, when mark is not nil, that the Transaction carrying that Mark
	// and everything before it is. Only after it returns may lsn be
	// confirmed to Postgres. It is called when either moves.
	Checkpoint func(lsn pglogrepl.LSN, mark any) error
	// Checkpointed is the position already checkpointed.
	Checkpointed pglogrepl.LSN
	// RealtimeRate is the real-time budget in requests/second (the client
	// enforces it; here it sizes the bulk share). 0 →
	// userpilot.DefaultRateLimit.
	RealtimeRate float64
	// RealtimeLimit, when set, is the real-time rate the client allows
	// now (below RealtimeRate while it backs off after 429s).
	RealtimeLimit func() float64
	// Workers is how many real-time calls run at once; 0 → 8.
	Workers int
	// Tick is how often the dispatcher does its housekeeping (the outbox
	// write, status, the periodic log) when nothing else wakes it; 0 →
	// 200 ms. Tests set it long to see that nothing else depends on it.
	Tick time.Duration
	// BulkRate is where the estimate of Userpilot's bulk processing speed
	// in records/second starts, until a job has been measured (see
	// policy.go); 0 → userpilot.DefaultBulkRate.
	BulkRate float64
	// NoBulk sends everything on the real-time endpoint (bulk_rate: 0).
	NoBulk bool
	// BulkOverhead is where the estimate of what a bulk job costs beyond
	// its records (queueing, validation, polling) starts; 0 → 10s.
	BulkOverhead time.Duration
	// Estimates, when set, keeps what was learned of the bulk path across
	// restarts.
	Estimates Estimates
	// MinBulk is the smallest job worth sending; 0 → 100.
	MinBulk int
	// PollInterval is the longest wait between two reads of a bulk job's
	// status; 0 → 2s.
	PollInterval time.Duration
	// MaxPending bounds memory: at this many undelivered companies the
	// pipeline stops reading (the stream keeps the connection alive); 0 →
	// 25,000: a bulk job of 10,000 in flight and the next one filling, at
	// under 1 kB a company. In outbox mode reading goes on: holding WAL
	// back is what outbox mode exists to avoid.
	MaxPending int
	// MaxPendingBytes bounds it by bytes too (what the entries hold,
	// estimated; see entry.size): metadata of a few kB a company would
	// otherwise make 25,000 of them hundreds of MB. 0 →
	// DefaultMaxPendingBytes.
	MaxPendingBytes int64

	// Outbox, when set, lets the pipeline switch to outbox mode (see
	// outbox.go).
	Outbox Outbox
	// MaxRetainedWAL is the slot's retained WAL, in bytes, above which
	// outbox mode starts; 0: never for that reason.
	MaxRetainedWAL int64
	// RetainedWAL returns the slot's retained WAL as last measured.
	RetainedWAL func() int64
	// OutboxAfter is how long Userpilot may accept nothing while changes
	// wait before outbox mode starts; 0 → DefaultOutboxAfter.
	OutboxAfter time.Duration
	// ReadAheadAfter is how long the memory window may hold the input
	// back, full with transactions waiting and fewer changes than it holds
	// taken in meanwhile, before outbox mode starts (see backlog.go);
	// 0 → DefaultReadAheadAfter.
	ReadAheadAfter time.Duration
	// Status receives the mode and outbox figures (for `pgpilot status`).
	Status func(state.Status)

	// OnDelete is the mapping's policy for deleted companies rows: "ignore"
	// (or ""), "mark" (send DeleteMark as metadata) or "delete" (Userpilot's
	// delete API, a GDPR erasure).
	OnDelete   string
	DeleteMark userpilot.Metadata
	// Users is the same for deleted users rows (users.on_delete).
	Users DeletePolicy

	// Recorder, when set, hears of every transaction taken in.
	Recorder Recorder
	// InFlight, when set, makes what may reach Userpilot unseen durable
	// (see inflight.go).
	InFlight InFlight

	// Breaker tells bad records from a refusing endpoint (see
	// breaker.go); nil → one with the defaults, for this pipeline alone.
	Breaker *Breaker

	// Retrying, when set, is how many calls to Userpilot are being retried
	// now (its answers fail): while any is, delivery waits on Userpilot,
	// not on itself (see Liveness).
	Retrying func() int

	Logger *slog.Logger
}

// DeletePolicy is what a deleted row does: "ignore" (or ""), "mark" (send
// Mark as metadata) or "delete" (Userpilot's delete API).
type DeletePolicy struct {
	OnDelete string
	Mark     userpilot.Metadata
}

// policy is entity's delete policy.
func (o Options) policy(entity mapping.Entity) DeletePolicy {
	if entity == mapping.User {
		return o.Users
	}
	return DeletePolicy{OnDelete: o.OnDelete, Mark: o.DeleteMark}
}

// Defaults of the delivery settings the config file sets
// (delivery.max_retained_wal, delivery.outbox_after).
const (
	// DefaultMaxRetainedWAL is the slot's retained WAL, in bytes, above
	// which outbox mode starts.
	DefaultMaxRetainedWAL = 256 << 20
	// DefaultOutboxAfter is how long Userpilot may accept nothing while
	// changes wait before outbox mode starts.
	DefaultOutboxAfter = 5 * time.Minute
	// DefaultReadAheadAfter is how long a backlog may hold the input back
	// before it is read ahead into the outbox.
	DefaultReadAheadAfter = 15 * time.Second
	// DefaultMaxPendingBytes is the memory window's byte bound: 5 MB is
	// about 14,000 companies of seven keys (BenchmarkPendingCompanyBytes),
	// a full bulk job in flight and a part of the next one. (At 6 MB the
	// 1M-row catch-up and initial sync, at the speed the pipelined jobs
	// reach, peaked at 64.4 and 64.9 MB RSS; at 5 MB, 55.7 and 54.7 MB,
	// no slower.)
	DefaultMaxPendingBytes = 5 << 20
)

// ErrSchema is wrapped when the table's columns no longer fit the mapping.
// It is permanent: retrying cannot help until the mapping is fixed.
var ErrSchema = errors.New("the table no longer fits the mapping")

// Stats counts what a Pipeline did.
type Stats struct {
	// Changes read; Coalesced merged into a pending state instead of making
	// a call; Skipped no-ops; Delivered per path; DeadLettered set aside.
	Changes, Coalesced, Skipped, Realtime, Bulk, BulkJobs, DeadLettered, Deletes, Truncates atomic.Int64
	// Pending is how many companies (and users) are undelivered now;
	// InMemory how many of them memory holds (the rest are only in the
	// outbox).
	Pending, InMemory atomic.Int64
	// Users counts, of the above, what was of users (metrics label them
	// entity="user", the rest entity="company").
	Users UserStats
}

// UserStats are the counters of Stats that were of users.
type UserStats struct {
	Skipped, Realtime, Bulk, DeadLettered atomic.Int64
}

// Pipeline delivers transactions. Use New.
//
// It is made of parts, each owning its state, all of them the dispatcher's
// (the goroutine running Run) but for what their own goroutines are handed
// as values:
//
//   - ledger: what is owed, sent and done, and how far the checkpoint may
//     go (no I/O);
//   - encoder: rows to packed fields, and those to companies, bodies and
//     profiles;
//   - outbox: the Mode, and what is owed on disk;
//   - jobs: Userpilot's one bulk job (JobState), and the jobs being
//     recorded; their goroutines run a jobRunner;
//   - deletes: deletions, one request at a time;
//   - refusals: refused records held for the breaker's verdict;
//   - leftover: what an earlier process left in flight;
//   - input: whether reading goes on, and the burst being read.
//
// Run is a select whose cases each hand one event to the part it is for.
type Pipeline struct {
	opts  Options
	log   *slog.Logger
	stats Stats

	enc      *encoder
	ledger   *ledger
	outbox   *outbox
	jobs     jobs
	deletes  *deleter
	refusals refusals
	leftover leftover
	in       input
	// loaded: what earlier runs left (leftover, outbox, estimate) is
	// loaded, once per pipeline.
	loaded bool

	sizing sizing // what the real-time path achieves, for bulkShare
	// est is what the bulk path is believed to do; learned holds a copy
	// for other goroutines.
	est     bulkEstimate
	learned learnedView
	// estChanged: est changed since it was last written to the store (at
	// estKeptAt).
	estChanged bool
	estKeptAt  time.Time

	// takenAt is when the transaction being added was taken in: the clock
	// read once for its changes.
	takenAt time.Time
	// progress is when Userpilot last accepted something, or when changes
	// started waiting after an idle spell (for outbox_after).
	progress time.Time
	// backlog watches whether the window holds the input back for long;
	// waiting says whether transactions wait in the input.
	backlog  backlog
	waiting  func() bool
	statusAt time.Time
	report   *report
	// asked and answers are room for a look-up in the no-op index.
	asked   []*entry
	answers []bool
	// next is the company unpacked for the ready front, for a real-time
	// worker (unpacked once, whatever the number of turns it waits).
	next nextCall

	// live is what the dispatcher publishes for the liveness watch.
	live published
	// where carries `pgpilot why`'s questions to the dispatcher (see
	// whereabouts.go).
	where chan whereRequest
}

// New makes a Pipeline.
func New(opts Options) *Pipeline {
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.RealtimeRate <= 0 {
		opts.RealtimeRate = userpilot.DefaultRateLimit
	}
	if opts.BulkRate <= 0 {
		opts.BulkRate = userpilot.DefaultBulkRate
	}
	if opts.BulkOverhead <= 0 {
		opts.BulkOverhead = 10 * time.Second
	}
	if opts.MinBulk <= 0 {
		opts.MinBulk = 100
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 2 * time.Second
	}
	if opts.Tick <= 0 {
		opts.Tick = 200 * time.Millisecond
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = 25_000
	}
	if opts.MaxPendingBytes <= 0 {
		opts.MaxPendingBytes = DefaultMaxPendingBytes
	}
	if opts.OutboxAfter <= 0 {
		opts.OutboxAfter = DefaultOutboxAfter
	}
	if opts.ReadAheadAfter <= 0 {
		opts.ReadAheadAfter = DefaultReadAheadAfter
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Breaker == nil {
		opts.Breaker = &Breaker{}
	}
	p := &Pipeline{opts: opts, log: opts.Logger, deletes: newDeleter(), refusals: refusals{breaker: opts.Breaker},
		leftover: leftover{doubt: map[string]bool{}}, report: newReport(), where: make(chan whereRequest)}
	p.enc = newEncoder(opts.Mapping)
	for _, entity := range []mapping.Entity{mapping.Company, mapping.User} {
		if pol := opts.policy(entity); pol.OnDelete == "mark" {
			p.enc.marks[entity].md = pol.Mark
			if pol.Mark == nil {
				p.enc.marks[entity].md = userpilot.Metadata{}
			}
		}
	}
	var store Outbox
	if opts.Outbox != nil {
		store = opts.Outbox
	}
	p.outbox = newOutbox(store, &p.enc.keys, opts.Logger)
	p.ledger = newLedger(opts.Checkpointed, opts.MaxPending, opts.MaxPendingBytes, p.outbox)
	p.live.init(time.Now())
	return p
}

// Stats returns the pipeline's counters.
func (p *Pipeline) Stats() *Stats { return &p.stats }

// loop is what Run's goroutines talk over.
type loop struct {
	work       chan call
	results    chan realtimeResult
	jobEvents  chan jobEvent
	deleteDone chan error
	tick       *time.Ticker
	quiet      *time.Timer
}

// Run delivers what it reads from in until in is closed and everything is
// delivered (nil), ctx is done, or delivery fails for good. Whatever is not
// checkpointed when it returns is simply streamed again after a restart.
func (p *Pipeline) Run(ctx context.Context, in <-chan row.Transaction) error {
	// What is read, and the log's report, are this Run's.
	p.in, p.report = input{}, newReport()
	p.progress = time.Now()
	p.backlog, p.waiting = backlog{}, func() bool { return len(in) > 0 }
	if err := p.load(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lp := loop{work: make(chan call), results: make(chan realtimeResult, p.opts.Workers),
		// A job's goroutine says what happens in order on one channel; a
		// completed job and the next one's first answers may overlap.
		jobEvents: make(chan jobEvent, 4), deleteDone: make(chan error, 1),
		tick: time.NewTicker(p.opts.Tick), quiet: time.NewTimer(time.Hour)}
	defer lp.tick.Stop()
	defer lp.quiet.Stop()
	defer func() {
		// What was learned since the last write of the estimate.
		if err := p.keepEstimate(time.Now(), true); err != nil {
			p.log.Warn("the bulk estimate could not be kept; the next start measures again", "error", err)
		}
	}()
	var wg sync.WaitGroup
	defer wg.Wait() // no goroutine outlives Run
	defer cancel()
	c := p.caller()
	for range p.opts.Workers {
		wg.Go(func() { c.work(ctx, lp.work, lp.results) })
	}
	defer close(lp.work)
	for {
		if err := p.startWork(ctx, &wg, lp); err != nil {
			return err
		}
		if end, err := p.ended(); end {
			return err
		}
		var err error
		select {
		case <-p.quietC(lp.quiet):
			// The input paused: a job may be sized, at the loop's top.
		case txn, ok := <-p.inputC(in):
			err = p.take(txn, ok)
		case p.workC(lp.work) <- p.next.call:
			p.handedOut()
		case r := <-lp.results:
			err = p.realtimeDone(r)
		case ev := <-lp.jobEvents:
			err = p.jobEvent(ev)
		case answer := <-lp.deleteDone:
			err = p.deleteDone(answer)
		case q := <-p.where:
			p.answerWhere(q)
		case <-lp.tick.C:
			err = p.tick()
		case <-ctx.Done():
			err = ctx.Err()
		}
		if err != nil {
			return err
		}
	}
}

// load reads what earlier runs left, once per pipeline: the estimate, what
// may be in flight, and the outbox (after what is in flight, so that owed
// states wait behind held ones).
func (p *Pipeline) load() error {
	if p.loaded {
		return nil
	}
	p.loaded = true
	if err := p.loadEstimate(); err != nil {
		return err
	}
	if p.opts.InFlight != nil {
		jobs, err := p.leftover.load(p.opts.InFlight, p.ledger, &p.enc.keys)
		if err != nil {
			return err
		}
		for _, j := range jobs {
			p.log.Warn("a bulk job from before the restart may still be running at Userpilot; its companies wait for it to end",
				"job", j.ID, "companies", len(j.Companies), "submitted", j.Began.Format(time.RFC3339))
		}
	}
	if err := p.outbox.load(p.ledger, p.owedFrom()); err != nil {
		return err
	}
	p.reportStatus(true)
	return nil
}

// owedFrom is how outbox records become entries now.
func (p *Pipeline) owedFrom() owedFrom {
	return owedFrom{safe: p.ledger.checkpointed, doubt: p.leftover.inDoubt}
}

// caller is what the real-time workers and delete requests may call.
func (p *Pipeline) caller() caller {
	return caller{sender: p.opts.Sender, inflight: p.opts.InFlight, index: p.opts.Index}
}

// runner is what a bulk job's goroutine may call.
func (p *Pipeline) runner() jobRunner {
	return jobRunner{sender: p.opts.Sender, inflight: p.opts.InFlight, index: p.opts.Index, poll: p.opts.PollInterval, log: p.log}
}

// startWork is the loop's turn before it waits: what can be decided or
// started without an event is, in this order: no-ops skipped, deletions
// collected and sent, a job from before the restart resumed, a bulk job
// sized and started.
func (p *Pipeline) startWork(ctx context.Context, wg *sync.WaitGroup, lp loop) error {
	// Whether a change of the burst merged into a pending one: the input
	// pause a job waits for (quietFor). Only take merges.
	merged := p.in.merged(p.stats.Coalesced.Load())
	if err := p.skipNoOps(); err != nil {
		return err
	}
	now := time.Now()
	p.deletes.collect(p.ledger, now)
	stopped := p.refusals.stopped() // the breaker tripped: send nothing more
	if !stopped && !p.deletes.busy() {
		if batch := p.deletes.next(now); batch != nil {
			ids := make([]string, len(batch))
			for i, e := range batch {
				ids[i] = e.id
			}
			c := p.caller()
			wg.Go(func() { lp.deleteDone <- c.deleteCall(ctx, ids) })
		}
	}
	p.ledger.watermark() // drops finished entries, so the counts below are true
	p.stats.Pending.Store(int64(p.pending()))
	p.stats.InMemory.Store(int64(len(p.ledger.companies)))
	if !stopped && !p.jobs.busy() {
		if hj := p.leftover.next(); hj != nil {
			n := p.jobs.resume(hj, now)
			run := heldRun{n: n, id: hj.job.ID, key: hj.job.Key, records: hj.records, began: hj.job.Began, est: p.est,
				profiles: p.enc.profileValues(hj.entries).plus(p.enc.profileValues(hj.alsoOlder))}
			r := p.runner()
			wg.Go(func() { r.resume(ctx, run, lp.jobEvents) })
		}
	}
	if !stopped && !p.jobs.busy() && !p.opts.NoBulk && p.jobs.nextNow(p.ledger.ready.len(), p.ledger.full(), p.opts.MinBulk) && p.bulkTime(now, merged) {
		batch, body, err := p.takeBulk(now)
		if err != nil {
			return err
		}
		if len(batch) > 0 {
			job := bulkJob{n: p.jobs.start(batch, now), body: body, profiles: p.enc.profileValues(batch), est: p.est}
			r := p.runner()
			wg.Go(func() { r.run(ctx, job, lp.jobEvents) })
		}
	}
	// A bulk job just sized may have taken everything around a deletion,
	// leaving it at the front: it goes to the delete batch, never to a
	// real-time worker (which would identify it).
	p.deletes.collect(p.ledger, now)
	return nil
}

// ended says whether Run is done, and with what: nothing left to deliver
// after the input closed (nil, or the schema problem that closed it), or
// the breaker tripped with only what it holds left (ErrRefusing: what is
// held is never delivered by this process; the stream or the outbox has it
// for the next start).
func (p *Pipeline) ended() (bool, error) {
	if !p.in.closed || p.jobs.busy() || p.deletes.busy() {
		return false, nil
	}
	switch {
	case p.ledger.idle() && p.outbox.empty():
		if err := p.tick(); err != nil {
			return true, err
		}
		return true, p.in.stopFor
	case p.refusals.stopped() && p.ledger.inflight == len(p.refusals.held)+p.deletes.parked():
		if err := p.tick(); err != nil {
			return true, err
		}
		return true, fmt.Errorf("%w: %s", ErrRefusing, p.opts.Breaker.Reason())
	}
	return false, nil
}

// inputC is in while the pipeline reads: not once closed, nor while memory
// is full in hold mode (in outbox mode reading goes on: holding WAL back is
// what outbox mode exists to avoid).
func (p *Pipeline) inputC(in <-chan row.Transaction) <-chan row.Transaction {
	if p.in.closed || (p.ledger.full() && p.outbox.mode != ModeOutbox) {
		return nil
	}
	return in
}

// nextCall is the ready front, unpacked for a real-time worker.
type nextCall struct {
	e    *entry
	md   fields // what call was unpacked from
	call call
}

// workC is work while a real-time worker should take the ready front (then
// p.next holds it), else nil.
func (p *Pipeline) workC(work chan call) chan call {
	l := p.ledger
	if l.ready.len() == 0 || p.refusals.stopped() || !p.realtimeWanted(time.Now()) {
		return nil
	}
	e := l.ready.front()
	if p.next.e != e || !sameFields(p.next.md, e.md) {
		p.next = nextCall{e: e, md: e.md, call: p.enc.call(e)}
	}
	return work
}

// handedOut notes that a real-time worker took the ready front.
func (p *Pipeline) handedOut() {
	p.ledger.ready.popFront()
	p.ledger.send(p.next.e, time.Now())
	p.next = nextCall{}
}

// sameFields reports whether a and b are the same packed fields (not
// equal ones: fields are replaced, never changed in place).
func sameFields(a, b fields) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// quietC wakes the loop when the input has paused long enough for a job to
// be sized (bulkTime): on the tick alone, the end of every backlog waited
// up to a tick more.
func (p *Pipeline) quietC(quiet *time.Timer) <-chan time.Time {
	if p.in.closed || p.refusals.stopped() || p.jobs.busy() || p.opts.NoBulk || p.ledger.ready.len() == 0 || p.in.last.IsZero() {
		return nil
	}
	ok, wait := p.in.paused(time.Now(), p.in.merged(p.stats.Coalesced.Load()))
	if ok {
		return nil
	}
	quiet.Reset(wait)
	return quiet.C
}

// skipNoOps finishes, without a call, ready entries at the front that hold
// only values Userpilot already has.
func (p *Pipeline) skipNoOps() error {
	l := p.ledger
	for l.ready.len() > 0 {
		e := l.ready.front()
		if p.needsLookUp(e) {
			// The entries behind it are looked up in the same read.
			if err := p.lookUp(l.ready.first(lookAhead)); err != nil {
				return err
			}
		}
		same, err := p.noOp(e)
		if err != nil || !same {
			return err
		}
		l.ready.popFront()
		p.skip(e)
	}
	return nil
}

// lookAhead is how many ready entries one read of the no-op index looks up.
const lookAhead = 256

// noOp reports whether e would change nothing in Userpilot. Each entry is
// looked up once; a merge makes it be looked up again. The answer stays
// true while the entry waits: its company has nothing else on its way, so
// nothing records a newer state of it in the index meanwhile.
func (p *Pipeline) noOp(e *entry) (bool, error) {
	if p.opts.Index == nil || e.delete || e.resend {
		return false, nil
	}
	if !e.checked {
		if err := p.lookUp([]*entry{e}); err != nil {
			return false, err
		}
	}
	return e.same, nil
}

func (p *Pipeline) needsLookUp(e *entry) bool {
	return p.opts.Index != nil && !e.checked && !e.delete && !e.resend
}

// lookUp asks the index about those of es not looked up yet, in one read:
// one per company was most of a change's cost in a catch-up.
func (p *Pipeline) lookUp(es []*entry) error {
	// In room kept from one look-up to the next: made anew, it was a job's
	// 10,000 entries and answers at every job.
	ask := p.asked[:0]
	defer func() { clear(ask); p.asked = ask[:0] }() // keeps no entry alive
	for _, e := range es {
		if p.needsLookUp(e) {
			ask = append(ask, e)
		}
	}
	if len(ask) == 0 {
		return nil
	}
	p.answers = slices.Grow(p.answers[:0], 2*len(ask))[:2*len(ask)]
	same, absent := p.answers[:len(ask)], p.answers[len(ask):]
	if err := p.opts.Index.UnchangedProfiles(p.enc.profiles(ask), same, absent); err != nil {
		return err
	}
	for i, e := range ask {
		e.checked, e.same, e.absent = true, same[i], absent[i]
	}
	return nil
}

// skip finishes e without a call: Userpilot holds it already.
func (p *Pipeline) skip(e *entry) {
	p.ledger.send(e, time.Time{})
	p.stats.Skipped.Add(1)
	if entity, _ := subjectOf(e.id); entity == mapping.User {
		p.stats.Users.Skipped.Add(1)
	}
	p.report.skipped++
	p.finish(e)
}

// finish marks e done: delivered, skipped or set aside.
func (p *Pipeline) finish(e *entry) {
	if e.delete {
		p.deletes.forget(e)
	}
	p.ledger.finish(e)
	p.live.moves++
}
