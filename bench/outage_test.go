package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// BenchmarkOutage is what a long Userpilot outage costs pgpilot's memory:
// with Userpilot answering 503 to everything (and outbox mode after 1 s),
// N companies are inserted and then each updated once more (PGPILOT_BENCH_ROWS,
// default 200,000), until pgpilot's checkpoint has passed every change (all
// of it owed in the outbox). Then pgpilot is killed and started again with
// that backlog on disk, and finally Userpilot comes back. Reported: peak
// anonymous memory during the outage and after the restart (the Go heap
// and runtime; the store's pages, which bbolt maps and the kernel can drop,
// are not anonymous), the store's bytes per owed company, and how long the
// backlog took to drain once Userpilot was back.
func BenchmarkOutage(b *testing.B) {
	n := benchRows()
	for range b.N {
		outageOnce(b, n)
	}
}

func outageOnce(b *testing.B, n int) {
	b.StopTimer()
	e := newEnv(b, bulkAllowed)
	cfg, err := os.ReadFile(e.cfgPath)
	if err != nil {
		b.Fatal(err)
	}
	withOutbox := strings.Replace(string(cfg), "companies:\n", "delivery:\n  outbox_after: 1s\ncompanies:\n", 1)
	if err := os.WriteFile(e.cfgPath, []byte(withOutbox), 0o600); err != nil {
		b.Fatal(err)
	}
	e.initialSync(0)
	e.up.SetFault(&userpilottest.Fault{Status: 503})
	if path := os.Getenv("PGPILOT_BENCH_HEAPPROFILE"); path != "" {
		// The outage run inside the benchmark, for a heap profile of what
		// is live once everything is owed.
		ip := e.startInProcess()
		end := e.outageWrites(n)
		e.waitFor("every change owed durably", 30*time.Minute, func() bool { return e.checkpointLSN() >= end })
		writeHeapProfile(b, path)
		ip.stop()
		return
	}
	p := e.startPgpilot()
	end := e.outageWrites(n)
	e.waitFor("every change owed durably (checkpoint past the end)", 30*time.Minute, func() bool { return e.checkpointLSN() >= end })
	outagePeak := p.peakAnon.Load()
	outageHWM := p.peakRSS()
	_ = p.cmd.Process.Kill() // kill -9, with the backlog on disk
	<-p.done

	owed, err := state.SummarizeOutbox(e.stateDir)
	if err != nil {
		b.Fatal(err)
	}
	var storeBytes int64
	if fi, err := os.Stat(filepath.Join(e.stateDir, state.StoreFile)); err == nil {
		storeBytes = fi.Size()
	}
	p = e.startPgpilot()
	time.Sleep(5 * time.Second) // it loads what it owes and retries against the outage
	restartPeak := p.peakAnon.Load()
	e.up.SetFault(nil)
	b.StartTimer()
	began := time.Now()
	e.waitFor("every company delivered", 30*time.Minute, func() bool { return len(e.up.Companies()) >= n })
	drained := time.Since(began)
	b.StopTimer()
	u := p.stop()

	report(b, float64(outagePeak)/(1<<20), "outage_peak_anon_MB")
	report(b, float64(outageHWM)/(1<<20), "outage_peak_rss_MB")
	report(b, float64(max(restartPeak, u.peakAnon))/(1<<20), "restart_peak_anon_MB")
	report(b, float64(u.peakRSS)/(1<<20), "restart_peak_rss_MB")
	report(b, float64(owed.Companies), "owed_companies")
	if owed.Companies > 0 {
		report(b, float64(storeBytes)/float64(owed.Companies), "store_bytes/company")
	}
	report(b, drained.Seconds(), "drain_s")
	b.Logf("%d companies owed during the outage: peak anonymous memory %.0f MB (RSS %.0f MB); after kill -9 and restart %.0f MB; store %.1f MB; drained in %s",
		owed.Companies, float64(outagePeak)/(1<<20), float64(outageHWM)/(1<<20), float64(max(restartPeak, u.peakAnon))/(1<<20),
		float64(storeBytes)/(1<<20), drained.Round(time.Millisecond))
}

// outageWrites inserts N companies and updates each once more, in
// transactions of 100, and returns the end of that WAL.
func (e *env) outageWrites(n int) pglogrepl.LSN {
	e.b.Helper()
	e.writeRows(n, 100)
	if _, err := e.conn.Exec(context.Background(), `DO $$
		BEGIN
			FOR b IN 0..(SELECT max(id) FROM companies) / 100 LOOP
				UPDATE companies SET seats = coalesce(seats, 0) + 1 WHERE id > b * 100 AND id <= (b + 1) * 100;
				COMMIT;
			END LOOP;
		END $$`); err != nil {
		e.b.Fatal(err)
	}
	return e.walLSN()
}
