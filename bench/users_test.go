package bench

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// BenchmarkUsers is the users section beside companies under scaled-down
// budgets, which users and companies share: real time rt requests/s (429
// beyond it, no Retry-After) and bulk jobs at bulk records/s, one at a time
// across both. pgpilot is told only rate_limit and learns the bulk path, as
// in BenchmarkConvergence. The pgpilot binary runs against the workload's
// users mapping (where, pii, an enum code, a related aggregate over
// tickets).
//
//   - initial: the first start on tables that already hold the companies
//     and the users; Userpilot must end equal to both.
//   - burst: after the initial sync of the companies alone, the users are
//     inserted, then every user is written writes-1 times more, moving to
//     another company each time.
//   - companies: the same burst of companies, for comparison: inserted,
//     then every company written writes-1 times more.
//   - mixed: companies and users inserted together after an empty initial
//     sync: both kinds compete for the same budgets.
//
// The floor is every record Userpilot must take (companies, and users that
// are not bots) over rt+bulk: both budgets spent on distinct records only.
// Reported: time ÷ floor (target ≤ 1.2), real-time requests, bulk jobs,
// 429s, pgpilot's CPU and peak memory.
//
//	go test -run '^$' -bench 'Users$' -benchtime 1x -count 3 -timeout 2h ./bench/
func BenchmarkUsers(b *testing.B) {
	cases := []usersCase{
		{shape: "initial", companies: 20_000, users: 200_000, rt: 100, bulk: 2000},
		{shape: "burst", companies: 2000, users: 20_000, writes: 3, rt: 100, bulk: 300},
		{shape: "companies", companies: 20_000, writes: 3, rt: 100, bulk: 300},
		{shape: "mixed", companies: 5000, users: 15_000, rt: 100, bulk: 300},
	}
	for _, c := range cases {
		name := fmt.Sprintf("%s/companies=%d/users=%d/rt=%g/bulk=%g", c.shape, c.companies, c.users, c.rt, c.bulk)
		if c.writes > 1 {
			name += fmt.Sprintf("/writes=%d", c.writes)
		}
		b.Run(name, func(b *testing.B) {
			for range b.N {
				usersOnce(b, c)
			}
		})
	}
}

type usersCase struct {
	shape            string // initial, burst or mixed
	companies, users int
	writes           int // burst: each user written this many times
	rt, bulk         float64
}

// bots is how many of users 1..n SeedUsers makes bots (every fiftieth):
// the mapping's where leaves them out.
func bots(n int) int { return n / 50 }

