package mapping

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/userpilot"
)

var usersColumns = []row.Column{
	{Name: "id", TypeOID: pgtype.Int8OID, TypeName: "bigint"},
	{Name: "account_id", TypeOID: pgtype.Int8OID, TypeName: "bigint"},
	{Name: "name", TypeOID: pgtype.TextOID, TypeName: "text"},
	{Name: "email", TypeOID: pgtype.TextOID, TypeName: "text"},
	{Name: "role", TypeOID: pgtype.Int4OID, TypeName: "integer"},
	{Name: "settings", TypeOID: pgtype.JSONBOID, TypeName: "jsonb"},
	{Name: "account_ref", TypeOID: pgtype.TextOID, TypeName: "text"},
}

func exampleUsers() Users {
	return Users{
		Table: "users", Schema: "public", Name: "users", File: "p.yaml",
		UserID: "id", UserIDLine: 3, CompanyID: "account_id", CompanyIDLine: 4,
		OnDelete: OnDeleteMark, OnDeleteMetadata: map[string]any{"deleted": true},
		Metadata: []Field{
			{Key: "name", Column: "name", Line: 6},
			{Key: "email", Column: "email", PII: true, Line: 7},
			{Key: "role", Column: "role", Values: []Label{{From: "0", To: "agent"}, {From: "1", To: "administrator"}}, Line: 8},
		},
		Related: []Related{{Table: "public.conversations", Schema: "public", Name: "conversations", CompanyID: "assignee_id",
			Aggregate: []Aggregate{{Key: "open_conversations", SQL: "count(*)"}}, Index: 0}},
		Where: "not is_bot", WhereLine: 12, KeepRemovedKeys: true,
	}
}

// TestUsersEntityIsTheCompaniesShapedView: the view every stage takes has
// the user_id column as its id, the membership as its first key (a string,
// under MembershipKey), the metadata after it, and names the users
// section; building it changes nothing in the Users.
func TestUsersEntityIsTheCompaniesShapedView(t *testing.T) {
	u := exampleUsers()
	c := u.Entity()
	assert.Equal(t, User, c.Kind)
	assert.Equal(t, "id", c.CompanyID)
	assert.Equal(t, 3, c.CompanyIDLine)
	assert.Equal(t, []string{MembershipKey, "name", "email", "role", "open_conversations"}, c.Keys())
	assert.Equal(t, Field{Key: MembershipKey, Column: "account_id", Type: TypeString, Line: 4}, c.Metadata[0])
	assert.Equal(t, []string{"id", "account_id", "name", "email", "role"}, c.Columns())
	assert.Equal(t, "users.related[0]", c.Related[0].Path())
	assert.Equal(t, "not is_bot", c.Where)
	assert.True(t, c.KeepRemovedKeys)
	assert.Equal(t, OnDeleteMark, c.OnDelete)

	c.Metadata[1].Key = "changed"
	c.Related[0].Table = "changed"
	assert.Equal(t, exampleUsers(), u, "the view shares nothing with the Users it was made of")

	u.CompanyID = ""
	assert.Equal(t, []string{"name", "email", "role", "open_conversations"}, u.Entity().Keys(), "no membership mapped: no membership key")
}

