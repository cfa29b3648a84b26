package liveness

import (
	"bytes"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fixed is a source that says the same each time.
type fixed Report

func (f fixed) Liveness() Report { return Report(f) }

// alarm records what the watch told it.
type alarm struct{ stalled, moving int }

func (a *alarm) Stalled(string) { a.stalled++ }
func (a *alarm) Moving()        { a.moving++ }

func TestAStallIsWorkOwedWithNothingMovingAndNoExcuse(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		reports []Report
		now     time.Time
		stalled bool
	}{
		{"nothing owed, nothing moving: a quiet database", []Report{{Part: "delivery", Moved: t0, At: t0}}, t0.Add(time.Hour), false},
		{"owed, moved within the bound", []Report{{Part: "delivery", Owed: "5 companies", Moved: t0, At: t0}}, t0.Add(59 * time.Second), false},
		{"owed, nothing moved past the bound", []Report{{Part: "delivery", Owed: "5 companies", Moved: t0, At: t0}}, t0.Add(61 * time.Second), true},
		{"owed, but waiting on Userpilot, which fails", []Report{{Part: "delivery", Owed: "5 companies", Moved: t0, Excuse: "3 calls being retried", At: t0}}, t0.Add(time.Hour), false},
		{"a running job has patience", []Report{{Part: "delivery", Owed: "5 companies", Moved: t0, Patience: 10 * time.Minute, At: t0}}, t0.Add(9 * time.Minute), false},
		{"past the job's patience", []Report{{Part: "delivery", Owed: "5 companies", Moved: t0, Patience: 10 * time.Minute, At: t0}}, t0.Add(11 * time.Minute), true},
		{"one part moving is enough", []Report{
			{Part: "delivery", Owed: "5 companies", Moved: t0, At: t0},
			{Part: "snapshot", Owed: "a job", Moved: t0.Add(50 * time.Second), At: t0}}, t0.Add(100 * time.Second), false},
		{"snapshot rows owed, nothing moves", []Report{
			{Part: "delivery", Moved: t0, At: t0},
			{Part: "snapshot", Owed: "a job", Moved: t0, At: t0}}, t0.Add(2 * time.Minute), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := New(Options{Sources: sources(tt.reports...), Logger: quiet()})
			assert.Equal(t, tt.stalled, w.Check(tt.now).Stalled)
		})
	}
}

// The end of an outage is not a stall: the bound counts from when the
// excuse last held, so delivery has the bound's time to move again.
func TestTheBoundCountsFromTheEndOfAnExcuse(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	r := Report{Part: "delivery", Owed: "5 companies", Moved: t0, At: t0, Excuse: "Userpilot failing"}
	src := &r
	w := New(Options{Sources: func() []Source { return []Source{fixed(*src)} }, Logger: quiet()})
	require.False(t, w.Check(t0.Add(10*time.Minute)).Stalled, "excused")
	src.Excuse = ""
	assert.False(t, w.Check(t0.Add(10*time.Minute+30*time.Second)).Stalled, "the outage ended 30 s ago")
	assert.True(t, w.Check(t0.Add(11*time.Minute+time.Second)).Stalled, "nothing moved for the bound after it ended")
}

// A stall is said once as an ERROR (again every Repeat while it lasts),
// alarmed, and its end is said and alarmed too. The ERROR names what is
// owed, what each part waits for, and a part whose report went stale.
func TestAStallIsLoggedAndAlarmedUntilWorkMoves(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	r := Report{Part: "delivery", Owed: "32886 companies pending", Moved: t0, At: t0, Waiting: "the outbox refill"}
	src := &r
	var log bytes.Buffer
	a := &alarm{}
	w := New(Options{Sources: func() []Source { return []Source{fixed(*src)} }, Alarm: a,
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	w.Check(t0.Add(2 * time.Minute))
	w.Check(t0.Add(3 * time.Minute))
	assert.Equal(t, 1, a.stalled, "alarmed once")
	assert.Contains(t, log.String(), "level=ERROR")
	assert.Contains(t, log.String(), "32886 companies pending")
	assert.Contains(t, log.String(), "waiting for the outbox refill")
	assert.Contains(t, log.String(), "the part itself is stuck", "the report is minutes old")
	w.Check(t0.Add(8 * time.Minute))
	assert.Equal(t, 2, a.stalled, "said again after Repeat")
	src.Moved, src.At = t0.Add(9*time.Minute), t0.Add(9*time.Minute)
	w.Check(t0.Add(9 * time.Minute))
	assert.Equal(t, 1, a.moving)
	assert.Contains(t, log.String(), "moves again")
}

func sources(rs ...Report) func() []Source {
	return func() []Source {
		var out []Source
		for _, r := range rs {
			out = append(out, fixed(r))
		}
		return out
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)) }
