package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// usersEnv is env with the users tables beside the companies, and a config
// with both sections.
func usersEnv(t *testing.T, companies, users int, delivery string) *env {
	t.Helper()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	require.NoError(t, workload.CreateUsers(ctx, e.conn))
	require.NoError(t, workload.Seed(ctx, e.conn, companies))
	require.NoError(t, workload.SeedUsers(ctx, e.conn, users, companies))
	cfg := workload.Config(e.url, e.slot(), e.up.URL(), apiKey, e.stateDir, 2000) + workload.UsersMapping
	if delivery != "" {
		cfg = strings.Replace(cfg, "companies:\n", delivery+"companies:\n", 1)
	}
	e.writeConfig(cfg)
	return e
}

// usersOf is the stand-in's users as the workload's oracle reads them.
func (e *env) usersOf() map[string]workload.UserProfile {
	out := map[string]workload.UserProfile{}
	for id, u := range e.up.Users() {
		out[id] = workload.UserProfile{Company: u.Company, Metadata: u.Metadata}
	}
	return out
}

// convergeUsers waits until the stand-in holds the table's companies and
// users, as the oracles compute them in SQL.
func (e *env) convergeUsers(timeout time.Duration) {
	e.t.Helper()
	e.converge(timeout)
	err := workload.WaitUsersConverged(context.Background(), e.conn, e.usersOf, timeout)
	if err != nil {
		// What each differing user went through: its row, its tickets, and
		// every record Userpilot applied for it.
		for _, line := range strings.Split(err.Error(), "\n") {
			var id string
			if _, scanErr := fmt.Sscanf(line, "user %s", &id); scanErr != nil {
				continue
			}
			id = strings.TrimSuffix(id, ":")
			var row, tickets string
			_ = e.conn.QueryRow(context.Background(), `SELECT coalesce((SELECT row_to_json(u)::text FROM users u WHERE id = $1::bigint), 'no row'),
				coalesce((SELECT json_agg(t)::text FROM tickets t WHERE user_id = $1::bigint), '[]')`, id).Scan(&row, &tickets)
			e.t.Logf("user %s: row %s; tickets %s", id, row, tickets)
			for _, a := range e.up.AppliedUsers() {
				if a.UserID == id {
					e.t.Logf("  applied (%s): company %q %v", a.Kind, a.Company, a.Metadata["open_tickets"])
				}
			}
		}
	}
	require.NoError(e.t, err)
}

// TestUsersAndCompaniesThroughKillsAnOutageAndTheInitialSyncEndEqualToTheTable
// runs the modes together, against the binary: users and companies are
// written (users made, moved between companies or to none, made bots, deleted,
// twenty at once; tickets opened and closed) from before the initial sync
// starts, through kill -9s during the companies' and the users' initial
// syncs, and through a Userpilot outage long enough for the outbox, with
// kill -9s during it and while it drains. Then Userpilot's companies and
// users (their company, their keys, the related open_tickets) equal the
// table, computed in SQL, and every user the table no longer syncs is
// marked deleted.
func TestUsersAndCompaniesThroughKillsAnOutageAndTheInitialSyncEndEqualToTheTable(t *testing.T) {
	t.Parallel()
	const companies, users = 300, 1500
	e := usersEnv(t, companies, users, "delivery:\n  max_retained_wal: 0\n  outbox_after: 1s\n  snapshot_chunk_rows: 200\n")
	e.dropSlotAtEnd()
	ctx := context.Background()
	e.up.SetFault(&userpilottest.Fault{Delay: 5 * time.Millisecond, Apply: true, Status: 202}) // the initial syncs take a while

	var committed atomic.Int64
	wctx, stopWriting := context.WithCancel(ctx)
	writing := make(chan struct{})
	go func() {
		defer close(writing)
		conn, err := pgx.Connect(wctx, e.url)
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		rng := rand.New(rand.NewPCG(21, 22))
		for wctx.Err() == nil {
			var ok bool
			var err error
			if rng.IntN(3) == 0 {
				ok, err = workload.Step(wctx, conn, rng, companies)
			} else {
				ok, err = workload.UsersStep(wctx, conn, rng, users+100, companies)
			}
			if err == nil && ok {
				committed.Add(1)
			}
			time.Sleep(time.Duration(1+rng.IntN(3)) * time.Millisecond)
		}
	}()
	t.Cleanup(func() { stopWriting(); <-writing })

	rng := rand.New(rand.NewPCG(23, 24))
	p := e.run()
	for range 3 { // during the initial syncs (companies', then users')
		time.Sleep(time.Duration(300+rng.IntN(1500)) * time.Millisecond)
		p.kill9()
		p = e.run()
	}
	e.up.SetFault(&userpilottest.Fault{Status: 503})
	for range 3 { // an outage: before and after the switch to the outbox
		time.Sleep(time.Duration(500+rng.IntN(1500)) * time.Millisecond)
		p.kill9()
		p = e.run()
	}
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), `delivery mode: outbox`) }, 30*time.Second, 50*time.Millisecond)
	e.up.SetFault(&userpilottest.Fault{Delay: 10 * time.Millisecond, Apply: true, Status: 202}) // back, slowly
	// Killed twice while the outbox drains.
	for range 2 {
		time.Sleep(time.Duration(200+rng.IntN(800)) * time.Millisecond)
		p.kill9()
		p = e.run()
	}
	stopWriting()
	<-writing
	e.up.SetFault(nil)
	e.convergeUsers(180 * time.Second)
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
	t.Logf("%d transactions committed through 8 kill -9s and an outage; %d users, %d companies in Userpilot",
		committed.Load(), len(e.up.Users()), len(e.up.Companies()))
}

// A users-only sync: no companies section. Its initial sync is the users',
// streaming follows, and a user's company is named (the company exists in
// Userpilot with its id only: no section sends its properties).
func TestAUsersOnlySyncSendsUsersAndTheirCompany(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	ctx := context.Background()
	require.NoError(t, workload.CreateUsers(ctx, e.conn))
	require.NoError(t, workload.Seed(ctx, e.conn, 20))
	require.NoError(t, workload.SeedUsers(ctx, e.conn, 100, 20))
	cfg := workload.Config(e.url, e.slot(), e.up.URL(), apiKey, e.stateDir, 2000)
	cfg = cfg[:strings.Index(cfg, "companies:\n")] + workload.UsersMapping
	e.writeConfig(cfg)
	p := e.run()
	require.NoError(t, workload.WaitUsersConverged(ctx, e.conn, e.usersOf, 60*time.Second))
	_, err := e.conn.Exec(ctx, `UPDATE users SET company_id = 7, name = 'moved' WHERE id = 3`)
	require.NoError(t, err)
	require.NoError(t, workload.WaitUsersConverged(ctx, e.conn, e.usersOf, 60*time.Second))
	u, ok := e.up.User("3")
	require.True(t, ok)
	assert.Equal(t, "7", u.Company)
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)

	// `why --user` reads the users' key space of the state directory: user
	// 3 is delivered, with its company among the keys its index holds.
	code, out := e.cli("", "why", "--user", "3", "--config", e.cfgPath, "--json")
	require.Equal(t, 0, code, out)
	var w daemon.Whereabouts
	require.NoError(t, json.Unmarshal([]byte(out), &w), out)
	assert.Equal(t, "3", w.UserID)
	assert.Empty(t, w.CompanyID)
	assert.Equal(t, "delivered", w.State, out)
}
