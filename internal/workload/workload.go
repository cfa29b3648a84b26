// Package workload is the companies table that pgpilot's tests, demo and
// benchmarks run against: its schema and mapping, a random workload of
// inserts, updates, rolled-back transactions and TOAST-sized values, and an
// oracle that computes, in SQL and independently of pgpilot's mapping code,
// what Userpilot should hold once pgpilot has caught up.
package workload

import (
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/state"
)

// Schema creates the companies table. updated_at is deliberately unmapped;
// notes is mapped and large enough (with Big) to be TOASTed.
const Schema = `
CREATE TABLE IF NOT EXISTS public.companies (
	id            bigint PRIMARY KEY,
	name          text NOT NULL,
	plan          text,
	seats         integer,
	monthly_spend numeric(38,10),
	trial         boolean,
	created_at    timestamptz,
	notes         text,
	updated_at    timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE public.companies ALTER COLUMN notes SET STORAGE EXTERNAL;
`

// Mapping is the companies section of a config for Schema.
const Mapping = `companies:
  table: public.companies
  company_id: id
  metadata:
    name: name
    plan: plan
    seats: seats
    monthly_spend: {column: monthly_spend, type: number}
    trial: trial
    created_at: {column: created_at, type: date}
    notes: notes
`

// Config is a whole config file for Schema, with the given connection,
// slot (also the publication's name), endpoint, key and state directory.
func Config(dbURL, slot, endpoint, apiKey, stateDir string, rateLimit float64) string {
	return fmt.Sprintf(`postgres:
  url: %q
  slot: %s
  publication: %s
userpilot:
  api_key: %q
  endpoint: %q
  rate_limit: %g
state:
  dir: %q
`, dbURL, slot, slot, apiKey, endpoint, rateLimit, stateDir) + Mapping
}

// Create makes the table.
func Create(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, Schema); err != nil {
		return fmt.Errorf("create companies table: %w", err)
	}
	return nil
}

// Seed inserts companies 1..n with deterministic values.
func Seed(ctx context.Context, conn *pgx.Conn, n int) error {
	_, err := conn.Exec(ctx, `
		INSERT INTO companies (id, name, plan, seats, monthly_spend, trial, created_at, notes)
		SELECT g, 'Company ' || g, (ARRAY['free','pro','enterprise'])[1 + g % 3], g % 500,
		       (g * 12.34)::numeric(38,10), g % 2 = 0, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour', NULL
		FROM generate_series(1, $1::int) g
		ON CONFLICT (id) DO NOTHING`, n)
	if err != nil {
		return fmt.Errorf("seed %d companies: %w", n, err)
	}
	return nil
}

// SeedWithNotes is Seed with every every-th company (every 50: 2 %)
// holding a notes value of 8,960 bytes, stored out of line (TOASTed): an
// update that leaves notes alone streams without it, so only a snapshot
// (or the first insert) carries it.
func SeedWithNotes(ctx context.Context, conn *pgx.Conn, n, every int) error {
	if err := Seed(ctx, conn, n); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `UPDATE companies SET notes = repeat(md5(id::text), 280) WHERE id % $1 = 0`, every); err != nil {
		return fmt.Errorf("notes of every %dth company: %w", every, err)
	}
	if _, err := conn.Exec(ctx, `VACUUM ANALYZE companies`); err != nil {
		return fmt.Errorf("vacuum companies: %w", err)
	}
	return nil
}

// UpdateSlice changes seats and plan (neither notes nor the key) of the
// companies with ids in (after, after+n], in one transaction; pass varies
// the plan from one pass over the table to the next.
func UpdateSlice(ctx context.Context, conn *pgx.Conn, after, n, pass int) error {
	_, err := conn.Exec(ctx, `UPDATE companies SET seats = seats + 1, plan = (ARRAY['free','pro','enterprise'])[1 + (seats + $3) % 3]
		WHERE id > $1 AND id <= $1 + $2`, after, n, pass)
	if err != nil {
		return fmt.Errorf("update companies (%d, %d]: %w", after, after+n, err)
	}
	return nil
}

var names = []string{"Globex", "Initech", "Umbrella", "Hooli", "Stark Industries", "Wayne Enterprises",
	"Ünïcødé GmbH", "株式会社テスト", "Emoji 🚀 Ltd", "O'Brien & Sons", `Quote "Co"`, "Tab\tNewline\nCo"}

