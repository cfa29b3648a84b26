package workload

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
)

// The related-tables workload: companies (with is_test, filtered out by
// companies.where), their subscriptions (a lookup of the latest one) and
// their users (aggregates), with an oracle computed in SQL.

// RelatedSchema adds is_test to companies and creates subscriptions and
// users. The related tables have REPLICA IDENTITY FULL (users) and an
// identity index holding company_id (subscriptions), the two forms
// pgpilot accepts; companies has FULL, which companies.where needs.
const RelatedSchema = `
ALTER TABLE public.companies ADD COLUMN IF NOT EXISTS is_test boolean NOT NULL DEFAULT false;
ALTER TABLE public.companies REPLICA IDENTITY FULL;
CREATE TABLE IF NOT EXISTS public.subscriptions (
	id         bigint PRIMARY KEY,
	company_id bigint NOT NULL,
	mrr        numeric(12,2),
	status     text,
	updated_at timestamptz NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS subscriptions_company_id ON public.subscriptions (company_id, id);
ALTER TABLE public.subscriptions REPLICA IDENTITY USING INDEX subscriptions_company_id;
CREATE TABLE IF NOT EXISTS public.users (
	id            bigint PRIMARY KEY,
	company_id    bigint,
	active        boolean NOT NULL DEFAULT true,
	last_login_at timestamptz
);
CREATE INDEX IF NOT EXISTS users_company_id ON public.users (company_id);
ALTER TABLE public.users REPLICA IDENTITY FULL;
`

// RelatedMapping is what follows Mapping in the companies section.
const RelatedMapping = `  on_delete: mark
  related:
    - table: public.subscriptions
      company_id: company_id
      order_by: updated_at desc, id desc
      metadata:
        mrr: {column: mrr, type: number}
        billing_status: status
    - table: public.users
      company_id: company_id
      aggregate:
        user_count: count(*)
        active_users: count(*) filter (where active)
        last_login_at: max(last_login_at)
  where: not is_test
`

// CreateRelated makes the tables (after Create).
func CreateRelated(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, RelatedSchema); err != nil {
		return fmt.Errorf("create related tables: %w", err)
	}
	return nil
}

// SeedRelated inserts companies 1..n (every tenth a test company), a
// subscription for most, and users: company i gets i%7 users (some none).
func SeedRelated(ctx context.Context, conn *pgx.Conn, n int) error {
	for _, q := range []string{`
		INSERT INTO companies (id, name, plan, seats, is_test)
		SELECT i, 'Company ' || i, (ARRAY['free','pro','enterprise'])[1 + i % 3], i % 50, i % 10 = 0
		FROM generate_series(1, $1::int) AS i`, `
		INSERT INTO subscriptions (id, company_id, mrr, status, updated_at)
		SELECT i, i, (i % 100) * 10.5, 'active', now() - make_interval(secs => i)
		FROM generate_series(1, $1::int) AS i WHERE i % 4 <> 0`, `
		INSERT INTO users (id, company_id, active, last_login_at)
		SELECT c * 10 + k, c, k % 2 = 0, timestamptz '2026-01-01' + make_interval(hours => c + k)
		FROM generate_series(1, $1::int) AS c, generate_series(1, 6) AS k WHERE k <= c % 7`} {
		if _, err := conn.Exec(ctx, q, n); err != nil {
			return fmt.Errorf("seed related tables: %w", err)
		}
	}
	return nil
}