// TestAUsersCompanyIsTakenOutOfItsMetadata: the membership column's value
// becomes the user's company, as a string whatever the column's type;
// NULL, empty and an unchanged TOAST value are no company; it is never
// metadata.
func TestAUsersCompanyIsTakenOutOfItsMetadata(t *testing.T) {
	text := func(s string) row.Value { return row.Value{Text: []byte(s)} }
	null := row.Value{Null: true}
	tests := []struct {
		name        string
		companyCol  string
		account     row.Value
		wantCompany string
	}{
		{"an integer company id, as a string", "account_id", text("42"), "42"},
		{"a text company id", "account_ref", text("acct_8841"), "acct_8841"},
		{"NULL: no company", "account_id", null, ""},
		{"empty: no company", "account_ref", text(""), ""},
		{"unchanged TOAST: left out", "account_ref", row.Value{Unchanged: true}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := exampleUsers()
			u.CompanyID = tt.companyCol
			m, err := Compile(u.Entity(), "public.users", usersColumns)
			require.NoError(t, err)
			require.Equal(t, 0, m.Membership())
			values := []row.Value{text("7"), null, text("Ana"), text("ana@example.org"), text("1"), null, null}
			if tt.companyCol == "account_id" {
				values[1] = tt.account
			} else {
				values[6] = tt.account
			}
			got, err := m.IdentifyUser(values)
			require.NoError(t, err)
			assert.Equal(t, userpilot.User{UserID: "7", CompanyID: tt.wantCompany, Metadata: userpilot.Metadata{
				"name": json.RawMessage(`"Ana"`), "email": json.RawMessage(`"ana@example.org"`), "role": json.RawMessage(`"administrator"`),
			}}, got)

			vals := make([]json.RawMessage, len(m.Keys()))
			_, _, err = m.Map(values, nil, vals)
			require.NoError(t, err)
			v := vals[m.Membership()]
			assert.Equal(t, tt.wantCompany, CompanyOf(v))
			if tt.wantCompany == "" {
				assert.True(t, v == nil || string(v) == "null", "no company is null or left out, never %s", v)
			}
		})
	}

	c := exampleUsers()
	c.CompanyID = ""
	m, err := Compile(c.Entity(), "public.users", usersColumns)
	require.NoError(t, err)
	assert.Equal(t, -1, m.Membership())
	restricted, err := Compile(exampleUsers().Entity(), "public.users", usersColumns)
	require.NoError(t, err)
	assert.Equal(t, 0, restricted.Restrict([]string{"name", MembershipKey}, nil).Membership(), "a backfill of the company finds it")
	assert.Equal(t, -1, restricted.Restrict([]string{"name"}, nil).Membership())
}

// TestUsersMappingProblemsNameTheUsersSection: what a users mapping gets
// wrong is reported with the users section's keys (user_id,
// users.company_id), and a row without a user id says so.
func TestUsersMappingProblemsNameTheUsersSection(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Users)
		want   string
	}{
		{"user_id column missing", func(u *Users) { u.UserID = "uid" },
			`p.yaml:3: user_id: column "uid" does not exist in public.users (columns: id, account_id, name, email, role, settings, account_ref)`},
		{"user_id of a structured type", func(u *Users) { u.UserID = "settings" },
			`p.yaml:3: user_id: column "settings" is jsonb, which cannot identify a user`},
		{"company column missing", func(u *Users) { u.CompanyID = "account" },
			`p.yaml:4: users.company_id: column "account" does not exist in public.users (columns: id, account_id, name, email, role, settings, account_ref)`},
		{"company column of a structured type", func(u *Users) { u.CompanyID = "settings" },
			`p.yaml:4: users.company_id: column "settings" is jsonb, which cannot identify a company`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := exampleUsers()
			tt.change(&u)
			_, err := Compile(u.Entity(), "public.users", usersColumns)
			var errs ConfigErrors
			require.True(t, errors.As(err, &errs), "%v", err)
			require.Len(t, errs, 1)
			assert.Equal(t, tt.want, errs[0].Error())
			if tt.name != "user_id column missing" && tt.name != "company column missing" {
				assert.NotEmpty(t, errs[0].Fix) // a missing column's message lists the columns
			}
		})
	}

	m, err := Compile(exampleUsers().Entity(), "public.users", usersColumns)
	require.NoError(t, err)
	_, err = m.IdentifyUser([]row.Value{{Null: true}, {}, {}, {}, {}, {}, {}})
	assert.EqualError(t, err, `user_id (column "id"): is NULL; every user needs an id (fix: make the column NOT NULL, or choose another column)`)
}

// TestAGeneratedMembershipColumnIsRefused: a user would keep the company
// of its first sync, since Postgres does not stream generated columns.
func TestAGeneratedMembershipColumnIsRefused(t *testing.T) {
	err := exampleUsers().Entity().Generated(map[string]string{"account_id": "(settings->>'account')::bigint", "name": "lower(email)"})
	var errs ConfigErrors
	require.True(t, errors.As(err, &errs))
	require.Len(t, errs, 2)
	assert.Equal(t, MembershipKey, errs[0].Key)
	assert.Contains(t, errs[0].Msg, "a user would keep the company it had at the initial sync")
	assert.Equal(t, "users.metadata.name", errs[1].Key)
}

