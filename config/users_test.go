package config

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/mapping"
)

// usersSection is the users section as the contract fixes it.
const usersSection = `users:
  table: public.users
  user_id: id
  company_id: account_id
  on_delete: delete
  metadata:
    name: name
    email: {column: email, pii: true}
    role: {column: role, values: {0: agent, 1: administrator}}
    created_at: created_at
    theme: {column: settings, path: ui.theme, on_null: keep}
    seniority: {sql: "now() - created_at > interval '1 year'", type: boolean}
  related:
    - table: public.conversations
      user_id: assignee_id
      aggregate: {open_conversations: count(*) filter (where status = 0)}
    - table: public.profiles
      user_id: user_id
      order_by: updated_at desc
      metadata: {city: city}
  where: not is_bot
  removed_keys: keep
`

const header = `postgres:
  url: ${DATABASE_URL}
userpilot:
  api_key: ${USERPILOT_API_KEY}
`

// TestUsersSectionIsReadAsTheContractFixesIt: every key of the users
// section, in every form companies' metadata has, lands in mapping.Users;
// the related entries name their column user_id:.
func TestUsersSectionIsReadAsTheContractFixesIt(t *testing.T) {
	cfg, err := Parse("p.yaml", []byte(header+usersSection), env(baseEnv()))
	require.NoError(t, err)
	assert.False(t, cfg.HasCompanies(), "a users-only file is valid")
	require.True(t, cfg.HasUsers())
	u := cfg.Users
	assert.Equal(t, "public", u.Schema)
	assert.Equal(t, "users", u.Name)
	assert.Equal(t, "id", u.UserID)
	assert.Equal(t, 7, u.UserIDLine)
	assert.Equal(t, "account_id", u.CompanyID)
	assert.Equal(t, 8, u.CompanyIDLine)
	assert.Equal(t, mapping.OnDeleteDelete, u.OnDelete)
	assert.Equal(t, []mapping.Field{
		{Key: "name", Column: "name", Line: 11},
		{Key: "email", Column: "email", PII: true, Line: 12},
		{Key: "role", Column: "role", Values: []mapping.Label{{From: "0", To: "agent"}, {From: "1", To: "administrator"}}, Line: 13},
		{Key: "created_at", Column: "created_at", Line: 14},
		{Key: "theme", Column: "settings", Path: []string{"ui", "theme"}, KeepNull: true, Line: 15},
		{Key: "seniority", SQL: "now() - created_at > interval '1 year'", Type: mapping.TypeBoolean, Line: 16},
	}, u.Metadata)
	require.Len(t, u.Related, 2)
	assert.Equal(t, mapping.User, u.Related[0].Kind)
	assert.Equal(t, "assignee_id", u.Related[0].CompanyID)
	assert.Equal(t, "users.related[0]", u.Related[0].Path())
	assert.Equal(t, []mapping.Aggregate{{Key: "open_conversations", SQL: "count(*) filter (where status = 0)", Line: 20}}, u.Related[0].Aggregate)
	assert.Equal(t, "user_id", u.Related[1].CompanyID)
	assert.Equal(t, "updated_at desc", u.Related[1].OrderBy)
	assert.Equal(t, "not is_bot", u.Where)
	assert.True(t, u.KeepRemovedKeys)
	assert.Equal(t, []string{mapping.MembershipKey, "name", "email", "role", "created_at", "theme", "seniority", "open_conversations", "city"},
		cfg.Entities()[0].Keys())

	both, err := Parse("p.yaml", []byte(minimal+usersSection), env(baseEnv()))
	require.NoError(t, err)
	assert.True(t, both.HasCompanies())
	assert.True(t, both.HasUsers())
	require.Len(t, both.Entities(), 2)
	assert.Equal(t, mapping.Company, both.Entities()[0].Kind)
	assert.Equal(t, mapping.User, both.Entities()[1].Kind)

	companiesOnly, err := Parse("p.yaml", []byte(minimal), env(baseEnv()))
	require.NoError(t, err)
	assert.False(t, companiesOnly.HasUsers())
	assert.Len(t, companiesOnly.Entities(), 1)
}

// TestUsersSectionOptionsAndDefaults: on_delete defaults to ignore, mark
// to {deleted: true}; a section without company_id maps no membership; a
// section with company_id may leave metadata out (it syncs the users'
// companies).
func TestUsersSectionOptionsAndDefaults(t *testing.T) {
	base := header + "users:\n  table: users\n  user_id: id\n"
	cfg, err := Parse("p.yaml", []byte(base+"  metadata: {name: name}\n"), env(baseEnv()))
	require.NoError(t, err)
	assert.Equal(t, mapping.OnDeleteIgnore, cfg.Users.OnDelete)
	assert.Equal(t, "", cfg.Users.CompanyID)
	assert.Equal(t, []string{"name"}, cfg.Users.Entity().Keys())

	cfg, err = Parse("p.yaml", []byte(base+"  company_id: account_id\n  on_delete: mark\n"), env(baseEnv()))
	require.NoError(t, err)
	assert.Empty(t, cfg.Users.Metadata)
	assert.Equal(t, map[string]any{"deleted": true}, cfg.Users.OnDeleteMetadata)
	assert.Equal(t, []string{mapping.MembershipKey}, cfg.Users.Entity().Keys())

	cfg, err = Parse("p.yaml", []byte(base+"  company_id: account_id\n  on_delete: mark\n  on_delete_metadata: {removed: true, seats: 0}\n"), env(baseEnv()))
	require.NoError(t, err)
	assert.Equal(t, map[string]any{"removed": true, "seats": json.Number("0")}, cfg.Users.OnDeleteMetadata)
}

