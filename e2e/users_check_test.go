package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/chatwoot"
	"github.com/pgpilot/pgpilot/internal/workload"
)

// chatwootUsers is a users section for Chatwoot's users: their company is
// the primary account docs/configure.md's trigger keeps (Chatwoot links
// users to accounts through account_users only), their open conversations
// an aggregate over conversations by assignee.
const chatwootUsers = `users:
  table: public.users
  user_id: id
  company_id: primary_account_id
  metadata:
    name: name
    email: email
    display: {column: display_name, on_null: keep}
    availability: {column: availability, values: {0: online, 1: busy, 2: offline}, default: unknown}
    created_at: created_at
  related:
    - table: public.conversations
      user_id: assignee_id
      aggregate: {open_conversations: count(*) filter (where status = 0)}
`

// primaryAccountSQL is the trigger docs/configure.md ("One company per
// user") gives for a many-to-many membership table: the test runs what
// the page says, as an operator would paste it.
func primaryAccountSQL(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "docs", "configure.md"))
	require.NoError(t, err)
	doc := string(data)
	i := strings.Index(doc, "### One company per user")
	require.GreaterOrEqual(t, i, 0)
	start := strings.Index(doc[i:], "```sql\n")
	require.GreaterOrEqual(t, start, 0)
	block := doc[i+start+len("```sql\n"):]
	block = block[:strings.Index(block, "```")]
	var sql []string
	for _, l := range strings.Split(block, "\n") {
		sql = append(sql, strings.TrimPrefix(l, "    "))
	}
	return strings.Join(sql, "\n")
}

// chatwootUsersEnv is Chatwoot's schema seeded with n accounts, their
// related tables' identities as check asks, users assigned conversations,
// and the primary account of each user kept by the documented trigger.
func chatwootUsersEnv(t *testing.T, n int) *env {
	t.Helper()
	e := chatwootEnv(t)
	ctx := context.Background()
	_, err := e.conn.Exec(ctx, chatwoot.IdentitySQL)
	require.NoError(t, err)
	require.NoError(t, chatwoot.Seed(ctx, e.conn, n))
	_, err = e.conn.Exec(ctx, `UPDATE conversations SET assignee_id = 1 + id % 5;
		UPDATE users SET display_name = 'Agent ' || id WHERE id % 3 = 0;
		UPDATE users SET availability = id % 4`)
	require.NoError(t, err)
	_, err = e.conn.Exec(ctx, primaryAccountSQL(t))
	require.NoError(t, err, "docs/configure.md's trigger runs as written")
	// Memberships change after the trigger is there: it follows them.
	_, err = e.conn.Exec(ctx, `
		DELETE FROM account_users WHERE id = (SELECT min(id) FROM account_users);
		INSERT INTO account_users (account_id, user_id, created_at) VALUES (1, 2, now() - interval '1 day');
		UPDATE account_users SET user_id = 3 WHERE id = (SELECT max(id) FROM account_users)`)
	require.NoError(t, err)
	var stale int
	require.NoError(t, e.conn.QueryRow(ctx, `SELECT count(*) FROM users u WHERE primary_account_id IS DISTINCT FROM
		(SELECT account_id FROM account_users m WHERE m.user_id = u.id ORDER BY m.created_at, m.id LIMIT 1)`).Scan(&stale))
	require.Zero(t, stale, "the trigger keeps every user's primary account")
	return e
}

// writeChatwootUsersConfig writes Chatwoot's config with sections (the
// companies and users sections, or either).
func (e *env) writeChatwootUsersConfig(sections string) {
	cfg := chatwoot.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir)
	e.writeConfig(cfg[:strings.Index(cfg, "companies:\n")] + sections)
}

// expectedUsers is, computed in SQL, the user payloads chatwootUsers
// makes of Chatwoot's users: user_id → its company ("" for none) and the
// metadata keys that are not null.
func expectedUsers(t *testing.T, e *env) map[string]previewedUser {
	t.Helper()
	rows, err := e.conn.Query(context.Background(), `
		SELECT u.id::text, coalesce(u.primary_account_id::text, ''), u.name, u.email, u.display_name,
		       CASE u.availability WHEN 0 THEN 'online' WHEN 1 THEN 'busy' WHEN 2 THEN 'offline' ELSE 'unknown' END,
		       to_char(u.created_at, 'YYYY-MM-DD"T"HH24:MI:SS'),
		       (SELECT count(*) FROM conversations c WHERE c.assignee_id = u.id AND c.status = 0)
		FROM users u`)
	require.NoError(t, err)
	defer rows.Close()
	out := map[string]previewedUser{}
	for rows.Next() {
		var id, company, name, availability, created string
		var email, display *string
		var open int64
		require.NoError(t, rows.Scan(&id, &company, &name, &email, &display, &availability, &created, &open))
		md := map[string]any{"name": name, "availability": availability, "open_conversations": json.Number(strconv.FormatInt(open, 10))}
		if email != nil {
			md["email"] = *email
		} else {
			md["email"] = nil
		}
		if display != nil {
			md["display"] = *display
		}
		out[id] = previewedUser{Company: company, Metadata: md, CreatedAt: created}
	}
	require.NoError(t, rows.Err())
	return out
}

