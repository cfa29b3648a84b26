package delivery

import (
	"math"
	"time"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/userpilot"
)

// bulkShare decides how many of the ready companies go to a bulk job so the
// last one reaches Userpilot soonest. The real-time path clears n companies
// in n/rt seconds; a bulk job of k takes overhead + k/bulk seconds and runs
// alongside. Both finish together when
//
//	(n-k)/rt = overhead + k/bulk  ⇒  k = (n - rt·overhead) · bulk/(rt+bulk)
//
// Below minBulk a job is not worth its overhead. The result is capped at
// maxRecords (Userpilot's 10,000 per request).
func bulkShare(n int, rt, bulk float64, overhead time.Duration, minBulk, maxRecords int) int {
	if rt <= 0 || bulk <= 0 {
		return 0
	}
	k := int((float64(n) - rt*overhead.Seconds()) * bulk / (rt + bulk))
	if k < minBulk {
		return 0
	}
	return min(k, maxRecords)
}

// bulkAloneRatio: when the bulk path is measured this many times faster than
// the real-time path, a backlog goes in bulk jobs alone. The real-time
// share of it would be below 1/(bulkAloneRatio+1), so sending it all in
// bulk costs at most that much of the floor, while each real-time call is
// a request to Userpilot and two writes of the state (its sending mark and
// its outcome) where a job's record is a fraction of one. Against
// Userpilot's published figures (10 calls/s, 20 records/s) the ratio is 2:
// both paths stay in use.
const bulkAloneRatio = 20

// bulkAlone reports whether the ready backlog is left to bulk jobs: the bulk
// path is far the faster (bulkAloneRatio), and the job it runs, if any, is
// not overdue (then the real-time path takes up the work again until a job
// ends as expected). Until a job is measured the bulk path is what the
// operator said (bulk_rate), and the first job is a probe (takeBulk): a
// start far from the truth costs the real-time path's work until the probe
// ends or is overdue, once (what is measured is kept across restarts).
// Waiting for the measurement instead, the real-time path sent one call
// each for the whole start of a catch-up, as long as that took on a busy
// machine.
func (p *Pipeline) bulkAlone(now time.Time) bool {
	if p.opts.NoBulk {
		return false
	}
	if p.realtimeRate()*bulkAloneRatio > p.est.rate {
		return false
	}
	return !p.jobs.overdue(now, p.est, p.opts.PollInterval)
}

// realtimeRate is the real-time pace bulk jobs are sized against.
func (p *Pipeline) realtimeRate() float64 {
	return p.sizing.realtimeRate(p.realtimeBudget(), p.opts.Workers)
}

// realtimeWanted says whether a real-time worker should take the ready
// front now: always for what a job cannot take (a record a job refused);
// unless the backlog is left to bulk jobs; and then only while too few are
// ready for a job and no job runs or is being recorded. While one is, the
// next job is moments away (bulk alone is the far faster path, and the
// job is not overdue) and takes them: in a catch-up of one-row
// transactions the real-time path took the first few of each job's worth
// as they came, 1,700 calls for 200,000 rows.
func (p *Pipeline) realtimeWanted(now time.Time) bool {
	r := &p.ledger.ready
	if r.front().realtimeOnly || !p.bulkAlone(now) {
		return true
	}
	return r.len() < p.opts.MinBulk && !p.jobs.active()
}

