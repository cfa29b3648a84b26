package config

import (
	"github.com/pgpilot/pgpilot/mapping"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseTableNames(t *testing.T) {
	tests := []struct{ in, schema, name string }{
		{"companies", "public", "companies"},
		{"Companies", "public", "companies"},
		{"Sales.Companies", "sales", "companies"},
		{`'"Sales"."Companies"'`, "Sales", "Companies"},
		{`'"My ""odd"" schema".accounts'`, `My "odd" schema`, "accounts"},
		{`'app."Company.Profiles"'`, "app", "Company.Profiles"},
		{"_t$1", "public", "_t$1"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			data := strings.Replace(minimal, "table: companies", "table: "+tt.in, 1)
			cfg, err := Parse("p.yaml", []byte(data), env(baseEnv()))
			require.NoError(t, err)
			assert.Equal(t, tt.schema, cfg.Companies.Schema)
			assert.Equal(t, tt.name, cfg.Companies.Name)
		})
	}
}

func TestPIITrueAcknowledgesAKeyAndAnythingElseIsRefused(t *testing.T) {
	data := minimal + "    contact: {column: contact_email, pii: true}\n    phone: {column: phone, type: string, pii: false}\n    owner: owner_email\n"
	cfg, err := Parse("p.yaml", []byte(data), env(baseEnv()))
	require.NoError(t, err)
	assert.Equal(t, []mapping.Field{
		{Key: "name", Column: "name", Line: 9},
		{Key: "contact", Column: "contact_email", Line: 10, PII: true},
		{Key: "phone", Column: "phone", Type: mapping.TypeString, Line: 11},
		{Key: "owner", Column: "owner_email", Line: 12},
	}, cfg.Companies.Metadata)
	got := cfg.Companies.PersonalData(nil)
	require.Len(t, got, 2, "pii: true silences the warning for its key only")
	assert.Equal(t, "phone", got[0].Key)
	assert.Equal(t, "owner", got[1].Key)

	_, err = Parse("p.yaml", []byte(minimal+"    contact: {column: contact_email, pii: yes please}\n"), env(baseEnv()))
	assert.Equal(t, []problem{{`p.yaml:10: companies.metadata.contact.pii: "yes please" is not true or false`,
		"write pii: true once sending this personal data to Userpilot is cleared, or leave it out"}}, fixedProblems(t, err))
}

func TestDerivedFormsAreRead(t *testing.T) {
	data := minimal + `    plan: {column: custom_attributes, path: plan_name}
    size: {column: custom_attributes, path: company.size, type: number}
    seats_raw: {column: custom_attributes, path: [subscribed.quantity]}
    status: {column: status, values: {0: active, 1: suspended}, default: unknown}
    tier: {sql: "case when seats > 100 then 'large' else 'small' end", type: string}
    notes: {column: notes, on_null: keep}
  removed_keys: keep
`
	cfg, err := Parse("p.yaml", []byte(data), env(baseEnv()))
	require.NoError(t, err)
	assert.Equal(t, []mapping.Field{
		{Key: "name", Column: "name", Line: 9},
		{Key: "plan", Column: "custom_attributes", Path: []string{"plan_name"}, Line: 10},
		{Key: "size", Column: "custom_attributes", Path: []string{"company", "size"}, Type: mapping.TypeNumber, Line: 11},
		{Key: "seats_raw", Column: "custom_attributes", Path: []string{"subscribed.quantity"}, Line: 12},
		{Key: "status", Column: "status", Values: []mapping.Label{{From: "0", To: "active"}, {From: "1", To: "suspended"}}, Default: ptr("unknown"), Line: 13},
		{Key: "tier", SQL: "case when seats > 100 then 'large' else 'small' end", Type: mapping.TypeString, Line: 14},
		{Key: "notes", Column: "notes", KeepNull: true, Line: 15},
	}, cfg.Companies.Metadata)
	assert.True(t, cfg.Companies.KeepRemovedKeys)
	assert.Equal(t, []string{"id", "name", "custom_attributes", "status", "notes"}, cfg.Companies.Columns(), "an expression reads no column of its own")
}

func TestDerivedFormsAreRefusedWithTheLineAndTheFix(t *testing.T) {
	tests := []struct {
		name, entry string
		want        []problem
	}{
		{"column and sql", `{column: plan, sql: "upper(plan)"}`,
			[]problem{{`p.yaml:10: companies.metadata.k: has both column and sql`, "keep one: column: reads a column, sql: evaluates an expression on the row"}}},
		{"neither", `{type: string}`,
			[]problem{{`p.yaml:10: companies.metadata.k.column: missing`, "write k: k or k: {column: k, type: number}"}}},
		{"an empty key in a path", `{column: attrs, path: company..size}`,
			[]problem{{`p.yaml:10: companies.metadata.k.path: "company..size" has an empty key between its dots`,
				"write path: company.size (dots separate nested keys), or path: [subscribed.quantity] (a list) when a key holds a dot"}}},
		{"an empty list", `{column: attrs, path: []}`,
			[]problem{{`p.yaml:10: companies.metadata.k.path: is an empty list`,
				"write path: company.size (dots separate nested keys), or path: [subscribed.quantity] (a list) when a key holds a dot"}}},
		{"a path on an expression", `{sql: "attrs", path: a}`,
			[]problem{{`p.yaml:10: companies.metadata.k.path: reads inside a json or jsonb column, not an expression`,
				`write the path in the expression (sql: "attrs #>> '{company,size}'"), or map column: with path:`}}},
		{"values that are not a mapping", `{column: status, values: [active]}`,
			[]problem{{`p.yaml:10: companies.metadata.k.values: must be a mapping of values to labels, not a list`,
				"write values: {0: active, 1: suspended}: each value as Postgres prints it, then the label to send"}}},
		{"a label missing", `{column: status, values: {0: }}`,
			[]problem{{`p.yaml:10: companies.metadata.k.values.0: has no label`,
				"write values: {0: active, 1: suspended}: each value as Postgres prints it, then the label to send"}}},
		{"default without values", `{column: status, default: unknown}`,
			[]problem{{`p.yaml:10: companies.metadata.k.default: is the label of a value values: does not list, and there is no values:`,
				"add values: {0: active, 1: suspended}, or remove default"}}},
		{"an unknown null policy", `{column: notes, on_null: ignore}`,
			[]problem{{`p.yaml:10: companies.metadata.k.on_null: "ignore" is not a null policy`,
				"write on_null: clear (a NULL clears the key in Userpilot, the default) or on_null: keep (a NULL leaves Userpilot's value as it is)"}}},
		{"two statements", `{sql: "1; drop table x"}`,
			[]problem{{`p.yaml:10: companies.metadata.k.sql: "1; drop table x" is not one SQL expression: it holds a semicolon: one condition, not statements`,
				`write one expression on the row, e.g. sql: "case when seats > 100 then 'large' else 'small' end", without comments or semicolons`}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(minimal+"    k: "+tt.entry+"\n"), env(baseEnv()))
			assert.Equal(t, tt.want, fixedProblems(t, err))
		})
	}
	_, err := Parse("p.yaml", []byte(minimal+"  removed_keys: forget\n"), env(baseEnv()))
	assert.Equal(t, []problem{{`p.yaml:10: companies.removed_keys: "forget" is not a policy`,
		"write removed_keys: clear (a key dropped from the mapping is sent once as null, the default) or removed_keys: keep (Userpilot keeps its value)"}}, fixedProblems(t, err))
}

func ptr[T any](v T) *T { return &v }