type previewedUser struct {
	Company   string
	Metadata  map[string]any // created_at aside
	CreatedAt string         // to the second
}

// previewLines splits preview's output into the companies' and the users'
// payloads (each line the body pgpilot would send), by their id key.
func previewLines(t *testing.T, out string) (companies map[string]map[string]any, users map[string]previewedUser) {
	t.Helper()
	companies, users = map[string]map[string]any{}, map[string]previewedUser{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if !strings.HasPrefix(sc.Text(), "{") {
			continue
		}
		var p struct {
			CompanyID *string        `json:"company_id"`
			UserID    *string        `json:"user_id"`
			Metadata  map[string]any `json:"metadata"`
			Company   *struct {
				ID string `json:"id"`
			} `json:"company"`
		}
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		dec.UseNumber()
		require.NoError(t, dec.Decode(&p), sc.Text())
		switch {
		case p.UserID != nil:
			require.Nil(t, p.CompanyID, "a user's payload has no company_id: %s", sc.Text())
			u := previewedUser{Metadata: p.Metadata}
			if p.Company != nil {
				require.NotEmpty(t, p.Company.ID, "a company is sent with its id, or not at all: %s", sc.Text())
				u.Company = p.Company.ID
			}
			created, _ := u.Metadata["created_at"].(string)
			delete(u.Metadata, "created_at")
			u.CreatedAt = strings.TrimSuffix(strings.SplitN(created, ".", 2)[0], "Z")
			users[*p.UserID] = u
		case p.CompanyID != nil:
			companies[*p.CompanyID] = p.Metadata
		default:
			t.Fatalf("a payload line with neither id: %s", sc.Text())
		}
	}
	return companies, users
}

// TestChatwootCheckAndPreviewWithCompaniesAndUsers: check covers the
// users table as it covers the companies table (its related table's
// replica identity, with the cheapest fix, the index on user_id, the
// publication covering it, personal data named key by key), and passes
// once the fixes it prints are run; preview prints the users' payloads
// beside the companies', each user with its company as the documented
// trigger keeps it, equal to the same computed in SQL.
func TestChatwootCheckAndPreviewWithCompaniesAndUsers(t *testing.T) {
	t.Parallel()
	e := chatwootUsersEnv(t, 12)
	ctx := context.Background()
	// A publication a DBA made for the companies' tables only.
	_, err := e.conn.Exec(ctx, `CREATE PUBLICATION `+workload.SlotName(e.url)+` FOR TABLE accounts, account_users, conversations`)
	require.NoError(t, err)
	e.writeChatwootUsersConfig(chatwoot.Mapping + chatwootUsers)

	code, out := e.runCheck("--skip-userpilot")
	assert.Equal(t, 2, code, out)
	for _, line := range []string{
		"✓ table public.accounts exists",
		"✓ table public.users exists",
		"✓ users: every mapped column exists and maps to a primitive",
		"✓ users: no key reads a generated column (Postgres does not stream them)",
		`✓ role "postgres" may SELECT from public.users`,
		"✓ replica identity lets public.users be published",
		"✓ snapshots page public.users by its key (id)",
		"✓ users.related fit the tables (Postgres plans every re-read)",
	} {
		assert.Contains(t, out, line+"\n")
	}
	requireFailedLine(t, out, "users.related[0]: a DELETE in public.conversations says which user its row belonged to",
		`without "assignee_id"`, `ALTER TABLE "public"."conversations" REPLICA IDENTITY FULL;`)
	assert.Contains(t, out, "! users.related[0]: no index on public.conversations (assignee_id): each re-read of a user's related values scans the whole table\n"+
		`  fix: run on the primary: CREATE INDEX CONCURRENTLY ON "public"."conversations" ("assignee_id");`)
	requireFailedLine(t, out, `it does not publish "public"."users"`, `ALTER PUBLICATION`, `ADD TABLE "public"."users";`)
	// A users table holds people: its name and its email are named.
	assert.Regexp(t, `! personal data: \S+pgpilot.yaml:\d+: metadata "name": column "name" looks like personal data \(a person's name, by its name\)`, out)
	assert.Regexp(t, `! personal data: \S+pgpilot.yaml:\d+: metadata "email": column "email" looks like personal data \(an email address, by its name\)`, out)
	assert.Contains(t, out, "  fix: once sending it is cleared, acknowledge it: email: {column: email, pii: true}")

	_, err = e.conn.Exec(ctx, `ALTER TABLE conversations REPLICA IDENTITY FULL;
		ALTER PUBLICATION `+workload.SlotName(e.url)+` ADD TABLE users;
		CREATE INDEX ON conversations (assignee_id)`)
	require.NoError(t, err)
	code, out = e.runCheck("--skip-userpilot")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "✓ users.related[0]: a DELETE in public.conversations says which user its row belonged to (replica identity)\n")
	assert.Contains(t, out, "✓ users.related[0]: public.conversations is indexed on assignee_id\n")
	assert.Contains(t, out, "all checks passed, with 3 warning(s) above", "name, email and display_name, not yet acknowledged")

	p := e.pgpilot("preview", "--config", e.cfgPath, "--limit", "0")
	require.Equal(t, 0, p.wait(t, 60*time.Second), p.out.String())
	out = p.out.String()
	companies, users := previewLines(t, out)
	assert.Len(t, companies, 12)
	assert.Equal(t, expectedUsers(t, e), users)
	assert.Contains(t, out, "public.users: 12 rows read, 0 would be set aside; nothing was sent")
	assert.Contains(t, out, `preview: warning: `+e.cfgPath)
	assert.Regexp(t, `preview: warning: \S+: metadata "name": column "name" looks like personal data \(a person's name`, out)
	var withCompany, without int
	for _, u := range users {
		if u.Company == "" {
			without++
		} else {
			withCompany++
		}
	}
	assert.Positive(t, withCompany, "users with an account are sent with it")
	assert.Positive(t, without, "and users without one, without a company")

	// One section at a time, and a --where that must say whose rows.
	p = e.pgpilot("preview", "--config", e.cfgPath, "--users", "--limit", "3", "--where", "id <= 3")
	require.Equal(t, 0, p.wait(t, 60*time.Second), p.out.String())
	companies, users = previewLines(t, p.out.String())
	assert.Empty(t, companies)
	assert.Len(t, users, 3)
	p = e.pgpilot("preview", "--config", e.cfgPath, "--where", "id <= 3")
	assert.Equal(t, 2, p.wait(t, 60*time.Second))
	assert.Contains(t, p.out.String(), "--where is a condition on one table: add --companies or --users")
}

