package bench

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/pgpilot/pgpilot/internal/heapprofile"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// BenchmarkOverlap is delivery's modes overlapping, as an operator met
// them: N companies (PGPILOT_BENCH_ROWS, default 200,000), every 50th with
// a TOASTed notes value of 9 kB that is mapped; pgpilot starts its initial
// sync and is killed (kill -9) at its first request to Userpilot, then
// started again; once it has delivered something, Userpilot answers 503 to
// everything while every company is updated twice, in slices of 5,000
// (seats and plan: neither notes nor the key) spread over 40 s
// (PGPILOT_BENCH_WRITE_SECONDS), with Postgres crash-restarted (immediate
// stop, crash recovery) between the two passes; pgpilot switches to its
// outbox (max_retained_wal 64 MB, smaller than the default so that the
// scenario's 100-200 MB of WAL passes it); once the outage has lasted 25 s
// (PGPILOT_BENCH_OUTAGE_SECONDS) Userpilot answers normally again, while
// the second pass still streams in. Userpilot must end equal to the table,
// notes included: after the updates only the snapshot carries an
// unchanged notes value.
//
// Reported: how long after Userpilot came back and the writes ended it
// held the table (converge_s), and the outage's length (outage_s); peak anonymous memory (RssAnon, sampled every 50 ms), peak
// RSS (VmHWM) and peak resident file pages (RssFile: the binary's own and
// the store's, which bbolt maps) of the restarted pgpilot over the whole
// scenario (the killed one runs for under a second); and the slot's
// largest retained WAL (sampled every 100 ms). Run it N times with
// -count N:
//
//	go test -run '^$' -bench 'Overlap$' -benchtime 1x -count 3 -timeout 2h ./bench/
//
// PGPILOT_BENCH_HEAPPROFILE=PREFIX builds pgpilot with -tags heapprofile:
// the restarted pgpilot writes PREFIX-N.pprof at each new peak of its live
// heap and PREFIX-N-next.pprof after the next collection, which holds the
// peak's heap (go tool pprof -sample_index=inuse_space PREFIX-N-next.pprof).
func BenchmarkOverlap(b *testing.B) {
	n := benchRows()
	for range b.N {
		overlapOnce(b, n, 0)
	}
}

// BenchmarkOverlapWithUsers is the same scenario with users beside the
// companies: 20,000 companies and 200,000 users (the workload's users
// mapping: where, an enum label, a related count over tickets), every user
// moved to another company and renamed in each pass, in slices between the
// companies'. Userpilot must end equal to both tables.
//
//	go test -run '^$' -bench 'OverlapWithUsers$' -benchtime 1x -count 3 -timeout 2h ./bench/
func BenchmarkOverlapWithUsers(b *testing.B) {
	for range b.N {
		overlapOnce(b, 20_000, 200_000)
	}
}

