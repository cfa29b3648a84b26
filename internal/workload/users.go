package workload

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// UsersSchema creates a users table beside Schema's companies (each user in
// at most one company, a NULL company_id: none) and a tickets table
// related to users. bio is stored out of line when large (TOAST); the
// replica identity is FULL because UsersMapping's where judges the old row
// (a user who becomes a bot stops matching: marked deleted).
const UsersSchema = `
CREATE TABLE IF NOT EXISTS public.users (
	id         bigint PRIMARY KEY,
	company_id bigint REFERENCES public.companies (id),
	name       text NOT NULL,
	email      text,
	role       integer NOT NULL DEFAULT 0,
	is_bot     boolean NOT NULL DEFAULT false,
	bio        text,
	updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE public.users ALTER COLUMN bio SET STORAGE EXTERNAL;
ALTER TABLE public.users REPLICA IDENTITY FULL;
CREATE TABLE IF NOT EXISTS public.tickets (
	id      bigserial PRIMARY KEY,
	user_id bigint NOT NULL,
	status  integer NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tickets_user_id ON public.tickets (user_id);
ALTER TABLE public.tickets REPLICA IDENTITY FULL;
`

// UsersMapping is the users section of a config for UsersSchema.
const UsersMapping = `users:
  table: public.users
  user_id: id
  company_id: company_id
  on_delete: mark
  where: not is_bot
  metadata:
    name: name
    email: {column: email, pii: true}
    role: {column: role, values: {0: agent, 1: administrator}, default: other}
    bio: bio
  related:
    - table: public.tickets
      user_id: user_id
      aggregate:
        open_tickets: count(*) filter (where status = 0)
`

// CreateUsers makes UsersSchema's tables (after Create's).
func CreateUsers(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, UsersSchema); err != nil {
		return fmt.Errorf("create users tables: %w", err)
	}
	return nil
}

// SeedUsers inserts users 1..n, user i in company 1 + i % companies (every
// tenth without one), and a ticket for every third.
func SeedUsers(ctx context.Context, conn *pgx.Conn, n, companies int) error {
	_, err := conn.Exec(ctx, `
		INSERT INTO users (id, company_id, name, email, role, is_bot)
		SELECT g, CASE WHEN g % 10 = 0 THEN NULL ELSE 1 + g % $2::int END, 'User ' || g, 'user' || g || '@example.com',
		       g % 3, g % 50 = 0
		FROM generate_series(1, $1::int) g
		ON CONFLICT (id) DO NOTHING;
		`, n, companies)
	if err != nil {
		return fmt.Errorf("seed %d users: %w", n, err)
	}
	_, err = conn.Exec(ctx, `INSERT INTO tickets (user_id, status) SELECT g, g % 2 FROM generate_series(1, $1::int) g WHERE g % 3 = 0`, n)
	if err != nil {
		return fmt.Errorf("seed tickets: %w", err)
	}
	return nil
}

