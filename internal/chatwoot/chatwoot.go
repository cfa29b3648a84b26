// Package chatwoot is a test fixture shaped like a real open-source SaaS
// schema (Chatwoot's): accounts with a jsonb of custom attributes and
// integer enums, their users through account_users, and their
// conversations. Tests, benchmarks and the demo use it to try pgpilot's
// mapping as an operator of such a schema would: keys inside jsonb, value
// labels, SQL expressions, aggregates over related tables. Its oracle
// computes, in SQL and independently of pgpilot's mapping code, what
// Userpilot should hold.
package chatwoot

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Schema creates the tables, as Chatwoot declares them (the columns
// pgpilot's tests need; ids are integers, enums are integers), with what
// Chatwoot does not have but a test needs:
//   - accounts.notes, a text column stored out of line when large (STORAGE
//     EXTERNAL), as custom_attributes is: an UPDATE that leaves such a
//     value alone does not stream it (TOAST);
//   - accounts.userpilot_plan, a generated column, the workaround an
//     operator tries first (Postgres 15 to 17 do not stream it).
//
// Every table keeps Chatwoot's replica identity (the primary key):
// IdentitySQL is what `pgpilot check` asks for related tables.
const Schema = `
CREATE TABLE IF NOT EXISTS public.accounts (
	id                    serial PRIMARY KEY,
	name                  varchar NOT NULL,
	created_at            timestamp NOT NULL DEFAULT now(),
	updated_at            timestamp NOT NULL DEFAULT now(),
	locale                integer DEFAULT 0,
	domain                varchar(100),
	support_email         varchar(100),
	feature_flags         bigint NOT NULL DEFAULT 0,
	auto_resolve_duration integer,
	limits                jsonb DEFAULT '{}'::jsonb,
	custom_attributes     jsonb DEFAULT '{}'::jsonb,
	status                integer DEFAULT 0,
	internal_attributes   jsonb NOT NULL DEFAULT '{}'::jsonb,
	settings              jsonb DEFAULT '{}'::jsonb,
	notes                 text,
	userpilot_plan        text GENERATED ALWAYS AS (custom_attributes->>'plan_name') STORED
);
ALTER TABLE public.accounts ALTER COLUMN custom_attributes SET STORAGE EXTERNAL;
ALTER TABLE public.accounts ALTER COLUMN notes SET STORAGE EXTERNAL;
CREATE INDEX IF NOT EXISTS index_accounts_on_status ON public.accounts (status);

CREATE TABLE IF NOT EXISTS public.users (
	id                serial PRIMARY KEY,
	name              varchar NOT NULL,
	display_name      varchar,
	email             varchar,
	type              varchar,
	availability      integer DEFAULT 0,
	custom_attributes jsonb DEFAULT '{}'::jsonb,
	ui_settings       jsonb DEFAULT '{}'::jsonb,
	created_at        timestamp NOT NULL DEFAULT now(),
	updated_at        timestamp NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS index_users_on_email ON public.users (email);

CREATE TABLE IF NOT EXISTS public.account_users (
	id           bigserial PRIMARY KEY,
	account_id   bigint NOT NULL,
	user_id      bigint NOT NULL,
	role         integer DEFAULT 0,
	inviter_id   bigint,
	availability integer NOT NULL DEFAULT 0,
	auto_offline boolean NOT NULL DEFAULT true,
	active_at    timestamp,
	created_at   timestamp NOT NULL DEFAULT now(),
	updated_at   timestamp NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS uniq_user_id_per_account_id ON public.account_users (account_id, user_id);
CREATE INDEX IF NOT EXISTS index_account_users_on_user_id ON public.account_users (user_id);

CREATE TABLE IF NOT EXISTS public.conversations (
	id                    serial PRIMARY KEY,
	account_id            integer NOT NULL,
	inbox_id              integer NOT NULL,
	status                integer NOT NULL DEFAULT 0,
	assignee_id           integer,
	contact_id            bigint,
	display_id            integer NOT NULL,
	priority              integer,
	uuid                  uuid NOT NULL DEFAULT gen_random_uuid(),
	additional_attributes jsonb DEFAULT '{}'::jsonb,
	custom_attributes     jsonb DEFAULT '{}'::jsonb,
	last_activity_at      timestamp NOT NULL DEFAULT now(),
	created_at            timestamp NOT NULL DEFAULT now(),
	updated_at            timestamp NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS index_conversations_on_account_id_and_display_id ON public.conversations (account_id, display_id);
CREATE INDEX IF NOT EXISTS index_conversations_on_status_and_account_id ON public.conversations (status, account_id);
`

// IdentitySQL is what `pgpilot check` suggests for the related tables of
// Mapping: each has a unique index over NOT NULL columns that holds
// account_id, so a DELETE can say which account its row belonged to
// without REPLICA IDENTITY FULL.
const IdentitySQL = `
ALTER TABLE public.account_users REPLICA IDENTITY USING INDEX uniq_user_id_per_account_id;
ALTER TABLE public.conversations REPLICA IDENTITY USING INDEX index_conversations_on_account_id_and_display_id;
`

// Create makes the tables.
func Create(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, Schema); err != nil {
		return fmt.Errorf("create the chatwoot tables: %w", err)
	}
	return nil
}

