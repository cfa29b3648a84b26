package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/pgpilot/pgpilot/state"
)

// relatedAggregates maps users as a related table of companies.
const relatedAggregates = `  related:
    - table: public.users
      company_id: company_id
      aggregate:
        user_count: count(*)
        active_users: count(*) filter (where active)
`

// BenchmarkRelatedBurst is docs/performance.md's related-tables figure:
// 100,000 companies and 1,000,000 users (10 a company, aggregated into
// user_count and active_users), initial sync done, then a burst of 200,000 user changes
// (20,000 companies' users each toggled, in transactions of 1,000 rows)
// streamed into an unlimited stand-in; against the same burst on a single
// table (200,000 updates of 20,000 companies' own rows, in transactions of
// 1,000). Reported: converge time (the burst committed → Userpilot holds
// the values the SQL computes), changes/s, and for the related burst the
// queries issued, companies and related rows re-read, and rows/s while
// reading. PGPILOT_BENCH_COMPANIES scales it (users are 10 per company,
// the burst 2 changes per company).
func BenchmarkRelatedBurst(b *testing.B) {
	companies := envInt("PGPILOT_BENCH_COMPANIES", 100_000)
	for _, shape := range []string{"related", "single"} {
		b.Run(shape, func(b *testing.B) {
			for range b.N {
				relatedBurstOnce(b, companies, shape == "related")
			}
		})
	}
}

