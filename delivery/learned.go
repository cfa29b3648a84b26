package delivery

import (
	"fmt"
	"sync"
	"time"

	"github.com/pgpilot/pgpilot/state"
)

// Estimates keeps what was learned of the bulk path (*state.Store).
type Estimates interface {
	BulkEstimate() (state.BulkEstimate, bool, error)
	SaveBulkEstimate(state.BulkEstimate) error
}

// Learned is what the pipeline has measured of Userpilot, for metrics and
// `pgpilot status`.
type Learned struct {
	// BulkRate (records/s) and BulkOverhead are the bulk estimate;
	// BulkJobs how many completed jobs it was learned from (0: still the
	// configured start).
	BulkRate     float64
	BulkOverhead time.Duration
	BulkJobs     int
	// RealtimeRate is the real-time throughput bulk jobs are sized
	// against (requests/s): the client's current limit, or what the
	// workers clear at the time a call takes if that is less.
	RealtimeRate float64
}

// ETA is how long pending companies should take at these rates: both
// paths spent on distinct companies (the floor the bulk share aims at).
func (l Learned) ETA(pending int) time.Duration {
	if pending <= 0 || l.BulkRate+l.RealtimeRate <= 0 {
		return 0
	}
	return time.Duration(float64(pending) / (l.BulkRate + l.RealtimeRate) * float64(time.Second))
}

// learnedView is Learned behind a lock: the dispatcher writes it, metrics
// and status read it.
type learnedView struct {
	mu sync.Mutex
	l  Learned
}

func (v *learnedView) set(l Learned) {
	v.mu.Lock()
	v.l = l
	v.mu.Unlock()
}

func (v *learnedView) get() Learned {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.l
}

// Learned returns what the pipeline has measured so far.
func (p *Pipeline) Learned() Learned { return p.learned.get() }

// publish copies the dispatcher's estimates to the view.
func (p *Pipeline) publish() {
	l := Learned{BulkRate: p.est.rate, BulkOverhead: p.est.overhead, BulkJobs: p.est.jobs,
		RealtimeRate: p.realtimeRate()}
	if p.opts.NoBulk {
		l.BulkRate, l.BulkOverhead = 0, 0
	}
	p.learned.set(l)
}

// realtimeBudget is the real-time rate the client allows now: the
// configured rate_limit, or less while it backs off after 429s.
func (p *Pipeline) realtimeBudget() float64 {
	if p.opts.RealtimeLimit != nil {
		if l := p.opts.RealtimeLimit(); l > 0 && l < p.opts.RealtimeRate {
			return l
		}
	}
	return p.opts.RealtimeRate
}

// loadEstimate starts the bulk estimate: from what an earlier run learned,
// unless the configured bulk_rate changed since (the operator knows
// something new), else from the configured figures.
func (p *Pipeline) loadEstimate() error {
	p.est = bulkEstimate{rate: p.opts.BulkRate, overhead: p.opts.BulkOverhead, startedFrom: p.opts.BulkRate}
	if p.opts.Estimates != nil {
		stored, ok, err := p.opts.Estimates.BulkEstimate()
		if err != nil {
			return err
		}
		if ok && stored.StartedFrom == p.opts.BulkRate && stored.Jobs > 0 {
			p.est = bulkEstimate{rate: stored.RecordsPerSecond, overhead: stored.Overhead, jobs: stored.Jobs, startedFrom: stored.StartedFrom}
			p.log.Info("bulk path: starting from what earlier runs measured",
				"records_per_second", round(p.est.rate), "job_overhead", p.est.overhead.Round(time.Millisecond), "jobs", p.est.jobs)
		}
	}
	p.publish()
	return nil
}

// learnJob folds a completed job into the estimate, keeps it, and says so.
func (p *Pipeline) learnJob(o jobObservation) error {
	before := p.est
	if !p.est.learn(o) {
		return nil
	}
	p.publish()
	p.log.Debug("bulk path measured", "records", o.records, "took", o.took().Round(time.Millisecond), "submission", o.upload().Round(time.Millisecond),
		"records_per_second", round(p.est.rate), "job_overhead", p.est.overhead.Round(time.Millisecond), "jobs", p.est.jobs)
	if !before.learned() {
		p.log.Info("bulk path measured for the first time; jobs are sized from it from now on",
			"records_per_second", round(p.est.rate), "job_overhead", p.est.overhead.Round(time.Millisecond),
			"configured_bulk_rate", before.rate)
	}
	p.estChanged = true
	return p.keepEstimate(time.Now(), !before.learned())
}

// keepEstimateEvery is how often a changed estimate is written to the
// store. The first measurement is written at once, and the last when
// delivery stops. Written after every job, it was a write of the store
// (and its fsyncs) on the dispatcher's own path at every job: a few ms
// each in a catch-up that runs a job every few tens of ms. Killed, a run
// loses at most this much of what it learned.
const keepEstimateEvery = 10 * time.Second

// keepEstimate writes the estimate to the store if it changed since it
// was last written, and now is the time (or force).
func (p *Pipeline) keepEstimate(now time.Time, force bool) error {
	if p.opts.Estimates == nil || !p.estChanged || (!force && now.Sub(p.estKeptAt) < keepEstimateEvery) {
		return nil
	}
	if err := p.opts.Estimates.SaveBulkEstimate(state.BulkEstimate{RecordsPerSecond: p.est.rate, Overhead: p.est.overhead,
		Jobs: p.est.jobs, StartedFrom: p.est.startedFrom, At: now.UTC()}); err != nil {
		return fmt.Errorf("keep the bulk estimate: %w", err)
	}
	p.estChanged, p.estKeptAt = false, now
	return nil
}

func round(f float64) float64 {
	if f >= 100 {
		return float64(int64(f + 0.5))
	}
	return float64(int64(f*100+0.5)) / 100
}

// learnedStatus adds what was measured to the status `pgpilot status`
// shows.
func (p *Pipeline) learnedStatus(st *state.Status) {
	l := p.learned.get()
	st.BulkRate, st.BulkOverheadSeconds, st.BulkJobsLearned, st.RealtimeRate = l.BulkRate, l.BulkOverhead.Seconds(), l.BulkJobs, l.RealtimeRate
	st.BacklogETASeconds = l.ETA(st.Pending).Seconds()
}