// RelatedStep runs one random transaction over the three tables (ids up
// to maxID; a tenth rolled back): companies inserted, updated (some
// turning test companies into real ones and back), deleted; users
// inserted, updated, moved to another company, deleted, several at once;
// subscriptions inserted, updated, deleted. ok is false when it rolled
// back (or failed on a key conflict, which is as good).
func RelatedStep(ctx context.Context, conn *pgx.Conn, rng *rand.Rand, maxID int) (bool, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(ctx)
	for range 1 + rng.IntN(4) {
		c := 1 + rng.IntN(maxID)
		var q string
		var args []any
		switch rng.IntN(14) {
		case 0:
			q, args = `INSERT INTO companies (id, name, plan, is_test) VALUES ($1, $2, 'free', $3) ON CONFLICT (id) DO NOTHING`,
				[]any{c, fmt.Sprintf("New %d", c), rng.IntN(5) == 0}
		case 1:
			q, args = `UPDATE companies SET is_test = NOT is_test WHERE id = $1`, []any{c}
		case 2:
			q, args = `UPDATE companies SET plan = $2, updated_at = now() WHERE id = $1`, []any{c, []string{"free", "pro", "enterprise"}[rng.IntN(3)]}
		case 3:
			q, args = `DELETE FROM companies WHERE id = $1`, []any{c}
		case 4, 5:
			q, args = `INSERT INTO users (id, company_id, active, last_login_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING`,
				[]any{rng.IntN(maxID * 10), c, rng.IntN(2) == 0, time.Date(2026, 3, 1, rng.IntN(24), rng.IntN(60), 0, 0, time.UTC)}
		case 6:
			q, args = `UPDATE users SET active = NOT active, last_login_at = $2 WHERE id = $1`,
				[]any{rng.IntN(maxID * 10), time.Date(2026, 4, 1, rng.IntN(24), 0, 0, 0, time.UTC)}
		case 7:
			// A user moving to another company: both companies change.
			q, args = `UPDATE users SET company_id = $2 WHERE id = $1`, []any{rng.IntN(maxID * 10), c}
		case 8:
			q, args = `DELETE FROM users WHERE id = $1`, []any{rng.IntN(maxID * 10)}
		case 9:
			q, args = `DELETE FROM users WHERE company_id = $1`, []any{c}
		case 10:
			q, args = `INSERT INTO subscriptions (id, company_id, mrr, status, updated_at) VALUES ($1, $2, $3, $4, now()) ON CONFLICT (id) DO NOTHING`,
				[]any{rng.IntN(maxID * 3), c, fmt.Sprintf("%d.%02d", rng.IntN(1000), rng.IntN(100)), []string{"active", "past_due", "canceled"}[rng.IntN(3)]}
		case 11:
			q, args = `UPDATE subscriptions SET mrr = mrr + 1, status = $2, updated_at = now() WHERE id = $1`,
				[]any{rng.IntN(maxID * 3), []string{"active", "past_due", "canceled"}[rng.IntN(3)]}
		case 12:
			q, args = `DELETE FROM subscriptions WHERE id = $1`, []any{rng.IntN(maxID * 3)}
		case 13:
			// Many users at once for one company.
			q, args = `INSERT INTO users (id, company_id, active) SELECT $1::int * 1000 + g, $2, g % 3 = 0 FROM generate_series(1, 20) g ON CONFLICT (id) DO NOTHING`,
				[]any{maxID*10 + rng.IntN(maxID), c}
		}
		if _, err := tx.Exec(ctx, q, args...); err != nil {
			return false, err
		}
	}
	if rng.IntN(10) == 0 {
		return false, nil
	}
	if err := tx.Commit(ctx); err != nil {
		return false, err
	}
	return true, nil
}

// RelatedExpected is Expected for the related mapping, in SQL: companies
// that are not test companies, each with its latest subscription's mrr and
// status and its users' aggregates (keys with a NULL value absent).
func RelatedExpected(ctx context.Context, conn *pgx.Conn) (map[string]map[string]any, error) {
	all, err := Expected(ctx, conn)
	if err != nil {
		return nil, err
	}
	rows, err := conn.Query(ctx, `
		SELECT c.id::text, c.is_test, s.mrr::text, s.status,
		       (SELECT count(*) FROM users u WHERE u.company_id = c.id)::text,
		       (SELECT count(*) FILTER (WHERE active) FROM users u WHERE u.company_id = c.id)::text,
		       to_char((SELECT max(last_login_at) FROM users u WHERE u.company_id = c.id) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
		FROM companies c
		LEFT JOIN LATERAL (SELECT mrr, status FROM subscriptions s WHERE s.company_id = c.id ORDER BY updated_at DESC, id DESC LIMIT 1) s ON true`)
	if err != nil {
		return nil, fmt.Errorf("read expected related state: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var isTest bool
		var mrr, status, count, active, last *string
		if err := rows.Scan(&id, &isTest, &mrr, &status, &count, &active, &last); err != nil {
			return nil, err
		}
		if isTest {
			delete(all, id)
			continue
		}
		m := all[id]
		putNum(m, "mrr", mrr)
		putStr(m, "billing_status", status)
		putNum(m, "user_count", count)
		putNum(m, "active_users", active)
		putStr(m, "last_login_at", last)
	}
	return all, rows.Err()
}

// WaitRelatedConverged is WaitConverged against RelatedExpected, where a
// profile Userpilot holds for a company not expected must be marked
// deleted (on_delete: mark).
func WaitRelatedConverged(ctx context.Context, conn *pgx.Conn, profiles Profiles, timeout time.Duration) error {
	return WaitNoDiff(ctx, timeout, "the tables", 10, func() ([]string, error) {
		want, err := RelatedExpected(ctx, conn)
		if err != nil {
			return nil, err
		}
		got := profiles()
		for id, md := range got {
			// A company deleted, or no longer matching companies.where,
			// is marked (on_delete: mark), not gone.
			if _, ok := want[id]; !ok && md["deleted"] == true {
				delete(got, id)
			}
		}
		return Diff(want, got), nil
	})
}
