package daemon

import (
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/pgpilot/pgpilot/liveness"
	"github.com/pgpilot/pgpilot/metrics"
	"github.com/pgpilot/pgpilot/snapshot"
)

// watched are the parts the liveness watch looks at: the delivery engine
// (which outlives sessions) and the current session's snapshot stage. The
// session sets them as they are made; the watch reads them from its own
// goroutine.
type watched struct {
	sources atomic.Pointer[[]liveness.Source]
	// faults is set once, before the watch starts.
	faults liveness.Source
	eng    atomic.Pointer[engine]
	stage  atomic.Pointer[snapshotLiveness]
}

// set renews the list from what is watched now.
func (w *watched) set(eng *engine, stages ...*snapshot.Stage) {
	w.eng.Store(eng)
	var list []liveness.Source
	if eng != nil {
		list = append(list, eng.pipe)
	}
	for _, st := range stages {
		list = append(list, &snapshotLiveness{stage: st})
	}
	w.sources.Store(&list)
}

// list is what to watch now.
func (w *watched) list() []liveness.Source {
	var l []liveness.Source
	if s := w.sources.Load(); s != nil {
		l = *s
	}
	if w.faults != nil {
		l = append(slices.Clip(l), w.faults)
	}
	return l
}

// faultSource excuses a stall while a fault only an operator can end is
// set (a dropped publication, an unwritable state directory): /readyz and
// the fault's own ERROR say what to do, and a stall ERROR beside them would
// send the operator looking for a bug.
type faultSource struct{ m *metrics.Metrics }

// Liveness reports the faults set as an excuse (liveness.Source).
func (f faultSource) Liveness() liveness.Report {
	r := liveness.Report{Part: "faults", At: time.Now()}
	if reason := f.m.Faults(); reason != "" {
		r.Excuse = "a fault only an operator can end: " + reason
	}
	return r
}

// snapshotLiveness reports on a snapshot stage: it owes while a job runs,
// and moves as it reads rows. Its fields are the watch goroutine's.
// (A stage is made per session; a job's rows, once passed on, are
// delivery's to owe.)
type snapshotLiveness struct {
	stage *snapshot.Stage
	read  int64
	moved time.Time
}

// Liveness reports the stage (liveness.Source).
func (sl *snapshotLiveness) Liveness() liveness.Report {
	now := time.Now()
	r := liveness.Report{Part: "snapshot", At: now, Moved: sl.moved}
	read, busy := sl.stage.RowsRead(), sl.stage.Busy()
	if busy && (sl.moved.IsZero() || read != sl.read) {
		// Reading rows, or a job just begun: it moves. An idle stage says
		// when it last did, not now: it does not vouch for the others.
		sl.read, sl.moved = read, now
		r.Moved = now
	}
	if busy {
		r.Owed = fmt.Sprintf("a snapshot job running, %d rows read", read)
		r.Waiting = "delivery's backlog to fall below its bound before the next chunk is read"
	}
	return r
}
