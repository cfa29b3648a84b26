package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// saasSchema is a schema as a SaaS application keeps its tenants: an
// accounts table with integer codes, a Postgres enum, jsonb and json
// settings, an array, personal columns and a generated one; users,
// memberships and conversations referencing it.
const saasSchema = `
CREATE TYPE account_tier AS ENUM ('free', 'pro', 'enterprise');
CREATE TABLE accounts (
	id bigserial PRIMARY KEY,
	name varchar(255) NOT NULL,
	domain varchar(100),
	support_email varchar(100),
	locale integer NOT NULL DEFAULT 0,
	status integer NOT NULL DEFAULT 0,
	tier account_tier NOT NULL DEFAULT 'free',
	feature_flags bigint NOT NULL DEFAULT 0,
	custom_attributes jsonb NOT NULL DEFAULT '{}',
	settings json,
	tags text[],
	name_slug text GENERATED ALWAYS AS (lower(name)) STORED,
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE users (
	id bigserial PRIMARY KEY,
	account_id bigint REFERENCES accounts (id),
	name text,
	email text,
	phone_number text,
	current_sign_in_ip inet,
	availability integer NOT NULL DEFAULT 0,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE account_users (
	id bigserial PRIMARY KEY,
	account_id bigint NOT NULL REFERENCES accounts (id),
	user_id bigint NOT NULL REFERENCES users (id),
	role integer NOT NULL DEFAULT 0
);
CREATE INDEX ON account_users (account_id);
CREATE TABLE conversations (
	id bigserial PRIMARY KEY,
	account_id bigint NOT NULL REFERENCES accounts (id),
	status integer NOT NULL DEFAULT 0
);
INSERT INTO accounts (name, domain, support_email, locale, status, tier, custom_attributes, settings, tags)
SELECT 'Account ' || i, 'acct' || i || '.example', 'support@acct' || i || '.example', i % 3, i % 2,
       (ARRAY['free', 'pro', 'enterprise'])[1 + i % 3]::account_tier,
       jsonb_build_object('plan_name', CASE WHEN i % 2 = 0 THEN 'pro' ELSE 'basic' END, 'mrr', i * 10.5,
                          'company', jsonb_build_object('size', i), 'subscribed.quantity', i % 5, 'features', jsonb_build_array('a', 'b')),
       '{"theme": "dark"}', ARRAY['x', 'y']
FROM generate_series(1, 40) AS i;
INSERT INTO users (account_id, name, email, phone_number, availability)
SELECT 1 + i % 40, 'User ' || i, 'user' || i || '@example.com', '+100000' || i, i % 3 FROM generate_series(1, 80) AS i;
INSERT INTO account_users (account_id, user_id, role) SELECT account_id, id, id % 2 FROM users;
INSERT INTO conversations (account_id, status) SELECT 1 + i % 40, i % 3 FROM generate_series(1, 200) AS i;
`