// takeBulk chooses the companies for a bulk job (the newest ready ones: the
// real-time path keeps draining the oldest, so the checkpoint keeps moving;
// the oldest while the backlog is left to bulk jobs alone, for the same
// reason) and marks them in flight. It writes the job's body as it goes: each
// company's JSON is written once, and that is both what sizes the job and
// what is recorded and sent.
func (p *Pipeline) takeBulk(now time.Time) ([]*entry, userpilot.BulkBody, error) {
	l := p.ledger
	rt := p.realtimeRate()
	// The backlog: what is ready, and in outbox mode what is owed on disk
	// behind it (refilled into memory as memory drains).
	backlog := l.ready.len()
	if p.outbox.mode == ModeOutbox {
		backlog += p.outbox.owed()
	}
	k := bulkShare(backlog, rt, p.est.rate, p.est.overhead, p.opts.MinBulk, userpilot.MaxBulkRecords)
	alone := p.bulkAlone(now)
	switch {
	case !p.est.learned() && alone && l.ready.len() >= p.opts.MinBulk:
		// Nothing measured, and no real-time path to share with: a probe
		// all the same (a tenth, at least MinBulk, at most a job), so that
		// a start far from the truth is found out on a small job.
		k = min(l.ready.len(), max(p.opts.MinBulk, backlog/probeShare), userpilot.MaxBulkRecords)
	case !p.est.learned():
		// Nothing measured: a small job first, to learn what the bulk
		// path does before a large one is sized from a guess.
		k = probeSize(backlog, rt, k, p.opts.MinBulk)
	case alone && l.ready.len() >= p.opts.MinBulk:
		// No real-time path to share with: as much as a job takes.
		k = min(l.ready.len(), userpilot.MaxBulkRecords)
	}
	if l.full() && !alone && p.outbox.mode != ModeOutbox {
		// Reading is held back at the memory bound (in outbox mode it is
		// not: the window fills past it with merges while the rest is
		// read ahead, and bulkShare sizes the job): the backlog goes on in
		// the slot past what is in memory. Sized for a backlog without
		// end, a job is full while bulk is the faster path (or nothing is
		// measured yet); when the real-time path is faster, the job takes
		// bulk's share of what is ready and the real-time path keeps the
		// rest: a full job against a real-time path eight times faster
		// left that path idle for the job's 200 s.
		k = userpilot.MaxBulkRecords
		if p.est.learned() && rt > p.est.rate {
			// Below MinBulk a job is not worth its overhead here either:
			// with a window of one, every company went as a job of one.
			share := float64(l.ready.len()) * p.est.rate / (rt + p.est.rate)
			if k = min(userpilot.MaxBulkRecords, int(share)); k < p.opts.MinBulk {
				k = 0
			}
		}
	}
	var body userpilot.BulkBody
	if k == 0 {
		return nil, body, nil
	}
	body.Reuse(p.enc.takeSpare())
	take, peek, putBack := l.ready.popBack, l.ready.last, l.ready.push
	if alone {
		take, peek, putBack = l.ready.popFront, l.ready.first, l.ready.pushFront
	}
	candidates := peek(k)
	if err := p.lookUp(candidates); err != nil { // one read for the job
		return nil, body, err
	}
	// What the candidates hold, packed: with each one's JSON around its
	// values (the first one's, below), about the body they make.
	packed := 0
	for _, e := range candidates {
		packed += len(e.id) + len(e.md)
	}
	p.log.Debug("bulk job sized", "ready", l.ready.len(), "backlog", backlog, "realtime_rate", round(rt), "bulk_rate", round(p.est.rate),
		"job_overhead", p.est.overhead.Round(time.Millisecond), "measured", p.est.learned(), "records", k,
		"window", l.order.len(), "window_bytes", l.windowBytes, "full", l.full(), "alone", alone)
	// Sized once: grown from nothing, a job's list was copied a dozen
	// times over.
	batch, keep := make([]*entry, 0, min(k, l.ready.len())), []*entry(nil)
	// A job is of companies or of users (Userpilot's two bulk endpoints):
	// the first company or user taken decides, the other's wait.
	var entity mapping.Entity
	for len(batch) < k && l.ready.len() > 0 {
		e := take()
		ent, _ := subjectOf(e.id)
		if e.realtimeOnly || e.delete || (len(batch) > 0 && ent != entity) {
			keep = append(keep, e)
			continue
		}
		same, err := p.noOp(e)
		if err != nil {
			return nil, body, err
		}
		if same {
			p.skip(e)
			continue
		}
		if !p.enc.addMember(&body, e, maxBulkBytes) {
			keep = append(keep, e)
			break
		}
		if len(batch) == 0 {
			entity = ent
			// The job's companies come from one mapping: each one's JSON
			// is its packed values with about the first one's framing
			// (key names, quotes, braces) around them; sized with a
			// margin. (A body is the largest object pgpilot makes; with
			// 64 bytes and a quarter more, two jobs' bodies held 1.5 MB
			// of spare room.) Not the first one's size times k: a first
			// company with a TOASTed value of 9 kB made a 40 MB body for
			// 3 MB of companies, kept as the next job's room.
			frame := max(0, body.Size()-len(e.id)-len(e.md))
			body.Grow(min(maxBulkBytes, (packed+frame*len(candidates))*9/8))
		}
		batch = append(batch, e)
	}
	for i := len(keep) - 1; i >= 0; i-- {
		putBack(keep[i])
	}
	for _, e := range batch {
		l.send(e, now)
	}
	return batch, body, nil
}