// Step runs one random transaction touching up to a few companies with ids
// in [1, maxID]: inserts or upserts, updates of mapped or only unmapped
// columns, NULLs, unicode, occasionally a TOAST-sized value, and sometimes a
// rollback. It returns whether the transaction committed.
func Step(ctx context.Context, conn *pgx.Conn, rng *rand.Rand, maxID int) (bool, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(ctx)
	for range 1 + rng.IntN(4) {
		id := 1 + rng.IntN(maxID)
		var err error
		switch r := rng.IntN(10); {
		case r < 4:
			_, err = tx.Exec(ctx, `
				INSERT INTO companies (id, name, plan, seats, monthly_spend, trial, created_at, notes)
				VALUES ($1, $2, $3, $4, $5::numeric, $6, now() - ($7 * interval '1 second'), $8)
				ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, plan = EXCLUDED.plan, seats = EXCLUDED.seats,
					monthly_spend = EXCLUDED.monthly_spend, trial = EXCLUDED.trial, updated_at = now()`,
				id, names[rng.IntN(len(names))], nullable(rng, []string{"free", "pro", "enterprise"}[rng.IntN(3)]),
				nullable(rng, rng.IntN(1000)), spend(rng), nullable(rng, rng.IntN(2) == 0), rng.IntN(1e6), nil)
		case r < 7:
			_, err = tx.Exec(ctx, `UPDATE companies SET plan = $2, seats = $3, monthly_spend = $4::numeric, updated_at = now() WHERE id = $1`,
				id, nullable(rng, []string{"free", "pro", "enterprise"}[rng.IntN(3)]), nullable(rng, rng.IntN(1000)), spend(rng))
		case r < 9:
			// Only an unmapped column: nothing Userpilot holds changes.
			_, err = tx.Exec(ctx, `UPDATE companies SET updated_at = now() WHERE id = $1`, id)
		default:
			// A TOAST-sized value, later left untouched by updates.
			_, err = tx.Exec(ctx, `UPDATE companies SET notes = $2 WHERE id = $1`, id, strings.Repeat(names[rng.IntN(len(names))], 2000))
		}
		if err != nil {
			return false, err
		}
	}
	if rng.IntN(8) == 0 {
		return false, tx.Rollback(ctx)
	}
	return true, tx.Commit(ctx)
}

func nullable[T any](rng *rand.Rand, v T) any {
	if rng.IntN(6) == 0 {
		return nil
	}
	return v
}

// spend is a numeric(38,10) value with all its digits in use, as text.
func spend(rng *rand.Rand) any {
	if rng.IntN(6) == 0 {
		return nil
	}
	return fmt.Sprintf("%d%016d.%010d", rng.IntN(1e9), rng.Int64N(1e16), rng.Int64N(1e10))
}

// Expected computes, in SQL, each company's profile as Userpilot should hold
// it: keys with a NULL value are absent (Userpilot clears them).
func Expected(ctx context.Context, conn *pgx.Conn) (map[string]map[string]any, error) {
	rows, err := conn.Query(ctx, `
		SELECT id::text, name, plan, seats::text, monthly_spend::text, trial,
		       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), notes
		FROM companies`)
	if err != nil {
		return nil, fmt.Errorf("read expected state: %w", err)
	}
	defer rows.Close()
	out := map[string]map[string]any{}
	for rows.Next() {
		var id, name string
		var plan, seats, spend, created, notes *string
		var trial *bool
		if err := rows.Scan(&id, &name, &plan, &seats, &spend, &trial, &created, &notes); err != nil {
			return nil, err
		}
		m := map[string]any{"name": name}
		putStr(m, "plan", plan)
		putNum(m, "seats", seats)
		putNum(m, "monthly_spend", spend)
		if trial != nil {
			m["trial"] = *trial
		}
		if created != nil {
			// Fractional seconds without trailing zeros, none when zero.
			c := strings.TrimSuffix(*created, "Z")
			c = strings.TrimRight(strings.TrimRight(c, "0"), ".")
			m["created_at"] = c + "Z"
		}
		putStr(m, "notes", notes)
		out[id] = m
	}
	return out, rows.Err()
}

func putStr(m map[string]any, k string, v *string) {
	if v != nil {
		m[k] = *v
	}
}