// TestUsersShapeAndItsChanges: a users mapping's shape records its keys as
// read from users, a change of its scope names users, and a membership
// dropped from the mapping is not cleared (there is no null company).
func TestUsersShapeAndItsChanges(t *testing.T) {
	u := exampleUsers()
	u.KeepRemovedKeys = false
	now := u.Entity().Shape()
	var def definition
	require.NoError(t, json.Unmarshal(now.Keys["name"], &def))
	assert.Equal(t, "users", def.From)
	require.Contains(t, now.Keys, MembershipKey)

	moved := now
	moved.Table = "public.people"
	assert.Equal(t, "users.table changed from public.people to public.users", Compare(moved, now).Scope)
	other := now
	other.CompanyID = "uid"
	assert.Equal(t, "users.user_id changed from uid to id", Compare(other, now).Scope)

	without := u
	without.CompanyID = ""
	ch := Compare(now, without.Entity().Shape())
	assert.Equal(t, []string{MembershipKey}, ch.Removed)
	set, clear := ch.Backfill(without.Entity())
	assert.Empty(t, set)
	assert.Empty(t, clear, "a user's company is never sent as null")
	assert.Equal(t, "users.company_id removed (users keep the company Userpilot has)", ch.Describe(without.Entity()))

	ch = Compare(without.Entity().Shape(), now)
	set, _ = ch.Backfill(u.Entity())
	assert.Equal(t, []string{MembershipKey}, set, "a membership added is sent to every user")

	// The companies' shape is what it always was.
	var cdef definition
	require.NoError(t, json.Unmarshal(Companies{CompanyID: "id", Metadata: []Field{{Key: "name", Column: "name"}}}.Shape().Keys["name"], &cdef))
	assert.Equal(t, "companies", cdef.From)
}

// TestPersonalDataInAUsersTable: a users table's rows are people: its name
// columns are a person's name (a companies table's name is the company's),
// the membership is not personal data, and pii: true acknowledges as for
// companies.
func TestPersonalDataInAUsersTable(t *testing.T) {
	u := exampleUsers()
	u.Metadata = append(u.Metadata,
		Field{Key: "display_name", Column: "display_name"},
		Field{Key: "company_name", Column: "company_name"},
		Field{Key: "hostname", Column: "hostname"},
		Field{Key: "phone", Column: "phone"})
	var keys []string
	for _, pd := range u.Entity().PersonalData(nil) {
		keys = append(keys, pd.Key+": "+pd.What)
	}
	assert.Equal(t, []string{"name: a person's name", "display_name: a person's name", "phone: a phone number"}, keys)

	assert.Empty(t, Companies{Metadata: []Field{{Key: "name", Column: "name"}}}.PersonalData(nil), "a company's name is not a person's")
	assert.Equal(t, "a person's name", LooksPersonalInUsers("nickname"))
	assert.Equal(t, "a person's name", LooksPersonalInUsers("FullName"))
	assert.Equal(t, "", LooksPersonalInUsers("role_name"))
	assert.Equal(t, "an email address", LooksPersonalInUsers("email"))
}

// A user's company read back from its JSON is what json.Unmarshal reads,
// whatever the bytes; a plain id costs its string only (a bulk body of
// users reads one per user).
func FuzzCompanyOfIsUnmarshal(f *testing.F) {
	for _, s := range []string{`"42"`, `"acme-7"`, `null`, ``, `"a\"b"`, `"ünï"`, `"<&>"`, `"`, `42`, `"tab	"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		var want string
		if len(v) == 0 || json.Unmarshal(v, &want) != nil {
			want = ""
		}
		assert.Equal(t, want, CompanyOf(v))
	})
}

func TestCompanyOfAPlainIDCostsItsStringOnly(t *testing.T) {
	v := json.RawMessage(`"company-4711"`)
	assert.Equal(t, "company-4711", CompanyOf(v))
	assert.LessOrEqual(t, testing.AllocsPerRun(100, func() { _ = CompanyOf(v) }), 1.0)
}
