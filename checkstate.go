package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/state"
)

// stateView is the state directory as `check` sees it: the checkpoint, a
// start over asked for, and (when no pgpilot holds the directory) the
// store, whose companies a start over's plan counts.
type stateView struct {
	ctx  context.Context
	conn *pgx.Conn
	cfg  *config.Config

	cp      state.Checkpoint
	haveCP  bool
	cpErr   error
	pending *state.Recovery
	// dir is held when no pgpilot runs (nil otherwise: the running one
	// checked its store when it started, and the file is its to write).
	dir     *state.Dir
	running bool
	damage  *state.StoreDamage
	plans   map[bool]string
}

// readState reads the state directory without changing it: a pgpilot
// that holds it is left alone.
func readState(ctx context.Context, conn *pgx.Conn, cfg *config.Config) *stateView {
	st := &stateView{ctx: ctx, conn: conn, cfg: cfg, plans: map[bool]string{}}
	st.cp, st.haveCP, st.cpErr = state.ReadCheckpoint(cfg.State.Dir)
	if !st.haveCP {
		return st
	}
	if r, ok, err := state.ReadRecovery(cfg.State.Dir); err == nil && ok {
		st.pending = &r
	}
	d, err := state.Open(cfg.State.Dir)
	switch {
	case errors.Is(err, state.ErrLocked):
		st.running = true
	case err == nil:
		st.dir = d
		errors.As(state.CheckStore(d.Path()), &st.damage)
	}
	return st
}

func (st *stateView) close() {
	if st.dir != nil {
		st.dir.Close()
	}
}

// established reports whether the checkpoint is past the initial sync:
// the slot and the publication are then ones pgpilot streamed through.
func (st *stateView) established() bool {
	return st.haveCP && st.cp.InitialSync == state.InitialSyncDone
}

// plan tells what a start over would do, counted when the store can be
// read (no pgpilot holds it).
func (st *stateView) plan(newSlot bool) string {
	if p, ok := st.plans[newSlot]; ok {
		return p
	}
	p := "every row is read again, and the companies Userpilot holds with no row left are treated as deleted (on_delete)"
	if newSlot {
		p = "a new slot; " + p
	}
	var known []string
	var err error
	switch {
	case st.dir == nil:
		p += " (counted when no pgpilot runs)"
		st.plans[newSlot] = p
		return p
	case st.damage != nil:
		known, err = state.KnownInStoreFile(st.dir.Path(), state.StoreFile)
	default:
		known, err = knownOf(st.dir)
	}
	if err == nil && st.pending != nil {
		for _, f := range st.pending.KnownFrom {
			more, ferr := state.KnownInStoreFile(st.dir.Path(), f)
			if ferr != nil {
				err = ferr
			}
			known = append(known, more...)
		}
		known = uniqueSorted(known)
	}
	if err == nil {
		var pl daemon.Plan
		if pl, err = daemon.PlanStartOver(st.ctx, st.conn, st.cfg, known, newSlot); err == nil {
			if st.damage != nil || (st.pending != nil && len(st.pending.KnownFrom) > 0) {
				pl.IndexLost = true
			}
			p = pl.String()
		}
	}
	st.plans[newSlot] = p
	return p
}

// checkState reports what the state directory holds against the database:
// a checkpoint that cannot be read, a damaged store, a start over asked
// for (and what it will do).
func checkState(cfg *config.Config, c *checker, st *stateView) {
	switch {
	case st.cpErr != nil:
		c.report("checkpoint in "+cfg.State.Dir, st.cpErr)
		return
	case !st.haveCP:
		return // a first setup: the slot and publication lines say what run makes
	}
	switch {
	case st.damage != nil:
		c.report("store "+st.damage.Path, daemon.StoreDamaged(cfg, st.damage))
	case st.running:
		c.report(fmt.Sprintf("state directory %s: held by a running pgpilot (checkpoint %s)", cfg.State.Dir, st.cp.LSN), nil)
	default:
		c.report(fmt.Sprintf("state directory %s: checkpoint %s, %s readable", cfg.State.Dir, st.cp.LSN, state.StoreFile), nil)
	}
	if st.pending != nil {
		c.warn(fmt.Sprintf("a start over is asked for (%s, %s)", st.pending.Reason, st.pending.ID),
			fmt.Errorf("`pgpilot run` does it: %s", st.plan(st.pending.NewSlot)))
	}
}