func relatedBurstOnce(b *testing.B, companies int, related bool) {
	b.StopTimer()
	ctx := context.Background()
	e := newEnv(b, bulkAllowed)
	if _, err := e.conn.Exec(ctx, `CREATE TABLE users (id bigint PRIMARY KEY, company_id bigint NOT NULL, active boolean NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO companies (id, name, seats) SELECT i, 'Company ' || i, 0 FROM generate_series(1, $1::int) i`, []any{companies}},
		{`INSERT INTO users (id, company_id, active) SELECT i, (i - 1) / 10 + 1, i % 2 = 0 FROM generate_series(1, $1::int * 10) i`, []any{companies}},
		{`CREATE INDEX ON users (company_id)`, nil},
		{`ALTER TABLE users REPLICA IDENTITY FULL`, nil},
		{`ANALYZE`, nil},
	} {
		if _, err := e.conn.Exec(ctx, q.sql, q.args...); err != nil {
			b.Fatal(err)
		}
	}
	if related {
		cfg, err := os.ReadFile(e.cfgPath)
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(e.cfgPath, append(cfg, relatedAggregates...), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	e.initialSync(companies)

	p := e.startPgpilot()
	e.waitFor("streaming", time.Minute, func() bool { return e.checkpointLSN() != 0 })
	affected := companies / 5
	changes := 2 * companies
	writeStart := time.Now()
	if related {
		// Each affected company's 10 users toggled: 10 changes a company.
		for lo := 1; lo <= affected*10; lo += 1000 {
			if _, err := e.conn.Exec(ctx, `UPDATE users SET active = NOT active WHERE id BETWEEN $1 AND $2`, lo, lo+999); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		// Each affected company's own row updated 10 times.
		for round := range 10 {
			for lo := 1; lo <= affected; lo += 1000 {
				if _, err := e.conn.Exec(ctx, `UPDATE companies SET seats = $3 WHERE id BETWEEN $1 AND $2`, lo, lo+999, round+1); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	wrote := time.Now()
	b.StartTimer()
	want := expectedBurst(b, e, related, affected)
	key := "seats"
	if related {
		key = "active_users"
	}
	converged := e.waitFor("the burst delivered", 30*time.Minute, func() bool { return burstDelivered(e, key, want) })
	b.StopTimer()
	took := converged.Sub(writeStart)
	report(b, took.Seconds(), "converge_s")
	report(b, converged.Sub(wrote).Seconds(), "after_commit_s")
	report(b, float64(changes)/took.Seconds(), "changes/s")
	if related {
		time.Sleep(2500 * time.Millisecond) // the status file is written every 2 s
		st, ok, err := state.ReadStatus(e.stateDir)
		if err != nil || !ok || st.Related == nil {
			b.Fatalf("no related counts in the status file (%v)", err)
		}
		r := st.Related
		report(b, float64(r.Queries), "related_queries")
		report(b, float64(r.Companies), "related_companies")
		report(b, float64(r.Rows), "related_rows")
		report(b, float64(r.Rows)/r.Seconds, "related_rows/s")
		b.Logf("burst of %d user changes (%d companies): %d related queries in %d reads, %d companies and %d related rows re-read (%.0f rows/s while reading), converged %s after the first write",
			changes, affected, r.Queries, r.Reads, r.Companies, r.Rows, float64(r.Rows)/r.Seconds, took.Round(time.Millisecond))
	} else {
		b.Logf("burst of %d company changes (%d companies): converged %s after the first write", changes, affected, took.Round(time.Millisecond))
	}
	p.stop()
}

// expectedBurst is, per affected company, the value the burst leaves:
// active_users (related) or seats (single), as the SQL computes it.
func expectedBurst(b *testing.B, e *env, related bool, affected int) map[string]string {
	q := `SELECT id::text, seats::text FROM companies WHERE id <= $1`
	if related {
		q = `SELECT company_id::text, (count(*) FILTER (WHERE active))::text FROM users WHERE company_id <= $1 GROUP BY company_id`
	}
	rows, err := e.conn.Query(context.Background(), q, affected)
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	want := map[string]string{}
	for rows.Next() {
		var id, v string
		if err := rows.Scan(&id, &v); err != nil {
			b.Fatal(err)
		}
		want[id] = v
	}
	if len(want) != affected {
		b.Fatalf("%d companies affected, want %d", len(want), affected)
	}
	return want
}

func burstDelivered(e *env, key string, want map[string]string) bool {
	for id, v := range want {
		md, ok := e.up.Company(id)
		if !ok || fmt.Sprint(md[key]) != v {
			return false
		}
	}
	return true
}

// BenchmarkRelatedLatency is the latency of a related change against a
// change to the companies table itself, on the real-time path: at a steady
// 10 and 100 changes/s, each change a single-row INSERT of a user of
// another company (related: users aggregated into user_count), or a
// single-row UPDATE of another company's own row (single). Latency is from
// the scheduled commit to the stand-in receiving that company's identify.
// PGPILOT_BENCH_LATENCY_SECONDS sets how long each rate runs (default 10).
func BenchmarkRelatedLatency(b *testing.B) {
	seconds := envInt("PGPILOT_BENCH_LATENCY_SECONDS", 10)
	for _, shape := range []string{"related", "single"} {
		for _, rate := range []int{10, 100} {
			b.Run(fmt.Sprintf("%s/rate=%d", shape, rate), func(b *testing.B) {
				for range b.N {
					relatedLatencyOnce(b, shape == "related", rate, time.Duration(seconds)*time.Second)
				}
			})
		}
	}
}

func relatedLatencyOnce(b *testing.B, related bool, rate int, d time.Duration) {
	b.StopTimer()
	ctx := context.Background()
	n := int(float64(rate) * d.Seconds())
	e := newEnv(b, realtimeOnly)
	for _, q := range []string{
		fmt.Sprintf(`INSERT INTO companies (id, name, seats) SELECT i, 'Company ' || i, 0 FROM generate_series(1, %d) i`, n),
		`CREATE TABLE users (id bigint PRIMARY KEY, company_id bigint NOT NULL)`,
		`CREATE INDEX ON users (company_id)`,
		`ALTER TABLE users REPLICA IDENTITY FULL`,
	} {
		if _, err := e.conn.Exec(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	if related {
		cfg, err := os.ReadFile(e.cfgPath)
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(e.cfgPath, append(cfg, "  related:\n    - table: public.users\n      company_id: company_id\n      aggregate:\n        user_count: count(*)\n"...), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	e.initialSync(n)
	p := e.startPgpilot()
	e.waitFor("streaming", time.Minute, func() bool { return e.checkpointLSN() != 0 })
	time.Sleep(500 * time.Millisecond)
	offset := len(e.up.Requests())
	period := time.Second / time.Duration(rate)
	start := time.Now().Add(50 * time.Millisecond)
	due := func(i int) time.Time { return start.Add(time.Duration(i) * period) }
	b.StartTimer()
	for i := range n {
		time.Sleep(time.Until(due(i)))
		q := `UPDATE companies SET seats = 1 WHERE id = $1`
		if related {
			q = `INSERT INTO users (id, company_id) VALUES ($1, $1)`
		}
		if _, err := e.conn.Exec(ctx, q, i+1); err != nil {
			b.Fatal(err)
		}
	}
	received := make([]time.Time, n)
	e.waitFor("every change delivered", 5*time.Minute, func() bool {
		reqs := e.up.Requests()[offset:]
		got := 0
		for _, r := range reqs {
			if r.Path != "/v1/companies/identify" || r.Status/100 != 2 || len(r.CompanyIDs) != 1 {
				continue
			}
			if id, err := strconv.Atoi(r.CompanyIDs[0]); err == nil && id >= 1 && id <= n && received[id-1].IsZero() {
				received[id-1] = r.Time
			}
		}
		for _, t := range received {
			if !t.IsZero() {
				got++
			}
		}
		return got == n
	})
	b.StopTimer()
	p.stop()
	lat := make([]float64, n)
	for i := range n {
		lat[i] = float64(received[i].Sub(due(i)).Microseconds()) / 1000
	}
	slices.Sort(lat)
	report(b, percentile(lat, 50), "p50_ms")
	report(b, percentile(lat, 99), "p99_ms")
	report(b, lat[n-1], "max_ms")
	b.Logf("%d changes at %d/s (related: %t): commit → Userpilot p50 %.2f ms, p99 %.2f ms, max %.2f ms",
		n, rate, related, percentile(lat, 50), percentile(lat, 99), lat[n-1])
}
