package delivery_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// companiesUpdated is n transactions, one company each, ending at 100, 200, …
func companiesUpdated(n int) []row.Transaction {
	txns := make([]row.Transaction, n)
	for i := range txns {
		txns[i] = txn(pglogrepl.LSN((i+1)*100), update(fmt.Sprint(i+1), "pro", nil))
	}
	return txns
}

// trips records what a breaker reported.
type trips struct {
	mu      sync.Mutex
	reasons []string
}

func (tr *trips) add(reason string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.reasons = append(tr.reasons, reason)
}

func (tr *trips) all() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]string(nil), tr.reasons...)
}

func TestBreakerStopsDeliveryWithoutDeadLettersWhenTheEndpointRefusesEverything(t *testing.T) {
	tests := []struct {
		name   string
		fault  func(*userpilottest.Server)
		reason string
		// maxCalls bounds the identify calls before delivery stops: what
		// trips it, the calls in flight (8 workers) and those answered
		// whose results wait for the dispatcher (8 more).
		maxCalls int
	}{
		{"404 on every path: not Userpilot's API", func(s *userpilottest.Server) { s.AnswerAll(404) },
			"answers 404 on POST /v1/companies/identify", 1 + 2*8},
		{"400 to every record", func(s *userpilottest.Server) { s.SetFault(&userpilottest.Fault{Status: 400}) },
			"refused 20 different companies in a row with HTTP 400", 20 + 2*8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &trips{}
			h := newHarness(t, setup{delivery: delivery.Options{Breaker: &delivery.Breaker{Endpoint: "http://wrong", OnTrip: tr.add}}})
			tt.fault(h.up)
			err := h.run(context.Background(), companiesUpdated(200)...)
			require.ErrorIs(t, err, delivery.ErrRefusing)
			assert.Contains(t, err.Error(), tt.reason)
			assert.Contains(t, err.Error(), "http://wrong", "the reason names the endpoint")

			n, err := state.CountDeadLetters(h.dir.Path())
			require.NoError(t, err)
			assert.Zero(t, n, "nothing is set aside")
			assert.Zero(t, h.pipe.Stats().DeadLettered.Load())
			assert.Less(t, h.lastCheckpoint(), pglogrepl.LSN(100), "the checkpoint never passes a refused record")
			assert.LessOrEqual(t, len(h.up.Requests()), tt.maxCalls, "delivery stops")
			t.Logf("%d identify calls before delivery stopped, of 200 companies", len(h.up.Requests()))
			require.Len(t, tr.all(), 1, "the reason is reported once")
			assert.Contains(t, tr.all()[0], tt.reason)
		})
	}
}

func TestBreakerOfAnEarlierSessionKeepsTheNextOneFromSending(t *testing.T) {
	tr := &trips{}
	b := &delivery.Breaker{OnTrip: tr.add}
	h := newHarness(t, setup{delivery: delivery.Options{Breaker: b}})
	h.up.AnswerAll(404)
	require.ErrorIs(t, h.run(context.Background(), companiesUpdated(10)...), delivery.ErrRefusing)
	sent := len(h.up.Requests())

	h.up.AnswerAll(0) // fixed behind pgpilot's back: only a restart (a new Breaker) sends again
	next := newHarness(t, setup{delivery: delivery.Options{Breaker: b}})
	require.ErrorIs(t, next.run(context.Background(), companiesUpdated(10)...), delivery.ErrRefusing)
	assert.Empty(t, next.up.Requests(), "a tripped breaker sends nothing")
	assert.Equal(t, sent, len(h.up.Requests()))
	assert.Len(t, tr.all(), 1, "logged and reported once")
}

func TestRefusedRecordAmongAcceptedOnesIsSetAsideAtOnce(t *testing.T) {
	h := newHarness(t, setup{delivery: delivery.Options{Breaker: &delivery.Breaker{Hold: time.Hour}}})
	h.up.RejectCompany("7", 400)
	require.NoError(t, h.run(context.Background(), companiesUpdated(50)...))
	n, err := state.CountDeadLetters(h.dir.Path())
	require.NoError(t, err)
	assert.Equal(t, 1, n, "company 7 is a bad record: others were accepted")
	assert.Len(t, h.up.Companies(), 49)
	assert.Equal(t, pglogrepl.LSN(5000), h.lastCheckpoint())
}

