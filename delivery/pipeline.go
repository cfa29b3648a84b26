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

	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// Sender is Userpilot. Calls retry transient failures themselves; a
// *userpilot.RejectedError means Userpilot refused the record(s); any other
// error means "not delivered".
type Sender interface {
	IdentifyCompany(ctx context.Context, co userpilot.Company) error
	DeleteCompanies(ctx context.Context, ids []string) error
	// BulkIdentify submits a bulk job of the companies body holds.
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
	// Status receives the mode and outbox figures (for `pgpilot status`).
	Status func(state.Status)

	// OnDelete is the mapping's policy for deleted rows: "ignore" (or ""),
	// "mark" (send DeleteMark as metadata) or "delete" (Userpilot's delete
	// API, a GDPR erasure).
	OnDelete   string
	DeleteMark userpilot.Metadata

	// Recorder, when set, hears of every transaction taken in.
	Recorder Recorder
	// InFlight, when set, makes what may reach Userpilot unseen durable
	// (see inflight.go).
	InFlight InFlight

	// Breaker tells bad records from a refusing endpoint (see
	// breaker.go); nil → one with the defaults, for this pipeline alone.
	Breaker *Breaker

	Logger *slog.Logger
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
	// Pending is how many companies are undelivered now; InMemory how
	// many of them memory holds (the rest are only in the outbox).
	Pending, InMemory atomic.Int64
}

// Pipeline delivers transactions. Use New.
type Pipeline struct {
	opts  Options
	log   *slog.Logger
	stats Stats

	// mappers holds the mapping compiled for each description of the
	// table in use: the stream's and the snapshot's take turns.
	mappers row.PerRelation[*mapper]
	// rowJSON and rowVals are room for one row's values while it is mapped
	// and packed (the dispatcher's).
	rowJSON []byte
	rowVals []json.RawMessage
	// memberJSON is room for one company's metadata members while a bulk
	// body is written; asked and answers, for a look-up in the no-op index
	// (the dispatcher's).
	memberJSON []byte
	asked      []*entry
	answers    []bool

	companies map[string]*company
	order     queue // every undelivered entry, oldest first (and finished ones until they reach the front)
	// undelivered counts the entries not finished: what is pending (order
	// also holds finished entries behind an older undelivered one).
	undelivered int
	ready       queue // entries that may be sent now, oldest first
	inflight    int
	received    pglogrepl.LSN // end of the last whole transaction received
	done        pglogrepl.LSN // checkpointed
	// takenAt is when the transaction being added was taken in: the clock
	// read once for its changes (see send).
	takenAt time.Time
	// seq numbers entries in the order they are made; marks wait, oldest
	// first, for every entry made before them to be delivered.
	seq       uint64
	marks     []pendingMark
	markDone  any // the newest mark with everything before it delivered
	markSaved any // the mark last passed to Checkpoint
	bulkBusy  bool
	spare     spareRoom // a sent body's room, for the next (see bulk.go)
	// jobStarted and jobRecords are the running job's start and size (for
	// bulkAlone: is it overdue?).
	jobStarted time.Time
	jobRecords int
	// recording counts completed jobs whose profiles are still being
	// written to the index: their companies stay in flight until then (a
	// look-up must not read the state before the job), but Userpilot's one
	// bulk job may already be the next.
	recording int
	sizing    sizing // what the real-time path achieves, for bulkShare
	// est is what the bulk path is believed to do (the dispatcher's;
	// learned holds a copy for other goroutines).
	est       bulkEstimate
	estLoaded bool
	learned   learnedView
	// deletes wait for one delete request at a time (Userpilot allows one
	// every 2 seconds).
	deletes    []*entry
	deleteBusy bool
	// deleteSplits are the halves of refused delete batches, sent (one
	// request at a time too) before any other deletion; see delete.go.
	deleteSplits [][]*entry
	// splitAt is when the delete batch an entry was in was first refused
	// and split (see delete.go); kept beside the entries, which are many,
	// while split ones are few.
	splitAt map[*entry]time.Time
	// deleteAccepted is when Userpilot last accepted a delete request.
	deleteAccepted time.Time
	// progress is when Userpilot last accepted something, or when changes
	// started waiting after an idle spell.
	progress time.Time
	// jobAnswered is when Userpilot last answered for a running bulk job
	// (submitted, or its status read): a job it is working through is
	// progress too. Unix nanoseconds; written by the job's goroutine.
	jobAnswered atomic.Int64

	// doubt holds the companies an earlier run may have sent without
	// seeing the outcome (see inDoubt).
	doubt map[string]bool
	// held are bulk jobs from before the restart, oldest first, waited for
	// before any new job.
	held           []*heldJob
	inFlightLoaded bool

	// refusals are refused records waiting for the breaker's verdict,
	// oldest first; streak counts the refusals since the last acceptance.
	refusals []refusal
	streak   streak
	// vouched is when the newest accepted call was sent: Userpilot worked
	// then, so a refusal of a call sent before it is a bad record.
	vouched time.Time

	// keys numbers the metadata keys of the entries' packed fields;
	// markNums and mark are on_delete's mark, numbered and packed once.
	keys     keyTable
	markNums []uint32
	mark     fields
	// windowBytes is what the entries in order hold (entry.size), bounded
	// by MaxPendingBytes.
	windowBytes int64

	mode, modeReason string
	dirty            map[string]struct{} // companies whose owed state changed since the last outbox write
	overflow         map[string]*spilled // newer states of companies only on disk, until the next write
	// gone are companies delivered and so no longer in memory whose outbox
	// record (its size) the next write removes.
	gone            map[string]int
	diskOnly        int // companies owed in the outbox and not in memory
	outboxCompanies int // companies with an outbox record
	outboxBytes     int64
	statusAt        time.Time
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
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Breaker == nil {
		opts.Breaker = &Breaker{}
	}
	return &Pipeline{opts: opts, log: opts.Logger, companies: map[string]*company{},
		received: opts.Checkpointed, done: opts.Checkpointed, mode: state.ModeHold,
		dirty: map[string]struct{}{}, overflow: map[string]*spilled{}, gone: map[string]int{}, splitAt: map[*entry]time.Time{}, doubt: map[string]bool{}}
}