func putNum(m map[string]any, k string, v *string) {
	if v != nil {
		m[k] = json.Number(*v)
	}
}

// Diff lists how got (Userpilot's profiles) differs from want, comparing
// numbers by exact value (so 1.50 equals 1.5, but no digit may be lost).
// Empty means equal.
func Diff(want, got map[string]map[string]any) []string {
	var d []string
	for id, w := range want {
		g, ok := got[id]
		if !ok {
			d = append(d, fmt.Sprintf("company %s missing", id))
			continue
		}
		for k, wv := range w {
			gv, ok := g[k]
			if !ok {
				d = append(d, fmt.Sprintf("company %s: %s missing, want %v", id, k, short(wv)))
			} else if !same(wv, gv) {
				d = append(d, fmt.Sprintf("company %s: %s = %v, want %v", id, k, short(gv), short(wv)))
			}
		}
		for k, gv := range g {
			// A NULL column is a key never sent or sent as null: cleared.
			if _, ok := w[k]; !ok && gv != nil {
				d = append(d, fmt.Sprintf("company %s: %s = %v, want it absent (NULL)", id, k, short(gv)))
			}
		}
	}
	for id := range got {
		if _, ok := want[id]; !ok {
			d = append(d, fmt.Sprintf("company %s exists in Userpilot but not in the table", id))
		}
	}
	sort.Strings(d)
	return d
}

func same(want, got any) bool {
	wn, wok := want.(json.Number)
	gn, gok := got.(json.Number)
	if wok || gok {
		if !wok || !gok {
			return false
		}
		a, ok1 := new(big.Rat).SetString(string(wn))
		b, ok2 := new(big.Rat).SetString(string(gn))
		return ok1 && ok2 && a.Cmp(b) == 0
	}
	return want == got
}

func short(v any) any {
	if s, ok := v.(string); ok && len(s) > 60 {
		return fmt.Sprintf("%q…(%d bytes)", s[:40], len(s))
	}
	return v
}

// Profiles reads what Userpilot holds: company_id → metadata.
type Profiles func() map[string]map[string]any

// WaitConverged polls until profiles equal Expected(conn), or returns an
// error listing the first differences when timeout passes.
func WaitConverged(ctx context.Context, conn *pgx.Conn, profiles Profiles, timeout time.Duration) error {
	return WaitNoDiff(ctx, timeout, "the table", 10, func() ([]string, error) {
		want, err := Expected(ctx, conn)
		if err != nil {
			return nil, err
		}
		return Diff(want, profiles()), nil
	})
}

// WaitNoDiff polls diff every 100 ms until it finds no difference between
// Userpilot and what (the table, the tables, the users table…), or returns
// an error listing the first show differences once timeout passes.
func WaitNoDiff(ctx context.Context, timeout time.Duration, what string, show int, diff func() ([]string, error)) error {
	var d []string
	deadline := time.Now().Add(timeout)
	for {
		var err error
		if d, err = diff(); err != nil {
			return err
		}
		if len(d) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if len(d) > show {
		d = append(d[:show], fmt.Sprintf("… and %d more", len(d)-show))
	}
	return fmt.Errorf("Userpilot did not converge to %s within %s:\n%s", what, timeout, strings.Join(d, "\n"))
}

// SlotName derives a cluster-unique replication slot name from a test
// database's URL: slots are per cluster, and tests share one.
func SlotName(url string) string {
	db := url[strings.LastIndex(url, "/")+1:]
	if i := strings.Index(db, "?"); i >= 0 {
		db = db[:i]
	}
	if len(db) > 60 {
		db = db[len(db)-60:]
	}
	return "s" + strings.Trim(db, "_")
}

// WaitInitialSync waits until the checkpoint in stateDir says the initial
// sync is done. Waiting for an empty table to "converge" is not enough: it
// converges before pgpilot has even created its slot, and rows written
// then arrive through the snapshot, not the stream a test meant to exercise.
func WaitInitialSync(ctx context.Context, stateDir string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		cp, ok, err := state.ReadCheckpoint(stateDir)
		// Done: the slot is set up and the snapshot job is delivered.
		if err == nil && ok && cp.InitialSync == state.InitialSyncDone && cp.Snapshot == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("initial sync not done within %s (checkpoint: %+v, %v)", timeout, cp, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