// TestInitWritesAStarterConfigThatCheckAndPreviewAccept runs `pgpilot
// init` against a SaaS-like schema: what maps directly is mapped, with its
// type; personal columns, jsonb keys, integer codes and the tables that
// reference the companies table are offered commented out; the generated
// column is left out and said why; the statements check will want are in
// it. Then check passes on the file as written and preview reads it.
func TestInitWritesAStarterConfigThatCheckAndPreviewAccept(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pg.NewDatabaseT(t)
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, saasSchema)
	require.NoError(t, err)

	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "pgpilot.yaml")
	code, out := runBinary(t, []string{"DATABASE_URL=" + dbURL},
		"init", "--table", "public.accounts", "--users-table", "public.users", "--out", cfgPath)
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "pgpilot init: wrote "+cfgPath)
	data, err := os.ReadFile(cfgPath)
	require.NoError(t, err)
	cfg := string(data)
	t.Logf("pgpilot init wrote:\n%s", cfg)
	// A note wrapped over comment lines, read as one line.
	notes := regexp.MustCompile(`\n *#  *`).ReplaceAllString(cfg, " ")

	active := regexp.MustCompile(`(?m)^\s{4}(\w+): (\S+)\s+# (.*)$`)
	mapped := map[string]string{}
	for _, m := range active.FindAllStringSubmatch(cfg, -1) {
		mapped[m[1]] = m[3]
	}
	// Each column that maps directly, with what it becomes.
	for key, comment := range map[string]string{
		"name":          "character varying(255) → string",
		"domain":        "character varying(100) → string",
		"locale":        "integer → number",
		"status":        "integer → number",
		"tier":          "account_tier → string (free, pro, enterprise)",
		"feature_flags": "bigint → number",
		"created_at":    "timestamp with time zone → date",
	} {
		assert.Contains(t, mapped, key, "%s is mapped", key)
		assert.Contains(t, mapped[key], comment, "%s's comment", key)
	}
	for _, key := range []string{"id", "support_email", "custom_attributes", "settings", "tags", "name_slug", "updated_at"} {
		assert.NotContains(t, mapped, key, "%s is not mapped as it is", key)
	}
	assert.Regexp(t, `(?m)^  company_id: id\s+# bigint, the primary key`, cfg)
	// Personal data: offered, pii: true left for the operator to confirm.
	assert.Regexp(t, `(?m)^    # support_email: \{column: support_email, pii: true\}\s+# .*personal data \(an email address, by its name\)`, cfg)
	// jsonb keys with path:, nested and dotted; an array as its text.
	assert.Regexp(t, `(?m)^    # plan_name: \{column: custom_attributes, path: plan_name\}\s+# string, in 40 of 40 rows`, cfg)
	assert.Regexp(t, `(?m)^    # mrr: \{column: custom_attributes, path: mrr\}\s+# number`, cfg)
	assert.Regexp(t, `(?m)^    # company_size: \{column: custom_attributes, path: company.size\}\s+# number`, cfg)
	assert.Regexp(t, `(?m)^    # subscribed_quantity: \{column: custom_attributes, path: \["subscribed.quantity"\]\}`, cfg)
	assert.Regexp(t, `(?m)^    # features: \{column: custom_attributes, path: features, type: string\}\s+# array`, cfg)
	assert.Regexp(t, `(?m)^    # theme: \{column: settings, path: theme\}`, cfg)
	assert.Regexp(t, `(?m)^    # tags: \{column: tags, type: string\}`, cfg)
	// Integer codes offered with values:.
	assert.Regexp(t, `(?m)^    # status: \{column: status, values: \{0: "\?", 1: "\?"\}\}\s+# codes in the sample: 0, 1`, cfg)
	assert.Regexp(t, `(?m)^    # locale: \{column: locale, values: \{0: "\?", 1: "\?", 2: "\?"\}\}`, cfg)
	// The generated column is left out, and why.
	assert.Contains(t, notes, "name_slug: generated column (GENERATED ALWAYS AS (lower((name)::text)) STORED): Postgres does not stream generated columns")
	// updated_at would defeat the no-op index: offered, not mapped.
	assert.Regexp(t, `(?m)^    # updated_at: updated_at\s+# .*changes with every update`, cfg)
	// The tables that reference accounts, as related aggregates, with what each needs.
	assert.Contains(t, cfg, "  # related:\n")
	for _, want := range []string{
		"  #   - table: public.conversations",
		"  #       conversations_count: count(*)",
		"  #     # needs, on the primary: ALTER TABLE public.conversations REPLICA IDENTITY FULL; CREATE INDEX CONCURRENTLY ON public.conversations (account_id);",
		"  #   - table: public.account_users",
		"  #     # needs, on the primary: ALTER TABLE public.account_users REPLICA IDENTITY FULL;\n",
		"  #   - table: public.users",
	} {
		assert.Contains(t, cfg, want)
	}
	// What check will want of the database: the publication covers the
	// users table too.
	assert.Contains(t, cfg, "\n#         CREATE PUBLICATION pgpilot FOR TABLE public.accounts, public.users;\n")
	assert.Contains(t, cfg, "\n#         ALTER TABLE public.accounts REPLICA IDENTITY FULL;\n")
	assert.Contains(t, cfg, "\n#         ALTER TABLE public.users REPLICA IDENTITY FULL;\n")
	// The users section, its company from the foreign key; a users table's
	// name is a person's, offered with pii: true like its email.
	assert.Regexp(t, `(?m)^users:\s+# Userpilot users, each with its company`, cfg)
	assert.Contains(t, cfg, "\n  table: public.users\n  user_id: id ")
	assert.Regexp(t, `(?m)^  company_id: account_id\s+# references public.accounts: the user's company; NULL: none`, cfg)
	assert.Regexp(t, `(?m)^    # name: \{column: name, pii: true\}\s+# .*a person's name, by its name`, cfg)
	assert.Regexp(t, `(?m)^    # email: \{column: email, pii: true\}`, cfg)
	assert.Regexp(t, `(?m)^    # current_sign_in_ip: \{column: current_sign_in_ip, pii: true\}\s+# .*an IP address`, cfg)
	assert.Regexp(t, `(?m)^    availability: availability\s+# integer → number`, cfg)
	// The tables that reference users, offered as users' related entries.
	assert.Regexp(t, `(?m)^  #   - table: public.account_users\s+# account_users.user_id references users\n  #     user_id: user_id$`, cfg)

	// check passes on the file as written (Userpilot is not init's).
	code, out = runBinary(t, []string{"DATABASE_URL=" + dbURL, "USERPILOT_API_KEY=" + apiKey},
		"check", "--config", cfgPath, "--skip-userpilot")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "all checks passed")
	assert.NotContains(t, out, "! personal data", "no personal column is mapped until the operator says so")

	// preview reads rows through it: companies, then users with their
	// company.
	code, out = runBinary(t, []string{"DATABASE_URL=" + dbURL, "USERPILOT_API_KEY=" + apiKey},
		"preview", "--config", cfgPath, "--limit", "3")
	require.Equal(t, 0, code, out)
	var companies, users int
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var p struct {
			CompanyID string         `json:"company_id"`
			UserID    string         `json:"user_id"`
			Metadata  map[string]any `json:"metadata"`
			Company   struct {
				ID string `json:"id"`
			} `json:"company"`
		}
		if json.Unmarshal(sc.Bytes(), &p) != nil {
			continue
		}
		if p.UserID != "" {
			users++
			assert.NotEmpty(t, p.Company.ID, "every user of the schema has its account")
			assert.Contains(t, p.Metadata, "availability")
			continue
		}
		companies++
		assert.NotEmpty(t, p.CompanyID)
		for _, key := range []string{"name", "status", "tier", "created_at"} {
			assert.Contains(t, p.Metadata, key)
		}
	}
	assert.Equal(t, 3, companies, out)
	assert.Equal(t, 3, users, out)
}

