package delivery_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/liveness"
	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// frozenJobs is Userpilot with a bulk path that never answers, nor fails:
// a job's submission hangs until delivery stops (a part of pgpilot stuck,
// as far as delivery can tell).
type frozenJobs struct{ delivery.Sender }

func (frozenJobs) BulkIdentify(ctx context.Context, _ userpilot.BulkBody) (userpilot.Job, error) {
	<-ctx.Done()
	return userpilot.Job{}, ctx.Err()
}

// frozenCheckpoint is a checkpoint write that never returns until released:
// the dispatcher itself is stuck in it.
type frozenCheckpoint struct{ release chan struct{} }

func (f frozenCheckpoint) write(pglogrepl.LSN, any) error {
	<-f.release
	return nil
}

// With a part frozen, the liveness watch says delivery is stalled, naming
// what is owed and what it waits for; with nothing frozen it never does.
func TestTheLivenessCheckFiresWhenAPartIsFrozen(t *testing.T) {
	tests := []struct {
		name   string
		freeze func(*delivery.Options) (unfreeze func())
		want   []string // in the reason
	}{
		{"nothing frozen: delivered, nothing owed, no stall", nil, nil},
		{"a bulk job's goroutine hangs in its submission", func(o *delivery.Options) func() {
			o.Sender = frozenJobs{o.Sender}
			return func() {}
		}, []string{"bulk job", "submitting", "companies pending"}},
		{"the dispatcher hangs in a checkpoint write", func(o *delivery.Options) func() {
			f := frozenCheckpoint{release: make(chan struct{})}
			o.Checkpoint = f.write
			return func() { close(f.release) }
		}, []string{"companies pending"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, setup{rate: 1000, delivery: delivery.Options{MaxPending: 300, BulkRate: 1_000_000, MinBulk: 10,
				BulkOverhead: 10 * time.Millisecond, PollInterval: 20 * time.Millisecond, Tick: 20 * time.Millisecond}})
			unfreeze := func() {}
			if tt.freeze != nil {
				unfreeze = tt.freeze(&h.opts)
				h.restart()
			}
			watch := liveness.New(liveness.Options{After: time.Second, Logger: h.opts.Logger,
				Sources: func() []liveness.Source { return []liveness.Source{h.pipe} }})
			ctx, cancel := context.WithCancel(context.Background())
			in, done := h.feed(ctx)
			go func() {
				for i := range 600 {
					select {
					case in <- txn(pglogrepl.LSN(10*(i+1)), update(fmt.Sprint(i+1), "pro", nil)):
					case <-ctx.Done():
						return
					}
				}
			}()
			if tt.want == nil {
				require.Eventually(t, func() bool { return len(h.up.Companies()) == 600 }, 30*time.Second, 10*time.Millisecond)
				require.Eventually(t, func() bool { return h.pipe.Liveness().Owed == "" }, 10*time.Second, 10*time.Millisecond)
				// However long nothing moves from now on: nothing is owed.
				assert.False(t, watch.Check(time.Now().Add(time.Hour)).Stalled, "a quiet pipeline with nothing owed")
			} else {
				var v liveness.Verdict
				require.Eventually(t, func() bool { v = watch.Check(time.Now()); return v.Stalled }, 30*time.Second, 20*time.Millisecond,
					"the frozen part is never reported")
				for _, w := range tt.want {
					assert.Contains(t, v.Reason, w)
				}
			}
			cancel()
			unfreeze()
			<-done
		})
	}
}

// Waiting on Userpilot while it fails is no stall: the calls being retried
// excuse it (an outage is /readyz's to report, after http.unready_after).
func TestWaitingOnAFailingUserpilotIsNotAStall(t *testing.T) {
	h := newHarness(t, setup{delivery: delivery.Options{Tick: 20 * time.Millisecond}})
	h.up.SetFault(&userpilottest.Fault{Status: 503}) // Userpilot is down
	client := h.opts.Sender.(*userpilot.Client)
	h.opts.Retrying = client.Retrying
	h.restart()
	watch := liveness.New(liveness.Options{After: time.Second, Logger: h.opts.Logger,
		Sources: func() []liveness.Source { return []liveness.Source{h.pipe} }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in, done := h.feed(ctx)
	in <- txn(10, update("1", "pro", nil))
	require.Eventually(t, func() bool { return client.Retrying() > 0 }, 10*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool { return h.pipe.Liveness().Excuse != "" }, 10*time.Second, 10*time.Millisecond)
	// However long the outage lasts.
	assert.False(t, watch.Check(time.Now().Add(time.Hour)).Stalled, "an outage taken for a stall")
	cancel()
	<-done
}