// The real-time path's pace is what one call takes, not what the
// dispatcher saw go by. Each worker times its own call, from taking the
// company to having its outcome durable: the mark, Userpilot's answer (and
// the client's wait for the budget), the index write. With Workers calls in
// flight the path clears Workers/callTime companies a second, or the
// budget, whichever is less. Counted as the companies the dispatcher sees
// delivered over busy time, the pace would measure the dispatcher's own
// scheduling delays on a busy machine, and a catch-up's split would swing
// with the load (hundreds to thousands of real-time calls). A call's
// time does not depend on how soon the dispatcher hears of it; what makes
// it long (Userpilot's answer, the two durable writes, which bbolt's Batch
// holds up to 10 ms for others to share) is what limits the path. Against
// a local stand-in with an unlimited budget that is a few hundred calls a
// second, not the 100,000 the budget says: taken at its word, the budget
// would send a tenth of every backlog one call each.
//
// callWeight is the weight of each call in the smoothed call time: a
// change of pace is followed within a few dozen calls, one slow call (a
// retry) moves it only part of the way.
const callWeight = 1.0 / 16

// sizing is what bulkShare is fed besides the bulk estimate: what a
// real-time call takes.
type sizing struct {
	callTime time.Duration // smoothed; 0: no call yet
}

// called notes one real-time call that Userpilot answered (accepted or
// refused), and the time it took.
func (s *sizing) called(took time.Duration) {
	if took <= 0 {
		return
	}
	if s.callTime == 0 {
		s.callTime = took
		return
	}
	s.callTime = time.Duration((1-callWeight)*float64(s.callTime) + callWeight*float64(took))
}

// realtimeRate is the real-time pace to plan with: the budget, or what
// workers calls in flight clear at the measured call time if that is
// less. Until a call is measured, the budget.
func (s *sizing) realtimeRate(budget float64, workers int) float64 {
	if s.callTime <= 0 {
		return budget
	}
	return min(budget, float64(workers)/s.callTime.Seconds())
}

// The bulk path is measured, not assumed: Userpilot publishes 1,200 to
// 1,800 records a minute, its real speed varies with its load and the
// account, and a stand-in is far faster. Each completed job is one
// observation of D = overhead + records/rate; the estimate is smoothed
// over jobs and sizes the next one. The configured bulk_rate (and the
// overhead default) are where it starts, until a job has completed.

// Smoothing and the probe.
const (
	// estimateWeight is the weight of each new job in the smoothed
	// estimate (of the logarithm of the rate, and of the overhead): a
	// change of speed is followed within a few jobs, one odd job moves it
	// only part of the way.
	estimateWeight = 0.5
	// probeBacklog: with nothing measured yet, a backlog the real-time
	// path takes longer than this to clear is worth a small job to measure
	// the bulk path with.
	probeBacklog = time.Second
	// probeShare is the most of the backlog a probe job takes: small
	// enough to end before the real-time path clears the rest unless bulk
	// is 9 times slower than real time, large enough to be measured.
	probeShare = 10
)

// bulkEstimate is what the bulk path is believed to do.
type bulkEstimate struct {
	rate     float64       // records/s
	overhead time.Duration // a job's time beyond its records
	jobs     int           // completed jobs it was learned from; 0: the configured start
	// startedFrom is the configured bulk_rate the learning started from.
	startedFrom float64
	// upload is the part of overhead that is the submission, smoothed
	// alike; recent are the last jobs' sizes and their times after it,
	// for telling the overhead from the rate when no poll saw a job part
	// done.
	upload time.Duration
	recent []sizeTime
}

// sizeTime is one job's records and how long it took after its
// submission was answered.
type sizeTime struct {
	records int
	took    time.Duration
}

// recentJobs is how many jobs the fit of overhead and rate looks back on.
const recentJobs = 8