// TestInitRefusesWhatItCannotDoNamingTheFix: no DATABASE_URL, no --table,
// a table that does not exist, an --out that exists: exit 2 with the fix,
// and nothing written. -h is no error.
func TestInitRefusesWhatItCannotDoNamingTheFix(t *testing.T) {
	t.Parallel()
	dbURL := pg.NewDatabaseT(t)
	existing := filepath.Join(t.TempDir(), "pgpilot.yaml")
	require.NoError(t, os.WriteFile(existing, []byte("keep me\n"), 0o600))
	for _, tt := range []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"no DATABASE_URL", []string{"DATABASE_URL="}, []string{"--table", "public.accounts"},
			[]string{"DATABASE_URL is not set", "fix: export DATABASE_URL="}},
		{"no --table", []string{"DATABASE_URL=" + dbURL}, nil, []string{"--table is required", "fix: name the table"}},
		{"a table that does not exist", []string{"DATABASE_URL=" + dbURL}, []string{"--table", "public.nope"},
			[]string{"table does not exist: public.nope", "fix: name a table this role can see"}},
		{"an --out that exists", []string{"DATABASE_URL=" + dbURL}, []string{"--table", "public.nope", "--out", existing},
			[]string{"the file exists", "fix: choose another path"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out := runBinary(t, tt.env, append([]string{"init"}, tt.args...)...)
			assert.Equal(t, 2, code, out)
			for _, w := range tt.want {
				assert.Contains(t, out, w)
			}
		})
	}
	data, err := os.ReadFile(existing)
	require.NoError(t, err)
	assert.Equal(t, "keep me\n", string(data))

	code, out := runBinary(t, nil, "init", "-h")
	assert.Equal(t, 0, code, out)
	assert.Contains(t, out, "Usage: pgpilot init --table SCHEMA.TABLE")
}

// runBinary runs pgpilot to its end with extra environment variables and
// returns its exit code and its output (stdout and stderr).
func runBinary(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		var exit *exec.ExitError
		require.ErrorAs(t, err, &exit, "pgpilot %s: %s", strings.Join(args, " "), out)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}