func usersOnce(b *testing.B, c usersCase) {
	b.StopTimer()
	ctx := context.Background()
	e := newUsersEnv(b, userpilottest.Options{APIKey: benchAPIKey, RateLimit: c.rt, BulkRecordsPerSecond: c.bulk},
		fmt.Sprintf("%g", c.rt), "", workload.UsersMapping)
	owed := c.companies + c.users - bots(c.users) // records Userpilot must take in the measured part

	var p *proc
	switch c.shape {
	case "initial":
		if err := workload.Seed(ctx, e.conn, c.companies); err != nil {
			b.Fatal(err)
		}
		if err := workload.SeedUsers(ctx, e.conn, c.users, c.companies); err != nil {
			b.Fatal(err)
		}
		if _, err := e.conn.Exec(ctx, `VACUUM ANALYZE companies, users, tickets`); err != nil {
			b.Fatal(err)
		}
	case "burst":
		if err := workload.Seed(ctx, e.conn, c.companies); err != nil {
			b.Fatal(err)
		}
		p = e.startPgpilot()
		e.waitFor("initial sync of the companies", 10*time.Minute, e.initialSyncDone)
		e.waitFor("companies delivered", 10*time.Minute, func() bool { return e.up.Accepted() >= c.companies })
		owed -= c.companies // already there
	case "mixed", "companies":
		p = e.startPgpilot()
		e.waitFor("initial sync", 10*time.Minute, e.initialSyncDone)
	}
	floor := time.Duration(float64(owed) / (c.rt + c.bulk) * float64(time.Second))
	requestsBefore := len(e.up.Requests())

	waitQuiet(b, e.pg.DataDir)
	machine := sampleMachine(e.pg.DataDir)
	b.StartTimer()
	start := time.Now()
	switch c.shape {
	case "initial":
		p = e.startPgpilot()
	case "burst":
		if err := workload.SeedUsers(ctx, e.conn, c.users, c.companies); err != nil {
			b.Fatal(err)
		}
		for i := 1; i < c.writes; i++ {
			// Every user moves: to the next company, or from none to one.
			if _, err := e.conn.Exec(ctx, `UPDATE users SET company_id = 1 + (id + $1) % $2, name = name || '.', updated_at = now()`,
				i, c.companies); err != nil {
				b.Fatal(err)
			}
		}
	case "companies":
		if err := workload.Seed(ctx, e.conn, c.companies); err != nil {
			b.Fatal(err)
		}
		for i := 1; i < c.writes; i++ {
			if _, err := e.conn.Exec(ctx, `UPDATE companies SET seats = seats + 1, updated_at = now()`); err != nil {
				b.Fatal(err)
			}
		}
	case "mixed":
		if err := workload.Seed(ctx, e.conn, c.companies); err != nil {
			b.Fatal(err)
		}
		if err := workload.SeedUsers(ctx, e.conn, c.users, c.companies); err != nil {
			b.Fatal(err)
		}
	}
	took := e.waitUsersConverged(start, c.companies, c.users-bots(c.users))
	b.StopTimer()
	others := machine.foreignCores(e.pg.DataDir)
	u := p.stop()

	var rtRequests, jobs, tooMany int
	for _, r := range e.up.Requests()[requestsBefore:] {
		switch {
		case r.Status == 429:
			tooMany++
		case r.Path == "/v1/identify" || r.Path == "/v1/companies/identify":
			rtRequests++
		case (r.Path == "/v1/users/bulk_identify" || r.Path == "/v1/companies/bulk_identify") && r.Status == 202:
			jobs++
		}
	}
	report(b, took.Seconds()/floor.Seconds(), "x_floor")
	report(b, took.Seconds(), "s_converge")
	report(b, floor.Seconds(), "s_floor")
	report(b, float64(rtRequests), "realtime_requests")
	report(b, float64(jobs), "bulk_jobs")
	report(b, float64(tooMany), "429s")
	report(b, u.cpu.Seconds(), "cpu_s")
	report(b, float64(u.peakRSS)/(1<<20), "peak_MB")
	report(b, float64(u.peakAnon)/(1<<20), "peak_anon_MB")
	report(b, others, "other_cores")
	b.Logf("%s: %d records owed, converged in %s, floor %s (%.2f×); %d real-time, %d bulk jobs, %d 429s; pgpilot CPU %s, peak RSS %.1f MB (anon %.1f MB); other processes %.2f cores",
		c.shape, owed, took.Round(time.Millisecond), floor.Round(time.Millisecond), took.Seconds()/floor.Seconds(),
		rtRequests, jobs, tooMany, u.cpu.Round(time.Millisecond), float64(u.peakRSS)/(1<<20), float64(u.peakAnon)/(1<<20), others)
}

// newUsersEnv is newEnv with the users table beside the companies, a
// stand-in with opts and a config with both sections: rate_limit as
// given, bulk_rate only if given, users as the users section.
func newUsersEnv(b *testing.B, opts userpilottest.Options, rateLimit, bulkRate, users string) *env {
	b.Helper()
	e := newDatabaseEnv(b, userpilottest.NewServer(opts))
	e.users = true
	if err := workload.CreateUsers(context.Background(), e.conn); err != nil {
		b.Fatal(err)
	}
	cfg := workload.Config(e.url, e.slot, e.up.URL(), benchAPIKey, e.stateDir, 1)
	limits := "  rate_limit: " + rateLimit + "\n"
	if bulkRate != "" {
		limits += "  bulk_rate: " + bulkRate + "\n"
	}
	cfg = strings.Replace(cfg, "  rate_limit: 1\n", limits, 1) + users
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	return e
}

// waitUsersConverged waits until the stand-in holds at least the companies
// and users counted, then until it equals the table (computed in SQL), and
// returns how long after start the last record it applied was: the moment
// Userpilot became equal, however late this looked. The counts are a cheap
// gate, so the oracle's queries do not compete with pgpilot for the cores
// while most records are still owed.
func (e *env) waitUsersConverged(start time.Time, companies, users int) time.Duration {
	e.b.Helper()
	ctx := context.Background()
	e.waitFor("every record applied once", 30*time.Minute, func() bool {
		return e.up.Accepted() >= companies && e.up.AcceptedUsers() >= users
	})
	if err := workload.WaitConverged(ctx, e.conn, e.up.Companies, 30*time.Minute); err != nil {
		e.b.Fatal(err)
	}
	if err := e.userpilotHoldsUsers(30 * time.Minute); err != nil {
		e.b.Fatal(err)
	}
	return e.up.LastApplied().Sub(start)
}

