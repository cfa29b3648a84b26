package chatwoot

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/jackc/pgx/v5"
)

// attributeValues are what Step writes into custom_attributes' keys: every
// value Mapping sends as it is (no bad value: those are tested on their
// own, since Userpilot then keeps an older value the oracle cannot know).
var attributeValues = map[string][]string{
	"plan_name":           {`"pro"`, `"free"`, `"startups"`, `null`, `"Ünïcødé \"Plan\" <x> & y"`, `"tab\there"`},
	"mrr":                 {`2178.00`, `"741.00"`, `0`, `-12.5`, `null`, `1e3`, `100000000000000000000000.000001`},
	"subscribed.quantity": {`5`, `"12"`, `true`, `null`, `0.10`},
	"features":            {`{"sla": true}`, `["a", "b"]`, `"basic"`, `7`, `null`},
}

// Step runs one random transaction over accounts 1..maxID and the tables
// beside them (a tenth rolled back): custom_attributes keys set, removed,
// nested, replaced by a document large enough to be stored out of line;
// names changed alone (leaving that document unstreamed); the enums, the
// limits and the notes changed; accounts inserted and deleted; members
// and conversations added, moved, closed, removed. ok is false when it
// rolled back or failed (a key conflict is as good).
func Step(ctx context.Context, conn *pgx.Conn, rng *rand.Rand, maxID int) (bool, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(ctx)
	for range 1 + rng.IntN(3) {
		a := 1 + rng.IntN(maxID)
		var q string
		var args []any
		switch rng.IntN(16) {
		case 0, 1, 2:
			keys := []string{"plan_name", "mrr", "subscribed.quantity", "features"}
			k := keys[rng.IntN(len(keys))]
			vs := attributeValues[k]
			q, args = `UPDATE accounts SET custom_attributes = jsonb_set(coalesce(custom_attributes, '{}'), ARRAY[$2::text], $3::jsonb) WHERE id = $1`,
				[]any{a, k, vs[rng.IntN(len(vs))]}
		case 3:
			q, args = `UPDATE accounts SET custom_attributes = jsonb_set(coalesce(custom_attributes, '{}'), '{company}', jsonb_build_object('size', $2::int)) WHERE id = $1`,
				[]any{a, rng.IntN(1000)}
		case 4:
			q, args = `UPDATE accounts SET custom_attributes = custom_attributes - $2::text WHERE id = $1`,
				[]any{a, []string{"plan_name", "mrr", "company", "features"}[rng.IntN(4)]}
		case 5:
			// Large enough to be stored out of line: the next updates that
			// leave it alone do not stream it.
			q, args = `UPDATE accounts SET custom_attributes = jsonb_build_object('plan_name', $2::text, 'mrr', $3::numeric, 'padding', $4::text) WHERE id = $1`,
				[]any{a, []string{"pro", "free"}[rng.IntN(2)], fmt.Sprintf("%d.%02d", rng.IntN(5000), rng.IntN(100)), padding(rng)}
		case 6, 7:
			q, args = `UPDATE accounts SET name = $2, updated_at = now() WHERE id = $1`, []any{a, fmt.Sprintf("Account %d v%d", a, rng.IntN(1000))}
		case 8:
			q, args = `UPDATE accounts SET status = $2 WHERE id = $1`, []any{a, []any{0, 1, 2, nil}[rng.IntN(4)]}
		case 9:
			q, args = `UPDATE accounts SET locale = $2, limits = jsonb_build_object('agents', $3::int) WHERE id = $1`, []any{a, []any{0, 1, 2, 7, nil}[rng.IntN(5)], rng.IntN(200)}
		case 10:
			notes := fmt.Sprintf("Note %d", rng.IntN(1000))
			if rng.IntN(3) == 0 {
				notes = strings.Repeat(notes+" ", 1500) // stored out of line
			}
			q, args = `UPDATE accounts SET notes = $2 WHERE id = $1`, []any{a, notes}
		case 11:
			q, args = `INSERT INTO accounts (id, name, status, custom_attributes) VALUES ($1, $2, 0, $3::jsonb) ON CONFLICT (id) DO NOTHING`,
				[]any{a, fmt.Sprintf("New %d", a), Attributes[rng.IntN(len(Attributes))]}
		case 12:
			q, args = `DELETE FROM accounts WHERE id = $1`, []any{a}
		case 13:
			q, args = `INSERT INTO account_users (account_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, []any{a, 1 + rng.IntN(maxID)}
		case 14:
			if rng.IntN(2) == 0 {
				// A member moving to another account: both accounts change.
				q, args = `UPDATE account_users SET account_id = $1 WHERE id = (SELECT id FROM account_users au WHERE id >= $2
					AND NOT EXISTS (SELECT 1 FROM account_users o WHERE o.account_id = $1 AND o.user_id = au.user_id) ORDER BY id LIMIT 1)`,
					[]any{a, rng.IntN(maxID * 2)}
			} else {
				q, args = `DELETE FROM account_users WHERE id = (SELECT id FROM account_users WHERE account_id = $1 ORDER BY id LIMIT 1)`, []any{a}
			}
		case 15:
			if rng.IntN(2) == 0 {
				q, args = `INSERT INTO conversations (account_id, inbox_id, status, display_id)
					SELECT $1, 1, $2, coalesce(max(display_id), 0) + 1 FROM conversations WHERE account_id = $1`, []any{a, rng.IntN(3)}
			} else {
				q, args = `UPDATE conversations SET status = $2 WHERE id = (SELECT id FROM conversations WHERE account_id = $1 LIMIT 1)`, []any{a, rng.IntN(3)}
			}
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

// padding is text no compression shrinks much: with the rest of the
// document past the 2 kB at which Postgres stores a value out of line.
func padding(rng *rand.Rand) string {
	const hex = "0123456789abcdef"
	b := make([]byte, 3000)
	for i := range b {
		b[i] = hex[rng.IntN(len(hex))]
	}
	return string(b)
}