// learned reports whether a job has been measured.
func (b bulkEstimate) learned() bool { return b.jobs > 0 }

// expected is how long a job of n records should take.
func (b bulkEstimate) expected(n int) time.Duration {
	return b.overhead + time.Duration(float64(n)/b.rate*float64(time.Second))
}

// jobObservation is what one job showed of the bulk path, on pgpilot's
// clock (submitted, answered, running, ended) and, where Userpilot reports
// them, its own (serverTook, the rows done at a poll).
type jobObservation struct {
	records   int
	submitted time.Time // just before the submission left
	answered  time.Time // when the submission was answered
	running   time.Time // the last answer that saw it not ended
	ended     time.Time // the answer that saw it completed
	// serverTook is end_time − start_time (or elapsed_time) as the status
	// reports it; 0 when it does not.
	serverTook time.Duration
	// first and last are the first and the last poll that saw part of the
	// records processed (0 < rows < records); first.at is zero when none
	// did.
	first, last progressSample
}

// progressSample is a poll's completed_rows and when its answer came.
type progressSample struct {
	rows int
	at   time.Time
}

// sawProgress notes a poll's completed_rows (at is when its answer came).
func (o *jobObservation) sawProgress(rows int, at time.Time) {
	if rows <= 0 || rows >= o.records {
		return
	}
	if o.first.at.IsZero() {
		o.first = progressSample{rows, at}
	}
	o.last = progressSample{rows, at}
}

// took is how long the job took, from its submission on pgpilot's clock.
// It ended between the last answer that saw it running and the one that
// saw it completed; Userpilot's own figure, where given, places it within
// those bounds. That figure runs from Userpilot's start_time, taken here
// to be when the submission was answered (Userpilot's clock is not
// pgpilot's: only its durations are used); if start_time is when
// processing began instead, the bounds keep the queueing in.
func (o jobObservation) took() time.Duration {
	lo, hi := o.running.Sub(o.submitted), o.ended.Sub(o.submitted)
	lo = min(max(lo, 0), hi)
	if o.serverTook > 0 {
		return min(max(o.upload()+o.serverTook, lo), hi)
	}
	return lo + (hi-lo)/2
}

// upload is the submission's time: sending the body, and Userpilot
// reading and accepting it.
func (o jobObservation) upload() time.Duration {
	return min(max(0, o.answered.Sub(o.submitted)), max(0, o.ended.Sub(o.submitted)))
}

// minProgressSpan is the least time between two polls that saw the job
// part done for their rows to give its pace.
const minProgressSpan = 20 * time.Millisecond

// measure turns the observation into a rate and an overhead: the
// overhead is the submission's time plus Userpilot's before its first
// record (queueing, validation); the rate how fast records are processed
// after that. The ways to tell them apart, best first:
//   - two polls that saw it part done: their rows over their time, which
//     no overhead is in (both on pgpilot's clock);
//   - one such poll (or two close together): the rest of the records
//     over the rest of the time;
//   - jobs of different sizes: the line through them (fit);
//   - otherwise the job's time after its submission is split with the
//     overhead measured so far (at most half of it counted as overhead),
//     or, with nothing measured, counted as records alone: the rate is
//     then if anything underestimated, and a job sized from it ends early
//     rather than late.
func (o jobObservation) measure(prior bulkEstimate) (rate float64, overhead time.Duration, ok bool) {
	d := o.took()
	if o.records <= 0 || d <= 0 {
		return 0, 0, false
	}
	up := o.upload()
	work := max(d-up, time.Millisecond) // after the submission was answered
	if !o.first.at.IsZero() {
		// Of the two, the longer baseline: a poll's answer may be held up
		// on the way, and that matters less over a longer time.
		span, rest := o.last.at.Sub(o.first.at), o.submitted.Add(d).Sub(o.first.at)
		switch {
		case o.last.rows > o.first.rows && span >= minProgressSpan && span >= rest/2:
			rate = float64(o.last.rows-o.first.rows) / span.Seconds()
		case rest > 0:
			rate = float64(o.records-o.first.rows) / rest.Seconds()
		}
	}
	if rate <= 0 {
		if r, _, ok := fit(append(prior.recent, sizeTime{o.records, work})); ok {
			rate = r
		}
	}
	if rate <= 0 {
		var spent time.Duration
		if prior.learned() {
			spent = min(max(0, prior.overhead-prior.upload), work/2)
		}
		rate = float64(o.records) / (work - spent).Seconds()
	}
	rate = min(max(rate, 1e-3), 1e9)
	queue := max(0, work-time.Duration(float64(o.records)/rate*float64(time.Second)))
	return rate, up + queue, true
}