// Attributes are the custom_attributes Seed gives accounts, in turn: the
// shapes a real jsonb holds (a number with trailing zeros, numbers written
// as strings, missing keys, null, a key holding a dot beside a nested key
// of the same name, a string where an object was, an array, unicode and
// characters JSON escapes, a very large number).
var Attributes = []string{
	`{"plan_name": "pro", "mrr": 2178.00, "company": {"size": 42}, "subscribed.quantity": 5, "subscribed": {"quantity": 99}, "features": {"sla": true}}`,
	`{"plan_name": "startups", "mrr": "741.00", "company": {"size": "11"}, "subscribed.quantity": "12"}`,
	`{}`,
	`{"plan_name": null, "company": "acme", "features": ["a", "b"]}`,
	`{"plan_name": "Énterprise \"Plus\" <b>", "mrr": 0.50, "company": {"size": null}, "trial": true}`,
	`{"plan_name": "free", "mrr": 10, "company": {"size": 7, "extra": {"deep": [1, 2, {"x": "y"}]}}, "subscribed.quantity": 1}`,
	`{"plan_name": "pro", "mrr": 1234.5670, "features": "none"}`,
	`{"plan_name": "enterprise", "mrr": 99999999999999999999.99, "company": {"size": 5000}, "subscribed.quantity": 250}`,
}

// Seed inserts accounts 1..n, a user per account, account i's members
// (i % 4 of them) and conversations (i % 5, open or resolved).
func Seed(ctx context.Context, conn *pgx.Conn, n int) error {
	for _, q := range []string{`
		INSERT INTO accounts (id, name, locale, status, limits, custom_attributes, notes)
		SELECT i, 'Account ' || i || (ARRAY['', ' GmbH', ' 株式会社', ' & Sons'])[1 + i % 4],
		       i % 3,
		       CASE WHEN i % 23 = 0 THEN NULL WHEN i % 17 = 0 THEN 2 WHEN i % 10 = 3 THEN 1 ELSE 0 END,
		       jsonb_build_object('agents', (i * 7) % 200, 'inboxes', i % 5),
		       ($2::text[])[1 + i % array_length($2::text[], 1)]::jsonb,
		       CASE WHEN i % 2 = 1 THEN 'Note ' || i END
		FROM generate_series(1, $1::int) AS i`, `
		SELECT setval('accounts_id_seq', greatest($1::int, 1))`, `
		INSERT INTO users (id, name, email)
		SELECT i, 'User ' || i, 'user' || i || '@example.com' FROM generate_series(1, $1::int) AS i`, `
		SELECT setval('users_id_seq', greatest($1::int, 1))`, `
		INSERT INTO account_users (account_id, user_id, role)
		SELECT a, 1 + (a * 7 + k) % $1::int, k % 2 FROM generate_series(1, $1::int) AS a, generate_series(1, 3) AS k WHERE k <= a % 4
		ON CONFLICT DO NOTHING`, `
		INSERT INTO conversations (account_id, inbox_id, status, display_id)
		SELECT a, 1, k % 3, k FROM generate_series(1, $1::int) AS a, generate_series(1, 4) AS k WHERE k <= a % 5`} {
		args := []any{n}
		if strings.Contains(q, "$2") {
			args = append(args, Attributes)
		}
		if _, err := conn.Exec(ctx, q, args...); err != nil {
			return fmt.Errorf("seed %d accounts: %w", n, err)
		}
	}
	return nil
}