// Stats returns the pipeline's counters.
func (p *Pipeline) Stats() *Stats { return &p.stats }

type realtimeResult struct {
	e   *entry
	err error
}

type bulkResult struct {
	entries []*entry
	// fallback: send these on the real-time path (the job was refused or
	// kept failing), where a bad record is refused alone.
	fallback bool
	err      error
	took     time.Duration
	// completed, in a message of its own, says the job completed at
	// Userpilot, with what it showed of the bulk path; the job's result
	// comes after it, with freed set.
	completed *jobObservation
	freed     bool
	// held is set for a job from before the restart (resumeHeld), with
	// the status it ended with ("unknown" when its id was never learnt).
	held        *heldJob
	heldOutcome string
}

// Run delivers what it reads from in until in is closed and everything is
// delivered (nil), ctx is done, or delivery fails for good. Whatever is not
// checkpointed when it returns is simply streamed again after a restart.
func (p *Pipeline) Run(ctx context.Context, in <-chan row.Transaction) error {
	p.progress = time.Now()
	if err := p.loadEstimate(); err != nil {
		return err
	}
	if err := p.loadInFlight(); err != nil {
		return err
	}
	if err := p.loadOutbox(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan *entry)
	results := make(chan realtimeResult, p.opts.Workers)
	// A job's goroutine says here when it completed at Userpilot (see
	// recording) and when it is done; one channel, so the dispatcher hears
	// the two in that order.
	bulkDone := make(chan bulkResult, 2)
	reply := func(r bulkResult) {
		select {
		case bulkDone <- r:
		case <-ctx.Done():
		}
	}
	deleteDone := make(chan deleteResult, 1)
	var wg sync.WaitGroup
	defer wg.Wait() // no goroutine outlives Run
	defer cancel()
	for range p.opts.Workers {
		wg.Go(func() {
			for e := range work {
				// Marked before the call, unmarked by the index's write of
				// its outcome: killed in between, the next run knows.
				co := p.company(e)
				err := p.markSending(co.CompanyID)
				if err == nil {
					err = p.opts.Sender.IdentifyCompany(ctx, co)
				}
				if err == nil && p.opts.Index != nil {
					// Recorded before the dispatcher hears of it, so a
					// later no-op check never reads an older state.
					err = p.opts.Index.Record([]userpilot.Company{co})
				}
				select {
				case results <- realtimeResult{e, err}:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	defer close(work)

	tick := time.NewTicker(p.opts.Tick)
	defer tick.Stop()
	// quiet wakes the loop when the input has paused long enough for a
	// job to be sized (bulkTime): on the tick alone, the end of every
	// backlog waited up to a tick more.
	quiet := time.NewTimer(time.Hour)
	defer quiet.Stop()
	report := newReport()
	closed := false
	// stopFor is a schema problem met in the input: stop reading, but
	// deliver and checkpoint everything before it first, so that after the
	// mapping is fixed the stream resumes exactly at the transaction that
	// needed the fix (older ones would not fit the new mapping).
	var stopFor error
	var lastInput, burstStart time.Time
	var burstCoalesced int64 // the changes merged into pending ones before the burst
	for {
		// Whether a change of the burst merged into a pending one: the
		// input pause a job waits for (quietFor). Only add merges.
		merged := p.stats.Coalesced.Load() > burstCoalesced
		if err := p.skipNoOps(report); err != nil {
			return err
		}
		p.collectDeletes()
		stopped := p.stopped() // the breaker tripped: send nothing more
		if !stopped && !p.deleteBusy && len(p.deletes)+len(p.deleteSplits) > 0 {
			batch := p.nextDeletes()
			p.deleteBusy = true
			now := time.Now()
			for _, e := range batch {
				e.sentAt = now // collected earlier, sent now
			}
			wg.Go(func() { deleteDone <- p.runDelete(ctx, batch) })
		}
		p.watermark() // drops finished entries, so the counts below are true
		p.stats.Pending.Store(int64(p.pending()))
		p.stats.InMemory.Store(int64(len(p.companies)))
		if !stopped && !p.bulkBusy && len(p.held) > 0 {
			hj := p.held[0]
			p.held = p.held[1:]
			p.bulkBusy = true
			p.jobStarted, p.jobRecords = time.Now(), len(hj.entries)
			est := p.est
			wg.Go(func() { reply(p.resumeHeld(ctx, hj, est)) })
		}
		if !stopped && !p.bulkBusy && p.nextJobNow() && !p.opts.NoBulk && p.bulkTime(lastInput, burstStart, merged, closed) {
			batch, body, err := p.takeBulk(report)
			if err != nil {
				return err
			}
			if len(batch) > 0 {
				p.bulkBusy = true
				p.jobStarted, p.jobRecords = time.Now(), len(batch)
				est := p.est
				wg.Go(func() {
					free := func(o jobObservation) { reply(bulkResult{completed: &o}) }
					reply(p.runBulk(ctx, batch, &body, est, free))
				})
			}
		}
		if closed && p.order.len() == 0 && p.inflight == 0 && !p.bulkBusy && !p.deleteBusy && p.diskOnly == 0 && len(p.overflow) == 0 {
			if err := p.tick(); err != nil {
				return err
			}
			return stopFor
		}
		if closed && stopped && p.inflight == p.parked() && !p.bulkBusy && !p.deleteBusy {
			// What is held is never delivered by this process: the
			// stream (or the outbox) has it for the next start.
			if err := p.tick(); err != nil {
				return err
			}
			return fmt.Errorf("%w: %s", ErrRefusing, p.opts.Breaker.Reason())
		}
		var inCh <-chan row.Transaction
		if !closed && (!p.full() || p.mode == state.ModeOutbox) {
			inCh = in
		}
		// A bulk job just sized may have taken everything around a
		// deletion, leaving it at the front: it goes to the delete batch,
		// never to a real-time worker (which would identify it).
		p.collectDeletes()
		var workCh chan<- *entry
		var next *entry
		if p.ready.len() > 0 && !stopped && p.realtimeWanted(time.Now()) {
			workCh, next = work, p.ready.front()
		}
		var quietC <-chan time.Time
		if !closed && !stopped && !p.bulkBusy && !p.opts.NoBulk && p.ready.len() > 0 && !lastInput.IsZero() {
			if wait := quietFor(lastInput, burstStart, merged) - time.Since(lastInput); wait > 0 {
				quiet.Reset(wait)
				quietC = quiet.C
			}
		}
		select {
		case <-quietC:
			// The input paused: a job may be sized, at the loop's top.
		case txn, ok := <-inCh:
			if !ok {
				closed = true
				continue
			}
			coalesced := p.stats.Coalesced.Load()
			if err := p.add(txn); err != nil {
				if errors.Is(err, ErrSchema) {
					stopFor, closed = err, true
					continue
				}
				return err
			}
			if len(p.overflow) >= maxOverflow {
				if err := p.flushOverflow(); err != nil {
					return err
				}
			}
			if now := time.Now(); now.Sub(lastInput) >= inputQuiet {
				burstStart, lastInput, burstCoalesced = now, now, coalesced
			} else {
				lastInput = now
			}
		case workCh <- next:
			p.ready.popFront()
			p.send(next, time.Now())
		case r := <-results:
			if err := p.realtimeDone(r, report); err != nil {
				return err
			}
		case r := <-bulkDone:
			if r.completed != nil {
				// Completed at Userpilot: the account's one job may be
				// the next, while this one's profiles are written to the
				// index.
				p.bulkBusy = false
				p.recording++
				// Userpilot applied it: that is progress, for the switch
				// to the outbox, before the index write is done too.
				p.progress = time.Now()
				if err := p.learnJob(*r.completed); err != nil {
					return err
				}
				continue
			}
			if r.freed {
				p.recording--
			} else {
				p.bulkBusy = false
			}
			finish := p.bulkFinished
			if r.held != nil {
				finish = p.heldFinished
			}
			if err := finish(r, report); err != nil {
				return err
			}
		case r := <-deleteDone:
			p.deleteBusy = false
			if err := p.deleteFinished(r); err != nil {
				return err
			}
		case <-tick.C:
			p.publish()
			if err := p.tick(); err != nil {
				return err
			}
			report.maybeLog(p)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// inputQuiet is how long the input must pause before a bulk job is sized:
// a job cannot take records added after it was submitted, so sizing it in
// the middle of a burst sends the rest of the burst the slow way, and the
// companies in it that the burst changes again go twice. A burst that has
// lasted longer must pause longer (half its length, up to maxInputQuiet):
// between two statements that each update many rows, Postgres sends
// nothing while it runs the next. That longer wait is for companies
// changed again: a burst that has changed none twice (a catch-up of new
// rows) waits inputQuiet only, as the end of every catch-up did 300 ms
// for nothing to merge.
const (
	inputQuiet    = 100 * time.Millisecond
	maxInputQuiet = 300 * time.Millisecond
)

// quietFor is how long the input must pause, after a burst from burstStart
// to lastInput, before a bulk job is sized; merged says whether a change of
// the burst merged into one still pending.
func quietFor(lastInput, burstStart time.Time, merged bool) time.Duration {
	if !merged {
		return inputQuiet
	}
	return min(maxInputQuiet, max(inputQuiet, lastInput.Sub(burstStart)/2))
}

// bulkTime says whether to consider a bulk job now: the burst (input since
// burstStart) has been read (input quiet, or closed), or waiting would not
// make it better (the backlog fills a whole job, or memory is half full
// and reading has to go on).
func (p *Pipeline) bulkTime(lastInput, burstStart time.Time, merged, closed bool) bool {
	return closed || time.Since(lastInput) >= quietFor(lastInput, burstStart, merged) ||
		p.ready.len() >= userpilot.MaxBulkRecords || p.order.len() >= p.opts.MaxPending/2 || p.windowBytes >= p.opts.MaxPendingBytes/2
}

// add maps a transaction's changes into pending entries.
func (p *Pipeline) add(txn row.Transaction) error {
	if p.seen(txn) {
		return nil
	}
	if p.opts.Recorder != nil {
		p.opts.Recorder.Took(txn)
	}
	p.takenAt = time.Now()
	for _, ch := range txn.Changes {
		p.stats.Changes.Add(1)
		switch ch.Op {
		case row.Insert, row.Update:
			if err := p.addKeyChange(txn, ch); err != nil {
				return err
			}
			if err := p.addRow(txn, ch); err != nil {
				return err
			}
		case row.Delete:
			p.stats.Deletes.Add(1)
			if err := p.addDelete(txn, ch); err != nil {
				return err
			}
		case row.Truncate:
			p.stats.Truncates.Add(1)
			p.log.Warn("TRUNCATE is never mirrored to Userpilot: the profiles stay",
				"table", ch.Relation.Table.String(), "commit_lsn", txn.CommitLSN.String())
		}
	}
	if txn.EndLSN > p.received {
		p.received = txn.EndLSN
	}
	if txn.Mark != nil {
		p.marks = append(p.marks, pendingMark{seq: p.seq, mark: txn.Mark})
	}
	return nil
}

// seen reports whether txn was received before: the pipeline outlives
// replication sessions, and a new session streams again from the durable
// checkpoint, which may be behind what was received. What was received is
// merged already (merging it again could put an older value over a newer
// one), so it is dropped. A piece of a large transaction is a repeat when
// its transaction committed before the last whole one received; a chunk
// never is (a snapshot's rows are read anew, in a newer MVCC snapshot).
func (p *Pipeline) seen(txn row.Transaction) bool {
	switch txn.Kind {
	case row.Commit, row.Marker:
		return txn.EndLSN != 0 && txn.EndLSN <= p.received
	case row.Piece:
		return txn.CommitLSN < p.received
	}
	return false
}

// pendingMark is a Transaction's Mark, waiting for the entries made before
// it (seq below its own) to be delivered.
type pendingMark struct {
	seq  uint64
	mark any
}

func (p *Pipeline) addRow(txn row.Transaction, ch row.Change) error {
	m, err := p.mapperFor(ch.Relation)
	if err != nil {
		return err
	}
	// Mapped into room reused from row to row and packed from there: no
	// map of the row's metadata (docs/design.md, "Memory": no map per
	// change).
	vals := slices.Grow(p.rowVals[:0], len(m.nums))[:len(m.nums)]
	id, buf, err := m.Map(ch.Values, p.rowJSON[:0], vals)
	if cap(buf) <= maxRowRoom {
		p.rowJSON = buf // a huge row's room is not kept
	}
	p.rowVals = vals
	var held heldBack
	if err != nil && !errors.As(err, &held) {
		// A row that cannot become a payload is set aside; the stream goes on.
		return p.deadLetter(state.DeadLetter{LSN: state.LSN(txn.CommitLSN), CompanyID: id,
			Reason: "not mapped: " + err.Error(), Payload: userpilot.Company{CompanyID: id}})
	}
	if held != nil {
		// One bad value costs one key: the dead letter names it and its
		// value, the company's other keys go out.
		if err := p.deadLetter(state.DeadLetter{LSN: state.LSN(txn.CommitLSN), CompanyID: id,
			Reason: "not mapped: " + err.Error(), Payload: userpilot.Company{CompanyID: id}}); err != nil {
			return err
		}
	}
	md := p.rowFields(m.nums, vals)
	clear(vals) // keeps nothing of the row alive
	p.pend(id, md, false, txn)
	return nil
}

// heldBack is a mapping error that left some keys of a row out, not the
// row (mapping.BadValues).
type heldBack interface {
	error
	HeldBack() []string
}

// maxRowRoom is the most room for a row's JSON kept for the next row.
const maxRowRoom = 64 << 10

// addDelete applies the on_delete policy to a deleted row. A DELETE carries
// only the old replica identity, so only the company id is read from it.
func (p *Pipeline) addDelete(txn row.Transaction, ch row.Change) error {
	if p.opts.OnDelete != "mark" && p.opts.OnDelete != "delete" {
		// Deleting in Userpilot is a GDPR erasure, not mirroring: the
		// default policy is to leave the profile and say so.
		p.log.Info("row deleted in Postgres; Userpilot profile left as is (on_delete: ignore)",
			"table", ch.Relation.Table.String(), "commit_lsn", txn.CommitLSN.String())
		return nil
	}
	m, err := p.mapperFor(ch.Relation)
	if err != nil {
		return err
	}
	id, err := m.CompanyID(ch.Values)
	if err != nil {
		return p.deadLetter(state.DeadLetter{LSN: state.LSN(txn.CommitLSN), Reason: "deleted row not mapped: " + err.Error() +
			"; a DELETE carries only the replica identity: make the company_id column part of it (the primary key), or ALTER TABLE ... REPLICA IDENTITY FULL"})
	}
	if p.opts.OnDelete == "mark" {
		p.pend(id, p.markFields(), false, txn)
		return nil
	}
	p.pend(id, nil, true, txn)
	return nil
}

// pend merges a company's new state (metadata, or a deletion) into what is
// pending for it.
func (p *Pipeline) pend(id string, md fields, del bool, txn row.Transaction) {
	c := p.companies[id]
	if _, leaving := p.gone[id]; c == nil && !leaving && p.spilling() {
		// Memory is full: the change waits on disk. (Not for a company just
		// delivered whose record the next write removes: that write would
		// remove this change with it.)
		p.spill(id, p.keys.unpack(md), del, txn)
		return
	}
	if c == nil {
		c = p.newCompany(id)
	}
	if w := c.waiting; w != nil {
		switch {
		case del:
			// Pending metadata is moot for a company about to be deleted.
			p.resized(w, func() { w.delete, w.md = true, nil })
			w.changes++
		case w.delete:
			// Created again before the deletion went out: it exists.
			p.resized(w, func() { w.delete, w.md = false, md })
			w.changes++
		default:
			p.merge(w, md)
		}
		w.checked = false
		w.resend = w.resend || txn.Resend || p.inDoubt(id)
		w.lsn = txn.EndLSN
		p.stats.Coalesced.Add(1)
		p.touch(id, c)
		return
	}
	if p.order.len() == 0 {
		p.progress = p.takenAt // the clock for OutboxAfter starts now
	}
	e := &entry{id: id, co: c, md: md, safe: p.received, seq: p.seq, lsn: txn.EndLSN, changes: 1, since: p.takenAt, delete: del,
		resend: txn.Resend || p.inDoubt(id)}
	p.seq++
	c.waiting = e
	p.touch(id, c)
	p.enqueue(e)
	if c.inflight == nil {
		p.ready.push(e)
	}
}

// enqueue puts a new entry last in the order, and in the window.
func (p *Pipeline) enqueue(e *entry) {
	p.order.push(e)
	p.undelivered++
	e.counted = true
	p.windowBytes += int64(e.size())
}

// nextJobNow says whether a job may be sized while the last one's profiles
// are still written to the index: a full one, or, when the window is full,
// what is ready (at least MinBulk). The companies being recorded hold their
// place in the window meanwhile, so a job sized then may be small, and
// each job costs its overhead however few it carries; but with the window
// full nothing more is read until the write ends, and waiting for it left
// Userpilot's job slot idle for the write's length at every job (the 5 MB
// window holds 14,000 companies: one job and part of the next). Only one
// job is recorded beside a running one.
func (p *Pipeline) nextJobNow() bool {
	if p.recording == 0 {
		return true
	}
	return p.recording == 1 && (p.ready.len() >= userpilot.MaxBulkRecords || p.full() && p.ready.len() >= p.opts.MinBulk)
}

// full reports whether the window holds all memory may: MaxPending
// entries, or MaxPendingBytes of them.
func (p *Pipeline) full() bool {
	return p.order.len() >= p.opts.MaxPending || p.windowBytes >= p.opts.MaxPendingBytes
}

// mapperFor compiles the mapping against rel's columns whenever Postgres
// describes the table anew (a new Relation), so a schema change is met with
// a clear stop rather than values in the wrong keys.
func (p *Pipeline) mapperFor(rel *row.Relation) (*mapper, error) {
	return p.mappers.Get(rel, func(rel *row.Relation) (*mapper, error) {
		m, err := p.opts.Mapping(rel)
		if err != nil {
			return nil, fmt.Errorf("%w: %w; fix the mapping and restart pgpilot: nothing is lost, the slot keeps the changes", ErrSchema, err)
		}
		keys := m.Keys()
		nums := make([]uint32, len(keys))
		for i, k := range keys {
			nums[i] = p.keys.number(k)
		}
		return &mapper{Mapper: m, nums: nums}, nil
	})
}

// mapper is a Mapper with its keys' numbers in the pipeline's keyTable,
// found once per mapping: a row's values are packed by position.
type mapper struct {
	Mapper
	nums []uint32 // nums[i] is Keys()[i]'s
}

// send marks e as on its way, handed to a call at at: newer changes for
// its company now wait. (The caller reads the clock once for all the
// entries of one call: once per entry was a measurable part of a change's
// CPU.)
func (p *Pipeline) send(e *entry, at time.Time) {
	c := e.co
	c.inflight, c.waiting = e, nil
	p.inflight++
	e.sentAt = at
}

// skipNoOps finishes, without a call, ready entries at the front that hold
// only values Userpilot already has.
func (p *Pipeline) skipNoOps(r *report) error {
	for p.ready.len() > 0 {
		e := p.ready.front()
		if p.needsLookUp(e) {
			// The entries behind it are looked up in the same read.
			if err := p.lookUp(p.ready.first(lookAhead)); err != nil {
				return err
			}
		}
		same, err := p.noOp(e)
		if err != nil || !same {
			return err
		}
		p.ready.popFront()
		p.skip(e, r)
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
	// In room kept from one look-up to the next (the dispatcher's): made
	// anew, it was a job's 10,000 entries and answers at every job.
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
	if err := p.opts.Index.UnchangedProfiles(p.profilesOf(ask), same, absent); err != nil {
		return err
	}
	for i, e := range ask {
		e.checked, e.same, e.absent = true, same[i], absent[i]
	}
	return nil
}

func (p *Pipeline) skip(e *entry, r *report) {
	p.send(e, time.Time{}) // no call: finished at once
	p.stats.Skipped.Add(1)
	r.skipped++
	p.finish(e)
}

// finish marks e delivered (or set aside) and lets its company's waiting
// entry go.
func (p *Pipeline) finish(e *entry) {
	p.setDone(e)
	delete(p.splitAt, e)
	c := e.co
	p.touch(e.id, c)
	if c.inflight == e {
		c.inflight = nil
		p.inflight--
	}
	if c.waiting != nil {
		p.ready.push(c.waiting)
	} else if c.inflight == nil {
		delete(p.companies, e.id)
		if c.disk > 0 {
			p.gone[e.id] = c.disk // removed at the next write
		}
	}
}

// newCompany puts a company in memory, taking over what is known of its
// outbox record.
func (p *Pipeline) newCompany(id string) *company {
	c := &company{}
	if size, ok := p.gone[id]; ok {
		c.disk = size
		delete(p.gone, id)
	}
	p.companies[id] = c
	return c
}

func (p *Pipeline) realtimeDone(r realtimeResult, rep *report) error {
	var rej *userpilot.RejectedError
	switch {
	case r.err == nil:
		p.sizing.realtimeSent(time.Now(), p.ready.len() > 0)
		p.stats.Realtime.Add(1)
		p.progress = time.Now()
		rep.realtime++
		p.finish(r.e)
		return p.accepted(r.e.sentAt)
	case errors.As(r.err, &rej):
		rep.rejected++
		// Set aside, or kept, once the breaker knows which it is.
		return p.refused(r.e, rej, "POST /v1/companies/identify", "rejected by Userpilot")
	default:
		return fmt.Errorf("deliver company %q: %w", r.e.id, r.err)
	}
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

// pending is how many companies are owed: those in memory with a state
// undelivered (or held for a job from before a restart), and those only on
// disk. Until the next outbox write (at most a tick or maxOverflow changes
// away) a company in the overflow that already had a record is counted
// twice: knowing would take a read of the store per change, or a map of
// every company on disk.
func (p *Pipeline) pending() int { return len(p.companies) + p.diskOnly + len(p.overflow) }

// setDone finishes e for the checkpoint's order and the pending count.
func (p *Pipeline) setDone(e *entry) {
	if !e.done {
		e.done = true
		p.undelivered--
	}
}

// watermark is the newest position with nothing undelivered before it.
func (p *Pipeline) watermark() pglogrepl.LSN {
	for p.order.len() > 0 && p.order.front().done {
		e := p.order.popFront()
		p.windowBytes -= int64(e.size())
		e.counted = false
	}
	// A merge into an older entry keeps that entry's seq, so a mark never
	// passes a state it was made after.
	for len(p.marks) > 0 && (p.order.len() == 0 || p.order.front().seq >= p.marks[0].seq) {
		p.markDone = p.marks[0].mark
		p.marks = p.marks[1:]
	}
	if p.order.len() > 0 {
		return p.order.front().safe
	}
	return p.received
}

// tick saves progress: in outbox mode it writes the outbox and then
// checkpoints everything received (all of it is delivered or in the
// outbox); in hold mode it checkpoints the watermark.
func (p *Pipeline) tick() error {
	if err := p.expireHeld(); err != nil {
		return err
	}
	p.spare.expire(time.Now())
	p.watermark()
	p.updateMode()
	received := p.received
	if err := p.persist(); err != nil {
		return err
	}
	p.updateMode() // the write may have emptied the outbox
	if p.order.len() < p.opts.MaxPending/2 {
		if err := p.refill(); err != nil {
			return err
		}
	}
	p.reportStatus(false)
	if p.mode == state.ModeOutbox {
		// Everything received is delivered or in the outbox: so are the
		// marks received.
		if n := len(p.marks); n > 0 {
			p.markDone, p.marks = p.marks[n-1].mark, nil
		}
		return p.checkpointAt(received)
	}
	return p.checkpoint()
}

func (p *Pipeline) checkpoint() error {
	return p.checkpointAt(p.watermark())
}

func (p *Pipeline) checkpointAt(w pglogrepl.LSN) error {
	if w <= p.done && p.markDone == p.markSaved {
		return nil
	}
	w = max(w, p.done)
	if err := p.opts.Checkpoint(w, p.markDone); err != nil {
		return fmt.Errorf("checkpoint %s: %w", w, err)
	}
	p.done, p.markSaved = w, p.markDone
	return nil
}