// UsersStep runs one random transaction over users 1..maxUser (in
// companies 1..maxCompany, which exist): users made, renamed, moved to
// another company or to none, made bots and back, deleted, twenty at once;
// tickets opened, closed and removed. It reports whether it committed.
func UsersStep(ctx context.Context, conn *pgx.Conn, rng *rand.Rand, maxUser, maxCompany int) (bool, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(ctx)
	for range 1 + rng.IntN(3) {
		id := 1 + rng.IntN(maxUser)
		company := any(1 + rng.IntN(maxCompany))
		if rng.IntN(8) == 0 {
			company = nil
		}
		var err error
		switch r := rng.IntN(20); {
		case r < 5:
			_, err = tx.Exec(ctx, `
				INSERT INTO users (id, company_id, name, email, role)
				VALUES ($1, $2, $3, $4, $5)
				ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email, role = EXCLUDED.role, updated_at = now()`,
				id, company, names[rng.IntN(len(names))]+" user", nullable(rng, fmt.Sprintf("u%d@example.org", rng.IntN(1e6))), rng.IntN(4))
		case r < 9:
			// A user moves to another company, or to none.
			_, err = tx.Exec(ctx, `UPDATE users SET company_id = $2, updated_at = now() WHERE id = $1`, id, company)
		case r < 11:
			_, err = tx.Exec(ctx, `UPDATE users SET role = $2 WHERE id = $1`, id, rng.IntN(3))
		case r < 12:
			// Twenty users at once.
			_, err = tx.Exec(ctx, `UPDATE users SET name = name || '.', updated_at = now() WHERE id BETWEEN $1 AND $1 + 19`, id)
		case r < 13:
			_, err = tx.Exec(ctx, `UPDATE users SET is_bot = NOT is_bot WHERE id = $1`, id)
		case r < 14:
			_, err = tx.Exec(ctx, `DELETE FROM users WHERE id = $1`, id)
		case r < 15:
			// A TOAST-sized value, later left untouched by updates.
			_, err = tx.Exec(ctx, `UPDATE users SET bio = $2 WHERE id = $1`, id, strings.Repeat(names[rng.IntN(len(names))], 1500))
		case r < 17:
			_, err = tx.Exec(ctx, `INSERT INTO tickets (user_id, status) VALUES ($1, 0)`, id)
		case r < 19:
			_, err = tx.Exec(ctx, `UPDATE tickets SET status = 1 - status WHERE id = (SELECT min(id) FROM tickets WHERE user_id = $1)`, id)
		default:
			_, err = tx.Exec(ctx, `DELETE FROM tickets WHERE id = (SELECT max(id) FROM tickets WHERE user_id = $1)`, id)
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

// ExpectedUser is what Userpilot should hold of a user.
type ExpectedUser struct {
	// Company is its company's id; "" when the row has none (Userpilot
	// then keeps whatever company it had: no call removes one).
	Company  string
	Metadata map[string]any
}

// UsersExpected computes, in SQL, what Userpilot should hold of each user
// UsersMapping syncs (not bots): its company and metadata, keys with a
// NULL value absent.
func UsersExpected(ctx context.Context, conn *pgx.Conn) (map[string]ExpectedUser, error) {
	rows, err := conn.Query(ctx, `
		SELECT u.id::text, u.company_id::text, u.name, u.email,
		       CASE u.role WHEN 0 THEN 'agent' WHEN 1 THEN 'administrator' ELSE 'other' END, u.bio,
		       (SELECT count(*) FILTER (WHERE t.status = 0) FROM tickets t WHERE t.user_id = u.id)::text
		FROM users u WHERE NOT u.is_bot`)
	if err != nil {
		return nil, fmt.Errorf("read expected users: %w", err)
	}
	defer rows.Close()
	out := map[string]ExpectedUser{}
	for rows.Next() {
		var id, name, role, open string
		var company, email, bio *string
		if err := rows.Scan(&id, &company, &name, &email, &role, &bio, &open); err != nil {
			return nil, err
		}
		m := map[string]any{"name": name, "role": role}
		putStr(m, "email", email)
		putStr(m, "bio", bio)
		putNum(m, "open_tickets", &open)
		u := ExpectedUser{Metadata: m}
		if company != nil {
			u.Company = *company
		}
		out[id] = u
	}
	return out, rows.Err()
}

// UserProfile is what Userpilot holds of a user (the stand-in's User).
type UserProfile struct {
	Company  string
	Metadata map[string]any
}

// UsersDiff lists how got differs from want: a user the table syncs must
// hold its company (unless the row has none) and exactly its keys; a user
// Userpilot holds that the table does not sync (deleted, or a bot) must be
// marked deleted. Empty means equal.
func UsersDiff(want map[string]ExpectedUser, got map[string]UserProfile) []string {
	var d []string
	for id, w := range want {
		g, ok := got[id]
		if !ok {
			d = append(d, fmt.Sprintf("user %s missing", id))
			continue
		}
		if w.Company != "" && g.Company != w.Company {
			d = append(d, fmt.Sprintf("user %s: company %q, want %q", id, g.Company, w.Company))
		}
		for k, wv := range w.Metadata {
			if gv, ok := g.Metadata[k]; !ok {
				d = append(d, fmt.Sprintf("user %s: %s missing, want %v", id, k, short(wv)))
			} else if !same(wv, gv) {
				d = append(d, fmt.Sprintf("user %s: %s = %v, want %v", id, k, short(gv), short(wv)))
			}
		}
		for k, gv := range g.Metadata {
			if _, ok := w.Metadata[k]; !ok && gv != nil {
				d = append(d, fmt.Sprintf("user %s: %s = %v, want it absent (NULL)", id, k, short(gv)))
			}
		}
	}
	for id, g := range got {
		if _, ok := want[id]; !ok && g.Metadata["deleted"] != true {
			d = append(d, fmt.Sprintf("user %s is in Userpilot but not synced by the table (deleted, or a bot), and not marked deleted", id))
		}
	}
	sort.Strings(d)
	return d
}

// WaitUsersConverged polls until users() equals UsersExpected, or returns
// an error listing the first differences when timeout passes.
func WaitUsersConverged(ctx context.Context, conn *pgx.Conn, users func() map[string]UserProfile, timeout time.Duration) error {
	return WaitNoDiff(ctx, timeout, "the users table", 10, func() ([]string, error) {
		want, err := UsersExpected(ctx, conn)
		if err != nil {
			return nil, err
		}
		return UsersDiff(want, users()), nil
	})
}