// TestUsersSectionProblems: each mistake in a users section is reported
// with its key, line and fix; a file with neither section names both.
func TestUsersSectionProblems(t *testing.T) {
	base := header + "users:\n  table: users\n  user_id: id\n  company_id: account_id\n"
	tests := []struct {
		name string
		data string
		want []problem
	}{
		{
			name: "neither section",
			data: header,
			want: []problem{{`p.yaml:1: the file has neither a companies: nor a users: section, so there is nothing to sync`,
				`add a companies: section with table, company_id and metadata, a users: section with table, user_id, company_id and metadata, or both`}},
		},
		{
			name: "users without its required keys",
			data: header + "users:\n  metadata: {name: name}\n",
			want: []problem{
				{`p.yaml:5: users.table: missing`, `write table: public.users (the table of users to mirror)`},
				{`p.yaml:5: users.user_id: missing`, `write user_id: id (the column holding the user's id)`},
			},
		},
		{
			name: "neither metadata nor company_id",
			data: header + "users:\n  table: users\n  user_id: id\n",
			want: []problem{{`p.yaml:5: users.metadata: missing`, `add metadata: with one key: column line per value to send, e.g. name: name`}},
		},
		{
			name: "empty company_id",
			data: header + "users:\n  table: users\n  user_id: id\n  company_id: ''\n  metadata: {name: name}\n",
			want: []problem{{`p.yaml:8: users.company_id: is empty`, `write company_id: account_id (the column holding the user's company's id), or leave it out`}},
		},
		{
			name: "a membership table",
			data: base + "  company_from: {table: account_users, user_id: user_id, company_id: account_id, order_by: created_at}\n",
			want: []problem{{`p.yaml:9: users.company_from: a membership table is not supported: Userpilot holds one company per user, and a company picked from several rows of another table would move users whenever a membership elsewhere is added or removed`,
				`map the column that holds each user's primary company (company_id: account_id), adding one to the users table if there is none; docs/configure.md ("One company per user") shows how`}},
		},
		{
			name: "the membership's reserved key",
			data: base + "  metadata:\n    users.company_id: account_id\n",
			want: []problem{{`p.yaml:10: users.metadata.users.company_id: the metadata key "users.company_id" is reserved: it is how pgpilot carries a user's company`,
				`rename the key; a user's company is mapped with users.company_id`}},
		},
		{
			name: "the reserved key in companies",
			data: strings.Replace(minimal, "    name: name\n", "    name: name\n    users.company_id: x\n", 1),
			want: []problem{{`p.yaml:10: companies.metadata.users.company_id: the metadata key "users.company_id" is reserved: it is how pgpilot carries a user's company`,
				`rename the key; a user's company is mapped with users.company_id`}},
		},
		{
			name: "the reserved key as an aggregate",
			data: base + "  related:\n    - table: t\n      user_id: uid\n      aggregate: {users.company_id: count(*)}\n",
			want: []problem{{`p.yaml:12: users.related[0].aggregate.users.company_id: the metadata key "users.company_id" is reserved: it is how pgpilot carries a user's company`,
				`rename the key; a user's company is mapped with users.company_id`}},
		},
		{
			name: "a related entry with company_id",
			data: base + "  related:\n    - table: t\n      company_id: uid\n      aggregate: {n: count(*)}\n",
			want: []problem{
				{`p.yaml:10: users.related[0].user_id: missing`, `write user_id: user_id (the column of this table that holds the user's id)`},
				{`p.yaml:11: users.related[0].company_id: unknown key "company_id"; allowed: table, user_id, order_by, metadata, aggregate`, ``},
			},
		},
		{
			name: "a key set twice",
			data: base + "  metadata: {n: name}\n  related:\n    - table: t\n      user_id: uid\n      aggregate: {n: count(*)}\n",
			want: []problem{{`p.yaml:13: users.related[0].aggregate.n: metadata key "n" is also set by users.metadata (line 9)`, `give each key one source: rename one of them`}},
		},
		{
			name: "bad where and on_delete",
			data: base + "  metadata: {n: name}\n  where: not is_bot;\n  on_delete: erase\n",
			want: []problem{
				{`p.yaml:10: users.where: "not is_bot;" is not one SQL condition: it holds a semicolon: one condition, not statements`,
					`write one condition, as after WHERE, e.g. where: not is_test, without comments or semicolons, its parentheses balanced`},
				{`p.yaml:11: users.on_delete: "erase" is not a policy`, `write ignore (log it, the default), mark (send on_delete_metadata) or delete (Userpilot's delete API, a GDPR erasure)`},
			},
		},
		{
			name: "unknown key",
			data: base + "  metadata: {n: name}\n  company: account_id\n",
			want: []problem{{`p.yaml:10: users.company: unknown key "company"; allowed: table, user_id, company_id, company_from, metadata, on_delete, on_delete_metadata, related, where, removed_keys`, ``}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tt.data), env(baseEnv()))
			assert.Equal(t, tt.want, fixedProblems(t, err))
		})
	}
}