// TestChatwootCheckAndPreviewWithUsersOnly: a file with a users section
// alone is checked and previewed on its own (no companies table named),
// and what it maps wrong is refused with the fix: a generated column, a
// membership table.
func TestChatwootCheckAndPreviewWithUsersOnly(t *testing.T) {
	t.Parallel()
	e := chatwootUsersEnv(t, 9)
	ctx := context.Background()
	_, err := e.conn.Exec(ctx, `ALTER TABLE conversations REPLICA IDENTITY FULL;
		CREATE INDEX ON conversations (assignee_id);
		ALTER TABLE users ADD COLUMN email_domain text GENERATED ALWAYS AS (split_part(email, '@', 2)) STORED`)
	require.NoError(t, err)
	acknowledged := strings.NewReplacer("    name: name\n", "    name: {column: name, pii: true}\n",
		"    email: email\n", "    email: {column: email, pii: true}\n",
		"    display: {column: display_name, on_null: keep}\n", "    display: {column: display_name, on_null: keep, pii: true}\n").Replace(chatwootUsers)
	e.writeChatwootUsersConfig(acknowledged)

	code, out := e.runCheck("--skip-userpilot")
	require.Equal(t, 0, code, out)
	assert.NotContains(t, out, "public.accounts", "a users-only file names no companies table")
	assert.Contains(t, out, "✓ users: no mapped column looks like personal data (or each is acknowledged with pii: true)\n")
	assert.Contains(t, out, "all checks passed\n")

	p := e.pgpilot("preview", "--config", e.cfgPath, "--limit", "0")
	require.Equal(t, 0, p.wait(t, 60*time.Second), p.out.String())
	companies, users := previewLines(t, p.out.String())
	assert.Empty(t, companies)
	assert.Equal(t, expectedUsers(t, e), users)
	assert.NotContains(t, p.out.String(), "warning", "every personal key is acknowledged")

	e.writeChatwootUsersConfig(acknowledged + "  where: email_domain <> 'example.org'\n")
	e.writeConfig(strings.Replace(readFile(e.cfgPath), "    created_at: created_at\n", "    created_at: created_at\n    domain: email_domain\n", 1))
	code, out = e.runCheck("--skip-userpilot")
	assert.Equal(t, 2, code, out)
	requireFailedLine(t, out, `users.metadata.domain: column "email_domain" is a generated column, which Postgres does not stream`,
		`fix: map what it computes with sql:`)
	requireFailedLine(t, out, `users.where`, `cannot be judged on a streamed row of public.users`)

	e.writeChatwootUsersConfig(strings.Replace(acknowledged, "  company_id: primary_account_id\n",
		"  company_from: {table: account_users, user_id: user_id, company_id: account_id, order_by: created_at}\n", 1))
	code, out = e.runCheck("--skip-userpilot")
	assert.Equal(t, 2, code, out)
	assert.Contains(t, out, "users.company_from: a membership table is not supported")
	assert.Contains(t, out, `fix: map the column that holds each user's primary company (company_id: account_id)`)
}
