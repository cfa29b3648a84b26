// Package liveness watches that pgpilot's work moves while any is owed. A
// sync that stops must say so: when something is owed (companies pending,
// outbox records, snapshot rows, held jobs) and nothing has moved for a
// bounded time, and no part is waiting on something outside pgpilot that is
// reported elsewhere (Userpilot failing, the breaker tripped), that is a
// stall: the watch logs an ERROR naming what is owed and what each part
// waits for, and tells its Alarm (a metric and /readyz), until work moves
// again.
//
// Each part reports on itself (Source); the watch only compares times, so
// a part whose own goroutine is stuck is seen too: its report stops being
// renewed, and the ERROR says how old it is.
package liveness

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Report is what one part says of itself.
type Report struct {
	// Part names it ("delivery", "snapshot").
	Part string
	// Owed is what it still owes, in words ("1,200 companies pending");
	// "" when nothing.
	Owed string
	// Moved is when its work last moved (a company delivered, skipped or
	// set aside; rows read), or when work started being owed after an
	// idle spell.
	Moved time.Time
	// Waiting says what it waits for, in words.
	Waiting string
	// Excuse, when set, says it waits on something outside pgpilot that
	// is reported elsewhere (Userpilot failing and being retried; the
	// breaker tripped): not a stall while it lasts.
	Excuse string
	// Patience is how long it may go without moving before that is a
	// stall, when longer than the watch's bound (a bulk job that takes
	// minutes at Userpilot's pace).
	Patience time.Duration
	// At is when the report was made: a part whose goroutine is stuck
	// stops renewing it.
	At time.Time
}

// Source is a part that reports on itself. Liveness must be safe to call
// from the watch's goroutine.
type Source interface {
	Liveness() Report
}

// Alarm hears when a stall starts (with its reason in one line) and ends.
type Alarm interface {
	Stalled(reason string)
	Moving()
}

// DefaultAfter is how long work may be owed with nothing moving before
// that is a stall.
const DefaultAfter = time.Minute

// Options configure a Watch.
type Options struct {
	// Sources are the parts to watch, asked anew at each check (a part
	// may come and go: a session's snapshot stage).
	Sources func() []Source
	// After is how long nothing may move while work is owed; 0 →
	// DefaultAfter.
	After time.Duration
	// Every is how often it checks; 0 → 1s.
	Every time.Duration
	// Repeat is how often a stall that lasts is logged again; 0 → 5 min.
	Repeat time.Duration
	Alarm  Alarm
	Logger *slog.Logger
}

// Watch checks the sources. Use New; Run it on a goroutine of its own.
type Watch struct {
	opts Options
	// excused is when a part last had an excuse: the bound counts from
	// then too, so the end of an outage is not taken for a stall before
	// delivery had the time to move.
	excused time.Time
	// stalledSince is when the current stall was first seen (zero: none),
	// loggedAt when it was last logged.
	stalledSince, loggedAt time.Time
}

// New makes a Watch.
func New(opts Options) *Watch {
	if opts.After <= 0 {
		opts.After = DefaultAfter
	}
	if opts.Every <= 0 {
		opts.Every = time.Second
	}
	if opts.Repeat <= 0 {
		opts.Repeat = 5 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Watch{opts: opts}
}

// Run checks every Every until ctx ends.
func (w *Watch) Run(ctx context.Context) {
	t := time.NewTicker(w.opts.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			w.Check(now)
		}
	}
}

// Verdict is what one check found.
type Verdict struct {
	Stalled bool
	// For is how long nothing has moved while work was owed.
	For time.Duration
	// Reason says what is owed and what each part waits for, in one line.
	Reason string
}

// Check looks at the sources once, at now, logs and alarms on a change,
// and returns what it found.
func (w *Watch) Check(now time.Time) Verdict {
	var reports []Report
	if w.opts.Sources != nil {
		for _, s := range w.opts.Sources() {
			reports = append(reports, s.Liveness())
		}
	}
	v := w.judge(now, reports)
	switch {
	case v.Stalled && w.stalledSince.IsZero():
		w.stalledSince, w.loggedAt = now, now
		w.opts.Logger.Error("delivery stalled: work is owed and nothing has moved for "+v.For.Round(time.Second).String()+
			"; this is a bug or a stuck part, not a quiet database",
			"owed_and_waiting", v.Reason, "fix", "collect a goroutine dump (kill -QUIT) and the log, then restart pgpilot: nothing is lost, the checkpoint is behind what is owed")
		if w.opts.Alarm != nil {
			w.opts.Alarm.Stalled(v.Reason)
		}
	case v.Stalled && now.Sub(w.loggedAt) >= w.opts.Repeat:
		w.loggedAt = now
		w.opts.Logger.Error("delivery still stalled", "for", v.For.Round(time.Second).String(), "owed_and_waiting", v.Reason)
		if w.opts.Alarm != nil {
			w.opts.Alarm.Stalled(v.Reason)
		}
	case !v.Stalled && !w.stalledSince.IsZero():
		w.opts.Logger.Info("delivery moves again after a stall", "stalled_for", now.Sub(w.stalledSince).Round(time.Second).String())
		w.stalledSince = time.Time{}
		if w.opts.Alarm != nil {
			w.opts.Alarm.Moving()
		}
	}
	return v
}

// judge decides from the reports: stalled when something is owed, no part
// has an excuse, and no part has moved for the bound (the longest patience
// of a part, at least After) counted from the last move or excuse.
func (w *Watch) judge(now time.Time, reports []Report) Verdict {
	owed, excuse := false, false
	var last time.Time
	bound := w.opts.After
	for _, r := range reports {
		if r.Owed != "" {
			owed = true
		}
		if r.Excuse != "" {
			excuse = true
		}
		if r.Moved.After(last) {
			last = r.Moved
		}
		bound = max(bound, r.Patience)
	}
	if excuse {
		w.excused = now
	}
	if w.excused.After(last) {
		last = w.excused
	}
	if !owed || excuse || now.Sub(last) <= bound {
		return Verdict{}
	}
	return Verdict{Stalled: true, For: now.Sub(last), Reason: describe(now, reports)}
}

// describe says, part by part, what is owed and what it waits for.
func describe(now time.Time, reports []Report) string {
	var b strings.Builder
	for i, r := range reports {
		if i > 0 {
			b.WriteString("; ")
		}
		owed := r.Owed
		if owed == "" {
			owed = "nothing owed"
		}
		if r.Moved.IsZero() {
			fmt.Fprintf(&b, "%s: %s", r.Part, owed)
		} else {
			fmt.Fprintf(&b, "%s: %s, last moved %s ago", r.Part, owed, now.Sub(r.Moved).Round(time.Second))
		}
		if r.Waiting != "" {
			fmt.Fprintf(&b, ", waiting for %s", r.Waiting)
		}
		if age := now.Sub(r.At); age > 10*time.Second {
			fmt.Fprintf(&b, " (its report is %s old: the part itself is stuck)", age.Round(time.Second))
		}
	}
	return b.String()
}