// entityMapping maps users as plainly as workload.Mapping maps companies
// (six columns and the membership beside its seven; no where, no related),
// so that BenchmarkEntityCPU compares the cost of a change of each kind,
// not of two mappings.
const entityMapping = `users:
  table: public.users
  user_id: id
  company_id: company_id
  metadata:
    name: name
    email: email
    role: {column: role, values: {0: agent, 1: administrator}, default: other}
    is_bot: is_bot
    bio: bio
    updated_at: {column: updated_at, type: date}
`

// BenchmarkEntityCPU is BenchmarkCatchUp's batch100 drain, once of N new
// companies and once of N new users (each in one of 1,000 companies made
// before), with both sections configured: pgpilot's CPU seconds per 100k
// changes of each kind (a user's target: within 10 % of a company's), its
// rows/s and peak memory.
//
//	go test -run '^$' -bench 'EntityCPU' -benchtime 1x -count 3 ./bench/
func BenchmarkEntityCPU(b *testing.B) {
	n := benchRows()
	for _, entity := range []string{"company", "user"} {
		b.Run("entity="+entity, func(b *testing.B) {
			for range b.N {
				entityCPUOnce(b, entity, n)
			}
		})
	}
}

// companiesBefore is how many companies BenchmarkEntityCPU's initial sync
// makes: the users' companies.
const companiesBefore = 1000

// insertUsersSQL inserts users lo..hi (SQL expressions), each in one of
// the companiesBefore companies, like insertSQL's companies: every mapped
// column set but bio.
const insertUsersSQL = `INSERT INTO users (id, company_id, name, email, role, is_bot, bio, updated_at)
	SELECT g, 1 + g %% 1000, 'User ' || g, 'user' || g || '@example.com', g %% 3, false, NULL,
	       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour'
	FROM generate_series(%s, %s) g`

func entityCPUOnce(b *testing.B, entity string, n int) {
	b.StopTimer()
	ctx := context.Background()
	e := newUsersEnv(b, userpilottest.Options{APIKey: benchAPIKey, BulkRecordsPerSecond: standInBulkRate}, "100000", "1000000", entityMapping)
	if err := workload.Seed(ctx, e.conn, companiesBefore); err != nil {
		b.Fatal(err)
	}
	e.initialSync(companiesBefore)
	accepted := func() int { return e.up.Accepted() - companiesBefore }
	var end pglogrepl.LSN
	if entity == "user" {
		accepted = e.up.AcceptedUsers
		end = e.writeRowsOf(insertUsersSQL, 0, n, 100)
	} else {
		end = e.writeRowsOf(insertSQL, companiesBefore, n, 100)
	}

	waitQuiet(b, e.pg.DataDir)
	before := sampleMachine(e.pg.DataDir)
	b.StartTimer()
	began := time.Now()
	p := e.startPgpilot()
	delivered := e.waitFor("every row delivered", 30*time.Minute, func() bool { return accepted() >= n })
	b.StopTimer()
	others := before.foreignCores(e.pg.DataDir)
	e.waitFor("checkpoint past the end", 5*time.Minute, func() bool { return e.checkpointLSN() >= end })
	u := p.stop()
	if entity == "user" {
		if got := len(e.up.Users()); got != n {
			b.Fatalf("stand-in holds %d users, want %d", got, n)
		}
	} else if got := len(e.up.Companies()); got != companiesBefore+n {
		b.Fatalf("stand-in holds %d companies, want %d", got, companiesBefore+n)
	}
	took := delivered.Sub(began)
	report(b, u.cpu.Seconds()/float64(n)*100_000, "cpu_s/100k")
	report(b, float64(n)/took.Seconds(), "pgpilot_rows/s")
	report(b, float64(u.peakRSS)/(1<<20), "peak_MB")
	report(b, float64(u.peakAnon)/(1<<20), "peak_anon_MB")
	report(b, others, "others_cores")
	b.Logf("%d new %s rows drained in %s (%.0f rows/s); pgpilot CPU %s (%.2f s/100k), peak RSS %.1f MB; other processes %.2f cores",
		n, entity, took.Round(time.Millisecond), float64(n)/took.Seconds(), u.cpu.Round(time.Millisecond),
		u.cpu.Seconds()/float64(n)*100_000, float64(u.peakRSS)/(1<<20), others)
}
