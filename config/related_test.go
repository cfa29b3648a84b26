package config

import (
	"github.com/pgpilot/pgpilot/mapping"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const relatedExample = minimal + `    plan: plan
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
        last_login_at: {sql: max(last_login_at), type: date}
  where: not is_test
`

func TestParseRelatedLookupsAggregatesAndWhere(t *testing.T) {
	cfg, err := Parse("p.yaml", []byte(relatedExample), env(baseEnv()))
	require.NoError(t, err)
	c := cfg.Companies
	assert.Equal(t, "not is_test", c.Where)
	assert.Equal(t, 24, c.WhereLine)
	require.Len(t, c.Related, 2)
	sub, users := c.Related[0], c.Related[1]
	assert.Equal(t, mapping.Related{Table: "public.subscriptions", Schema: "public", Name: "subscriptions", CompanyID: "company_id",
		OrderBy: "updated_at desc, id desc", Metadata: []mapping.Field{
			{Key: "mrr", Column: "mrr", Type: mapping.TypeNumber, Line: 16},
			{Key: "billing_status", Column: "status", Line: 17},
		}, Line: 12, TableLine: 12, CompanyIDLine: 13, OrderByLine: 14, Index: 0}, sub)
	assert.True(t, sub.IsLookup())
	assert.False(t, users.IsLookup())
	assert.Equal(t, []mapping.Aggregate{
		{Key: "user_count", SQL: "count(*)", Line: 21},
		{Key: "active_users", SQL: "count(*) filter (where active)", Line: 22},
		{Key: "last_login_at", SQL: "max(last_login_at)", Type: mapping.TypeDate, Line: 23},
	}, users.Aggregate)
	assert.Equal(t, []string{"user_count", "active_users", "last_login_at"}, users.Keys())
}

func TestRelatedMistakesAreRefusedWithTheLineAndTheFix(t *testing.T) {
	tests := []struct {
		name, add string
		want      []problem
	}{
		{"a key set twice", `  related:
    - table: users
      company_id: company_id
      aggregate:
        name: count(*)
`, []problem{{`p.yaml:14: companies.related[0].aggregate.name: metadata key "name" is also set by companies.metadata (line 9)`,
			"give each key one source: rename one of them"}}},
		{"a key set by on_delete_metadata too", `  on_delete: mark
  on_delete_metadata: {seats: null}
  related:
    - table: users
      company_id: company_id
      aggregate:
        seats: count(*)
`, []problem{{`p.yaml:11: companies.on_delete_metadata.seats: metadata key "seats" is also set by companies.related[0].aggregate (line 16)`,
			"give each key one source: rename one of them"}}},
		{"both forms", `  related:
    - table: users
      company_id: company_id
      metadata: {plan: plan}
      aggregate: {n: count(*)}
`, []problem{{"p.yaml:11: companies.related[0]: has both metadata (a lookup of one row) and aggregate (over all rows)",
			"write two entries for the same table: one with metadata, one with aggregate"}}},
		{"an expression that ends the query", `  related:
    - table: users
      company_id: company_id
      aggregate:
        n: count(*); drop table users
`, []problem{{`p.yaml:14: companies.related[0].aggregate.n: "count(*); drop table users" is not one SQL expression: it holds a semicolon: one condition, not statements`,
			"write one aggregate expression, e.g. count(*) filter (where active), without comments or semicolons, its parentheses balanced"}}},
		{"an order that escapes", `  related:
    - table: subscriptions
      company_id: company_id
      order_by: id) x --
      metadata: {mrr: mrr}
`, []problem{{`p.yaml:13: companies.related[0].order_by: "id) x --" is not one ORDER BY list: the parenthesis at character 3 closes one it did not open`,
			"write the columns as after ORDER BY, e.g. order_by: updated_at desc, id desc, without comments or semicolons"}}},
		{"a condition with a comment", `  where: not is_test -- for now
`, []problem{{`p.yaml:10: companies.where: "not is_test -- for now" is not one SQL condition: it holds a comment (--), which would comment out the rest of pgpilot's chunk query`,
			"write one condition, as after WHERE, e.g. where: not is_test, without comments or semicolons, its parentheses balanced"}}},
		{"order_by on an aggregate", `  related:
    - table: users
      company_id: company_id
      order_by: id
      aggregate: {n: count(*)}
`, []problem{{"p.yaml:13: companies.related[0].order_by: is used only by a lookup (metadata:): an aggregate reads all rows", "remove order_by"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(minimal+tt.add), env(baseEnv()))
			require.Error(t, err)
			assert.Equal(t, tt.want, fixedProblems(t, err))
		})
	}
}