// fit is the least-squares line took = overhead + records/rate through
// jobs; ok only when their sizes differ enough (the largest at least 1.5
// times the smallest) for a slope, and the line is plausible (rate above
// 0, overhead not below 0).
func fit(jobs []sizeTime) (rate float64, overhead time.Duration, ok bool) {
	if len(jobs) < 2 {
		return 0, 0, false
	}
	lo, hi := jobs[0].records, jobs[0].records
	var sx, sy float64
	for _, j := range jobs {
		lo, hi = min(lo, j.records), max(hi, j.records)
		sx += float64(j.records)
		sy += j.took.Seconds()
	}
	if float64(hi) < 1.5*float64(lo) {
		return 0, 0, false
	}
	n := float64(len(jobs))
	mx, my := sx/n, sy/n
	var sxx, sxy float64
	for _, j := range jobs {
		dx := float64(j.records) - mx
		sxx += dx * dx
		sxy += dx * (j.took.Seconds() - my)
	}
	slope := sxy / sxx // seconds per record
	icept := my - slope*mx
	if slope <= 0 || icept < 0 {
		return 0, 0, false
	}
	return 1 / slope, time.Duration(icept * float64(time.Second)), true
}

// learn folds one completed job into the estimate. The first replaces the
// configured start outright: that was a guess, this is a measurement.
func (b *bulkEstimate) learn(o jobObservation) bool {
	rate, overhead, ok := o.measure(*b)
	if !ok {
		return false
	}
	if b.jobs == 0 {
		b.rate, b.overhead = rate, overhead
	} else {
		// The rate is smoothed on a log scale: a job twice as fast and one
		// half as fast cancel out.
		b.rate = math.Exp((1-estimateWeight)*math.Log(b.rate) + estimateWeight*math.Log(rate))
		b.overhead = time.Duration((1-estimateWeight)*float64(b.overhead) + estimateWeight*float64(overhead))
	}
	up := o.upload()
	if b.jobs == 0 {
		b.upload = up
	} else {
		b.upload = time.Duration((1-estimateWeight)*float64(b.upload) + estimateWeight*float64(up))
	}
	b.jobs++
	b.recent = append(b.recent, sizeTime{o.records, max(0, o.took()-up)})
	if len(b.recent) > recentJobs {
		b.recent = b.recent[len(b.recent)-recentJobs:]
	}
	return true
}

// probeSize is the job sent to measure the bulk path while nothing is
// measured: none while the real-time path clears the backlog quickly,
// else the share sized from the configured start, but at most a tenth of
// the backlog (the start may be far too fast) and at least minBulk.
func probeSize(n int, rt float64, share, minBulk int) int {
	if rt <= 0 || float64(n)/rt < probeBacklog.Seconds() || n/probeShare < minBulk {
		return share
	}
	return max(minBulk, min(share, n/probeShare))
}

// Polling: a job is first asked about when it should be done at the
// estimate; after that at a tenth of its age (so the poll that sees it end
// comes at most a tenth of its length late), but at least every
// PollInterval and at most every minPoll. A job of the probe, with nothing
// measured yet, is asked about from minPoll on: the start may be far too
// slow.
const (
	minPoll      = 10 * time.Millisecond
	pollFraction = 0.1
)

// firstPoll is when a job of n records is first worth asking about.
func firstPoll(n int, est bulkEstimate, interval time.Duration) time.Duration {
	if !est.learned() {
		return minPoll
	}
	return min(interval, max(minPoll, est.expected(n)))
}

// nextPoll is the wait before the next poll of a job age old. remaining,
// when above 0, is what the job's own progress says is left of it.
func nextPoll(age, remaining, interval time.Duration) time.Duration {
	wait := min(interval, max(minPoll, time.Duration(pollFraction*float64(age))))
	if remaining > 0 {
		wait = min(wait, max(minPoll, remaining))
	}
	return wait
}