func overlapOnce(b *testing.B, n, users int) {
	b.StopTimer()
	ctx := context.Background()
	var e *env
	if users > 0 {
		e = newUsersEnv(b, userpilottest.Options{APIKey: benchAPIKey, BulkRecordsPerSecond: standInBulkRate}, "100000", "1000000", workload.UsersMapping)
	} else {
		e = newEnv(b, bulkAllowed)
	}
	e.setDelivery("max_retained_wal: 64MB")
	if err := workload.SeedWithNotes(ctx, e.conn, n, 50); err != nil {
		b.Fatal(err)
	}
	if users > 0 {
		if err := workload.SeedUsers(ctx, e.conn, users, n); err != nil {
			b.Fatal(err)
		}
	}
	lag := e.watchSlotLag()

	// The initial sync starts, and pgpilot is killed at its first request.
	first := e.startPgpilot()
	e.waitFor("pgpilot's first request", 5*time.Minute, func() bool { return len(e.up.Requests()) > 0 })
	_ = first.cmd.Process.Kill()
	<-first.done

	if prefix := os.Getenv("PGPILOT_BENCH_HEAPPROFILE"); prefix != "" {
		// The binary is built with -tags heapprofile: it writes
		// PREFIX-N.pprof at each new peak of its live heap.
		os.Setenv(heapprofile.EnvVar, prefix)
		defer os.Unsetenv(heapprofile.EnvVar)
	}
	p := e.startPgpilot()
	accepted := e.up.Accepted()
	e.waitFor("pgpilot delivering again", 5*time.Minute, func() bool { return e.up.Accepted() > accepted })

	e.up.AnswerAll(503)
	outageBegan := time.Now()
	outageFor := time.Duration(envInt("PGPILOT_BENCH_OUTAGE_SECONDS", 25)) * time.Second
	var outage time.Duration
	// Userpilot comes back once the outage has lasted outageFor (as long as
	// the one the scenario was met in) and pgpilot is in outbox mode.
	endOutage := func() bool {
		if outage > 0 {
			return true
		}
		st, ok, err := state.ReadStatus(e.stateDir)
		if time.Since(outageBegan) < outageFor || err != nil || !ok || st.Mode != state.ModeOutbox {
			return false
		}
		outage = time.Since(outageBegan)
		e.up.AnswerAll(0)
		return true
	}
	// The two passes are spread over PGPILOT_BENCH_WRITE_SECONDS (40), so
	// that the second one still streams in when Userpilot comes back, as in
	// the scenario: its 400 MB of WAL took pgpilot longer than the outage.
	const slice = 5000
	companySlices := (n + slice - 1) / slice
	slices := companySlices + (users+slice-1)/slice // a pass
	spread := time.Duration(envInt("PGPILOT_BENCH_WRITE_SECONDS", 40)) * time.Second
	for i := range 2 * slices {
		time.Sleep(time.Until(outageBegan.Add(spread * time.Duration(i) / time.Duration(2*slices))))
		pass, a := i/slices, i%slices*slice
		if i == slices {
			// Halfway: Postgres crash-restarts under pgpilot.
			if err := e.pg.Crash(ctx); err != nil {
				b.Fatal(err)
			}
			if err := e.pg.Restart(ctx); err != nil {
				b.Fatal(err)
			}
			e.reconnect()
		}
		if a < companySlices*slice {
			if err := workload.UpdateSlice(ctx, e.conn, a, slice, pass); err != nil {
				b.Fatal(err)
			}
		} else if _, err := e.conn.Exec(ctx, `UPDATE users SET company_id = 1 + (id + $3) % $4, name = name || '.'
			WHERE id > $1 AND id <= $1 + $2`, a-companySlices*slice, slice, pass+1, n); err != nil {
			b.Fatal(err)
		}
		endOutage()
	}
	written := time.Now()
	e.waitFor("the outage's end", time.Hour, endOutage)
	b.StartTimer()
	back := time.Now()
	// A stall is reported with its figures, not only as a timeout.
	deadline := back.Add(time.Duration(envInt("PGPILOT_BENCH_CONVERGE_MINUTES", 10)) * time.Minute)
	equal := e.userpilotHoldsTable()
	for ; !equal && time.Now().Before(deadline); equal = e.userpilotHoldsTable() {
	}
	if equal && users > 0 {
		equal = e.userpilotHoldsUsers(time.Until(deadline)) == nil
	}
	converged := time.Since(back)
	b.StopTimer()
	maxLag, maxUnconfirmed := lag()
	if !equal {
		st, _, _ := state.ReadStatus(e.stateDir)
		b.Errorf("Userpilot not equal to the table %s after it came back; pgpilot's status: %+v; peak anonymous memory %.0f MB",
			converged.Round(time.Second), st, float64(p.peakAnon.Load())/(1<<20))
		return
	}
	// And pgpilot owes nothing more (its status is written every 2 s).
	owesNothing := func() bool {
		st, ok, err := state.ReadStatus(e.stateDir)
		return err == nil && ok && st.Mode == state.ModeHold && st.Pending == 0
	}
	for end := time.Now().Add(time.Minute); !owesNothing() && time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
	}
	if !owesNothing() {
		st, _, _ := state.ReadStatus(e.stateDir)
		b.Errorf("Userpilot holds the table, yet pgpilot still says it owes: %+v", st)
	}
	u := p.stop()

	report(b, converged.Seconds(), "converge_s")
	report(b, outage.Seconds(), "outage_s")
	report(b, float64(u.peakAnon)/(1<<20), "peak_anon_MB")
	report(b, float64(u.peakRSS)/(1<<20), "peak_rss_MB")
	report(b, float64(u.peakFile)/(1<<20), "peak_file_MB")
	report(b, float64(maxLag)/(1<<20), "slot_retained_max_MB")
	report(b, float64(maxUnconfirmed)/(1<<20), "slot_unconfirmed_max_MB")
	b.Logf("%d companies, %d users, outage of %s, writes until %s: equal to the table %s after Userpilot came back and the writes ended; pgpilot peaked at %.0f MB anonymous, %.0f MB RSS; the slot retained at most %.1f MB of WAL (%.1f MB not yet confirmed)",
		n, users, outage.Round(time.Millisecond), written.Sub(outageBegan).Round(time.Millisecond), converged.Round(time.Millisecond), float64(u.peakAnon)/(1<<20), float64(u.peakRSS)/(1<<20),
		float64(maxLag)/(1<<20), float64(maxUnconfirmed)/(1<<20))
}

// userpilotHoldsTable reports whether Userpilot holds every company as the
// table maps it (workload.Expected, computed in SQL). A cheap look at
// seats, plan and notes comes first: the whole comparison reads every
// value of every company.
func (e *env) userpilotHoldsTable() bool {
	rows, err := e.conn.Query(context.Background(), `SELECT id::text, seats, plan, coalesce(length(notes), 0) FROM companies`)
	if err != nil {
		e.b.Fatal(err)
	}
	got := e.up.Companies()
	for rows.Next() {
		var id, plan string
		var seats int64
		var notes int
		if err := rows.Scan(&id, &seats, &plan, &notes); err != nil {
			e.b.Fatal(err)
		}
		co, ok := got[id]
		gotNotes, _ := co["notes"].(string)
		if !ok || fmt.Sprint(co["seats"]) != fmt.Sprint(seats) || co["plan"] != plan || len(gotNotes) != notes {
			rows.Close()
			time.Sleep(100 * time.Millisecond) // polled: a look costs the machine a table scan
			return false
		}
	}
	if rows.Err() != nil {
		e.b.Fatal(rows.Err())
	}
	want, err := workload.Expected(context.Background(), e.conn)
	if err != nil {
		e.b.Fatal(err)
	}
	if len(workload.Diff(want, e.up.Companies())) > 0 {
		time.Sleep(100 * time.Millisecond)
		return false
	}
	return true
}

// userpilotHoldsUsers waits, at most for timeout, until Userpilot holds
// every user as the table maps it, with its company (computed in SQL).
func (e *env) userpilotHoldsUsers(timeout time.Duration) error {
	return workload.WaitUsersConverged(context.Background(), e.conn, func() map[string]workload.UserProfile {
		out := map[string]workload.UserProfile{}
		for id, u := range e.up.Users() {
			out[id] = workload.UserProfile{Company: u.Company, Metadata: u.Metadata}
		}
		return out
	}, timeout)
}
