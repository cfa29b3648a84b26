package daemon

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/row"
)

// engine is the delivery engine: one pipeline that lives as long as the
// daemon, fed by each replication session in turn. A session that ends (the
// connection dropped, Postgres restarted, the walsender was terminated)
// leaves delivery going on: the next session starts at once, streaming from
// the durable checkpoint, and the pipeline drops what it has already
// received (delivery.Pipeline.add), so nothing waits for Userpilot before
// the slot is read again.
type engine struct {
	in   chan row.Transaction
	pipe *delivery.Pipeline
	done chan struct{} // closed once the pipeline returned; err is then set
	err  error
	// retained is the slot's retained WAL as last measured by a session's
	// monitor; the pipeline reads it to choose its mode.
	retained atomic.Int64
	// stopDelivering ends delivery at once (after the grace period of a
	// stop, or when the daemon gives up).
	stopDelivering context.CancelFunc
	stopGrace      func() bool
}

// startEngine makes the delivery engine from the checkpoint the first
// session found and starts its pipeline. After ctx is done, delivery goes
// on for ShutdownGrace, so what was read is delivered and checkpointed
// before exit.
// inputDepth is how many transactions each stage's input holds.
const inputDepth = 8

// inFlightBytes bounds the bytes of streamed changes between the stream
// and delivery, whatever the stages' inputs hold (see row.Budget): 4 MB
// is some 10,000 changes of a narrow table, 5,000 of users' updates under
// REPLICA IDENTITY FULL, and a related stage's read of 2 MB.
const inFlightBytes = 4 << 20

func (s *session) startEngine(ctx context.Context, checkpointed pglogrepl.LSN) (*engine, error) {
	e := &engine{in: make(chan row.Transaction, inputDepth), done: make(chan struct{})}
	do, err := s.deliveryOptions(checkpointed, e.retained.Load)
	if err != nil {
		return nil, err
	}
	e.pipe = delivery.New(do)
	s.where.attach(e.pipe)
	s.opts.Metrics.AttachPipeline(deliveryCounts(e.pipe.Stats()))
	s.opts.Metrics.AttachEstimates(estimates(e.pipe))
	deliverCtx, stopDelivering := context.WithCancel(context.WithoutCancel(ctx))
	e.stopDelivering = stopDelivering
	e.stopGrace = context.AfterFunc(ctx, func() {
		time.AfterFunc(s.opts.ShutdownGrace, stopDelivering)
	})
	go func() { // owned by the daemon: stop waits for it
		defer close(e.done)
		e.err = e.pipe.Run(deliverCtx, e.in)
	}()
	return e, nil
}

// failed reports whether the pipeline has returned.
func (e *engine) failed() bool {
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}

// stop closes the engine's input and waits for the pipeline to deliver
// and checkpoint what it holds, for at most grace (the pipeline's own
// context ends it then). It returns the pipeline's error.
func (e *engine) stop(grace time.Duration) error {
	if !e.failed() {
		close(e.in)
	}
	timer := time.AfterFunc(grace, e.stopDelivering)
	defer timer.Stop()
	<-e.done
	e.stopGrace()
	e.stopDelivering()
	return e.err
}