func TestLoneRefusedRecordIsSetAsideAfterTheHold(t *testing.T) {
	h := newHarness(t, setup{delivery: delivery.Options{Breaker: &delivery.Breaker{Hold: 300 * time.Millisecond}}})
	h.up.RejectCompany("1", 400)
	start := time.Now()
	require.NoError(t, h.run(context.Background(), companiesUpdated(1)...))
	assert.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond, "held for evidence first")
	n, err := state.CountDeadLetters(h.dir.Path())
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, pglogrepl.LSN(100), h.lastCheckpoint())
}

func TestLoneBadCompanyRefusedAgainAndAgainNeverTripsTheBreaker(t *testing.T) {
	tr := &trips{}
	h := newHarness(t, setup{delivery: delivery.Options{Breaker: &delivery.Breaker{Threshold: 3, Hold: 100 * time.Millisecond, OnTrip: tr.add}}})
	h.up.RejectCompany("1", 400)
	in := make(chan row.Transaction)
	done := make(chan error, 1)
	go func() { done <- h.pipe.Run(context.Background(), in) }()
	for i := 1; i <= 5; i++ {
		in <- txn(pglogrepl.LSN(i*100), update("1", fmt.Sprint("plan ", i), nil))
		require.Eventually(t, func() bool {
			n, err := state.CountDeadLetters(h.dir.Path())
			return err == nil && n == i
		}, 10*time.Second, 10*time.Millisecond, "update %d is set aside after the hold", i)
	}
	close(in)
	require.NoError(t, <-done)
	assert.Empty(t, tr.all(), "one company refused 5 times is one bad record, not a refusing endpoint")
}

func TestAcceptanceVouchesOnlyForRefusalsSentBeforeIt(t *testing.T) {
	// The first call is accepted slowly; the endpoint breaks (400 to
	// everything) while it is in flight. Its late 202 says nothing about
	// the calls sent after it: they stay held, none is set aside.
	h := newHarness(t, setup{delivery: delivery.Options{Breaker: &delivery.Breaker{Threshold: 1000, Hold: 2 * time.Second}}})
	h.up.FailNext(1, userpilottest.Fault{Delay: 300 * time.Millisecond, Apply: true, Status: 202})
	h.up.SetFault(&userpilottest.Fault{Status: 400})
	in := make(chan row.Transaction)
	done := make(chan error, 1)
	go func() { done <- h.pipe.Run(context.Background(), in) }()
	in <- txn(100, update("1", "pro", nil))
	require.Eventually(t, func() bool { return h.up.IdentifyRequests() == 1 }, 10*time.Second, time.Millisecond, "company 1 is in flight")
	// The stand-in takes the fault once it has read the body: let it,
	// before the next requests arrive.
	time.Sleep(100 * time.Millisecond)
	for _, tx := range companiesUpdated(20)[1:] {
		in <- tx
	}
	require.Eventually(t, func() bool { _, ok := h.up.Company("1"); return ok }, 10*time.Second, time.Millisecond)
	time.Sleep(100 * time.Millisecond) // the dispatcher hears of the 202
	n, err := state.CountDeadLetters(h.dir.Path())
	require.NoError(t, err)
	assert.Zero(t, n, "refusals sent after the accepted call are not vouched for by it")
	close(in)
	require.NoError(t, <-done, "after the hold, they are set aside")
	n, err = state.CountDeadLetters(h.dir.Path())
	require.NoError(t, err)
	assert.Equal(t, 19, n)
}

func TestRefusalAnsweredAfterALaterCallWasAcceptedIsSetAsideAtOnce(t *testing.T) {
	// Company 1's refusal comes slowly; company 2, sent after it, is
	// accepted first. Userpilot worked after 1 left: 1 is a bad record,
	// set aside without waiting for the hold. (The stand-in gives the
	// delay to whichever request reads its body first; should that be 2,
	// 2's later acceptance must resolve 1 as well.)
	h := newHarness(t, setup{delivery: delivery.Options{Breaker: &delivery.Breaker{Hold: time.Hour}}})
	h.up.RejectCompany("1", 400)
	h.up.FailNext(1, userpilottest.Fault{Delay: 300 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in := make(chan row.Transaction)
	done := make(chan error, 1)
	go func() { done <- h.pipe.Run(ctx, in) }()
	in <- txn(100, update("1", "pro", nil))
	require.Eventually(t, func() bool { return h.up.IdentifyRequests() == 1 }, 10*time.Second, time.Millisecond, "company 1 is in flight")
	in <- txn(200, update("2", "pro", nil))
	close(in)
	require.NoError(t, <-done)
	n, err := state.CountDeadLetters(h.dir.Path())
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, pglogrepl.LSN(200), h.lastCheckpoint())
}
