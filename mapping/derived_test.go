package mapping

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/userpilot"
)

// accountColumns are Chatwoot's accounts, as internal/chatwoot creates them.
var accountColumns = []row.Column{
	{Name: "id", TypeOID: pgtype.Int4OID, TypeName: "integer"},
	{Name: "name", TypeOID: pgtype.VarcharOID, TypeName: "character varying"},
	{Name: "status", TypeOID: pgtype.Int4OID, TypeName: "integer"},
	{Name: "custom_attributes", TypeOID: pgtype.JSONBOID, TypeName: "jsonb"},
	{Name: "settings", TypeOID: pgtype.JSONOID, TypeName: "json"},
	{Name: "kind", TypeOID: pgtype.TextOID, TypeName: "text"},
	{Name: "active", TypeOID: pgtype.BoolOID, TypeName: "boolean"},
	{Name: "tags", TypeOID: pgtype.TextArrayOID, TypeName: "text[]"},
}

// derive maps one field over a row of accountColumns whose values are
// given by column name (the others NULL): the key's JSON (nil: left out)
// and the error.
func derive(t *testing.T, f Field, vals map[string]row.Value) (json.RawMessage, error) {
	t.Helper()
	f.Key = "k"
	m, err := Compile(Companies{CompanyID: "id", Metadata: []Field{f}}, "public.accounts", accountColumns)
	require.NoError(t, err)
	values := make([]row.Value, len(accountColumns))
	for i, c := range accountColumns {
		values[i] = row.Value{Null: true}
		if v, ok := vals[c.Name]; ok {
			values[i] = v
		}
	}
	values[0] = text("7")
	out := make([]json.RawMessage, 1)
	_, _, err = m.Map(values, nil, out)
	return out[0], err
}

func TestPathReadsAKeyInsideTheJSON(t *testing.T) {
	doc := `{"mrr": 2178.00, "plan_name": "pro", "company": {"size": 42, "name": "Acme <b> & \"co\"", "tags": ["a", "b"], "meta": {"x": null}}, ` +
		`"subscribed.quantity": 5, "subscribed": {"quantity": 99}, "flag": true, "nothing": null, "label": "741.00", "bad": "n/a", ` +
		`"caf\u00e9": "escaped key", "esc\\\"aped": 1, "emoji": "\ud83d\ude80", "when": "2024-03-01 09:30:00+00", "yes": "yes"}`
	col := func(s string) map[string]row.Value { return map[string]row.Value{"custom_attributes": text(s)} }
	ca := col(doc)
	tests := []struct {
		name string
		path []string
		typ  Type
		want string // the key's JSON; "" when left out
		err  string // the start of a bad value's reason
	}{
		{"a number keeps its digits", []string{"mrr"}, TypeAuto, `2178.00`, ""},
		{"a string", []string{"plan_name"}, TypeAuto, `"pro"`, ""},
		{"nested", []string{"company", "size"}, TypeAuto, `42`, ""},
		{"a key holding a dot", []string{"subscribed.quantity"}, TypeAuto, `5`, ""},
		{"the nested key, not the dotted one", []string{"subscribed", "quantity"}, TypeAuto, `99`, ""},
		{"a boolean", []string{"flag"}, TypeAuto, `true`, ""},
		{"JSON null", []string{"nothing"}, TypeAuto, `null`, ""},
		{"a missing key is null", []string{"seats"}, TypeAuto, `null`, ""},
		{"a missing nested key is null", []string{"company", "seats"}, TypeAuto, `null`, ""},
		{"through a string is null", []string{"plan_name", "x"}, TypeAuto, `null`, ""},
		{"through an array is null", []string{"company", "tags", "0"}, TypeAuto, `null`, ""},
		{"through null is null", []string{"nothing", "x"}, TypeAuto, `null`, ""},
		{"a string with HTML and quotes is written as userpilot.Encode does", []string{"company", "name"}, TypeAuto, `"Acme \u003cb\u003e \u0026 \"co\""`, ""},
		{"a key with an escape", []string{"café"}, TypeAuto, `"escaped key"`, ""},
		{"a key with escaped quotes", []string{`esc\"aped`}, TypeAuto, `1`, ""},
		{"a surrogate pair", []string{"emoji"}, TypeAuto, `"🚀"`, ""},
		{"an object is a bad value", []string{"company"}, TypeAuto, "", `"{\"size\": 42, `},
		{"an array is a bad value", []string{"company", "tags"}, TypeAuto, "", `"[\"a\", \"b\"]" at path company.tags is an array, which is not a primitive value`},
		{"an object as a string is its JSON text", []string{"company", "meta"}, TypeString, `"{\"x\": null}"`, ""},
		{"an array as a string", []string{"company", "tags"}, TypeString, `"[\"a\", \"b\"]"`, ""},
		{"a number as a string", []string{"mrr"}, TypeString, `"2178.00"`, ""},
		{"a boolean as a string", []string{"flag"}, TypeString, `"true"`, ""},
		{"a string read as a number keeps its digits", []string{"label"}, TypeNumber, `741.00`, ""},
		{"a number as a number", []string{"mrr"}, TypeNumber, `2178.00`, ""},
		{"a string that is no number is a bad value", []string{"bad"}, TypeNumber, "", `cannot read "n/a" as a number`},
		{"a boolean is no number", []string{"flag"}, TypeNumber, "", `cannot read true (a boolean at path flag) as a number`},
		{"a string read as a boolean", []string{"yes"}, TypeBoolean, `true`, ""},
		{"a string read as a date", []string{"when"}, TypeDate, `"2024-03-01T09:30:00Z"`, ""},
		{"a number is no date", []string{"mrr"}, TypeDate, "", `cannot read 2178.00 (a number at path mrr) as a date`},
		{"null stays null whatever the type", []string{"nothing"}, TypeNumber, `null`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := derive(t, Field{Column: "custom_attributes", Path: tt.path, Type: tt.typ}, ca)
			if tt.err != "" {
				var bad BadValues
				require.True(t, errors.As(err, &bad), "want a bad value, got %v", err)
				assert.Contains(t, bad[0].Reason, tt.err)
				assert.Nil(t, got)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, string(got))
			assert.True(t, json.Valid(got))
		})
	}

	t.Run("json repeats a key: the last counts, as for ->", func(t *testing.T) {
		got, err := derive(t, Field{Column: "settings", Path: []string{"a"}}, map[string]row.Value{"settings": text(`{"a": 1, "b": {"a": 3}, "a" : 2}`)})
		require.NoError(t, err)
		assert.Equal(t, "2", string(got))
	})
	t.Run("a json number keeps its form", func(t *testing.T) {
		got, err := derive(t, Field{Column: "settings", Path: []string{"n"}}, map[string]row.Value{"settings": text(`{"n":1.50e2}`)})
		require.NoError(t, err)
		assert.Equal(t, "1.50e2", string(got))
	})
	t.Run("a NULL column is null", func(t *testing.T) {
		got, err := derive(t, Field{Column: "custom_attributes", Path: []string{"mrr"}}, nil)
		require.NoError(t, err)
		assert.Equal(t, "null", string(got))
	})
	t.Run("a TOASTed column an UPDATE left alone leaves its derived keys out, never null", func(t *testing.T) {
		for _, f := range []Field{
			{Column: "custom_attributes", Path: []string{"mrr"}},
			{Column: "custom_attributes", Path: []string{"plan_name"}, Values: []Label{{"pro", "Pro"}}, Default: ptr("other")},
			{Column: "custom_attributes", Path: []string{"mrr"}, KeepNull: true},
		} {
			got, err := derive(t, f, map[string]row.Value{"custom_attributes": {Unchanged: true}})
			require.NoError(t, err)
			assert.Nil(t, got)
		}
	})
	t.Run("a document that is not JSON is a bad value", func(t *testing.T) {
		_, err := derive(t, Field{Column: "custom_attributes", Path: []string{"a"}}, col(`{"a": `))
		var bad BadValues
		require.True(t, errors.As(err, &bad), "%v", err)
		assert.Contains(t, bad[0].Reason, "is not valid JSON")
	})
}

func ptr[T any](v T) *T { return &v }

func TestValuesLabelAColumnOrAJSONScalar(t *testing.T) {
	status := Field{Column: "status", Values: []Label{{"0", "active"}, {"1", "suspended"}}, Default: ptr("unknown")}
	tests := []struct {
		name string
		f    Field
		vals map[string]row.Value
		want string
		err  string
	}{
		{"an integer enum", status, map[string]row.Value{"status": text("1")}, `"suspended"`, ""},
		{"a value not listed takes the default", status, map[string]row.Value{"status": text("7")}, `"unknown"`, ""},
		{"NULL is null, not the default", status, nil, `null`, ""},
		{"without default, a value not listed is a bad value",
			Field{Column: "status", Values: []Label{{"0", "active"}}}, map[string]row.Value{"status": text("3")}, "",
			`"3" is not one of the values: listed, and there is no default`},
		{"values written with leading zeros still match", Field{Column: "status", Values: []Label{{"01", "one"}}},
			map[string]row.Value{"status": text("1")}, `"one"`, ""},
		{"a text enum", Field{Column: "kind", Values: []Label{{"sme", "Small business"}, {"ent", "Enterprise"}}},
			map[string]row.Value{"kind": text("ent")}, `"Enterprise"`, ""},
		{"a boolean column", Field{Column: "active", Values: []Label{{"true", "yes"}, {"false", "no"}}},
			map[string]row.Value{"active": text("f")}, `"no"`, ""},
		{"labels of type number", Field{Column: "kind", Type: TypeNumber, Values: []Label{{"sme", "1"}, {"ent", "2.50"}}},
			map[string]row.Value{"kind": text("ent")}, `2.50`, ""},
		{"labels of type boolean", Field{Column: "kind", Type: TypeBoolean, Values: []Label{{"sme", "false"}}, Default: ptr("true")},
			map[string]row.Value{"kind": text("x")}, `true`, ""},
		{"a JSON string at a path", Field{Column: "custom_attributes", Path: []string{"tier"}, Values: []Label{{"b", "Bronze"}}},
			map[string]row.Value{"custom_attributes": text(`{"tier": "b"}`)}, `"Bronze"`, ""},
		{"a JSON number at a path", Field{Column: "custom_attributes", Path: []string{"tier"}, Values: []Label{{"2", "Two"}}},
			map[string]row.Value{"custom_attributes": text(`{"tier": 2}`)}, `"Two"`, ""},
		{"a missing path is null", Field{Column: "custom_attributes", Path: []string{"tier"}, Values: []Label{{"2", "Two"}}, Default: ptr("x")},
			map[string]row.Value{"custom_attributes": text(`{}`)}, `null`, ""},
		{"an object at a path is a bad value", Field{Column: "custom_attributes", Path: []string{"tier"}, Values: []Label{{"2", "Two"}}},
			map[string]row.Value{"custom_attributes": text(`{"tier": {}}`)}, "", `at path tier is an object, which values: cannot list`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := derive(t, tt.f, tt.vals)
			if tt.err != "" {
				var bad BadValues
				require.True(t, errors.As(err, &bad), "want a bad value, got %v", err)
				assert.Contains(t, bad[0].Reason, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, string(got))
		})
	}
}

func TestOnNullKeepLeavesTheKeyOut(t *testing.T) {
	for _, tt := range []struct {
		name string
		f    Field
		vals map[string]row.Value
	}{
		{"a NULL column", Field{Column: "kind", KeepNull: true}, nil},
		{"a NULL jsonb", Field{Column: "custom_attributes", Path: []string{"a"}, KeepNull: true}, nil},
		{"a missing path", Field{Column: "custom_attributes", Path: []string{"a"}, KeepNull: true}, map[string]row.Value{"custom_attributes": text(`{}`)}},
		{"JSON null", Field{Column: "custom_attributes", Path: []string{"a"}, KeepNull: true}, map[string]row.Value{"custom_attributes": text(`{"a": null}`)}},
		{"a NULL under values", Field{Column: "status", Values: []Label{{"0", "active"}}, Default: ptr("x"), KeepNull: true}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := derive(t, tt.f, tt.vals)
			require.NoError(t, err)
			assert.Nil(t, got, "left out: Userpilot keeps its value")
			tt.f.KeepNull = false
			got, err = derive(t, tt.f, tt.vals)
			require.NoError(t, err)
			assert.Equal(t, "null", string(got), "on_null: clear (the default) sends null")
		})
	}
}

func TestOneBadValueCostsOneKey(t *testing.T) {
	m, err := Compile(Companies{CompanyID: "id", Metadata: []Field{
		{Key: "name", Column: "name"},
		{Key: "mrr", Column: "custom_attributes", Path: []string{"mrr"}, Type: TypeNumber},
		{Key: "plan", Column: "custom_attributes", Path: []string{"plan_name"}},
		{Key: "status", Column: "status", Values: []Label{{"0", "active"}}},
	}}, "public.accounts", accountColumns)
	require.NoError(t, err)
	vals := []row.Value{text("7"), text("Acme"), text("5"), text(`{"mrr": "n/a", "plan_name": "pro"}`), {Null: true}, {Null: true}, {Null: true}, {Null: true}}
	co, err := m.Identify(vals)
	var bad BadValues
	require.True(t, errors.As(err, &bad), "%v", err)
	assert.Equal(t, []string{"mrr", "status"}, bad.HeldBack())
	assert.Equal(t, `metadata "mrr" (column "custom_attributes", path mrr): cannot read "n/a" as a number; `+
		`metadata "status" (column "status"): "5" is not one of the values: listed, and there is no default; fix: add it to values:, or add default: with the label for the others`+
		` (held back: the row's other keys are sent)`, err.Error())
	assert.Equal(t, "7", co.CompanyID)
	assert.Equal(t, userpilot.Metadata{"name": json.RawMessage(`"Acme"`), "plan": json.RawMessage(`"pro"`)}, co.Metadata)
}

func TestDerivedKeysAreRefusedAtCompileWithTheFix(t *testing.T) {
	tests := []struct {
		name string
		f    Field
		want string
	}{
		{"path on a text column", Field{Column: "kind", Path: []string{"a"}},
			`metadata "k": column "kind" is text; path: reads a key inside a json or jsonb column; fix: map the column without path:, or name a json or jsonb column`},
		{"values on a jsonb column without a path", Field{Column: "custom_attributes", Values: []Label{{"a", "b"}}},
			`metadata "k": column "custom_attributes" is jsonb: values: lists a key's values; fix: add path: with the key inside it`},
		{"values on an array column", Field{Column: "tags", Values: []Label{{"{a}", "b"}}},
			`metadata "k": column "tags" is text[], whose values values: cannot list; fix: map a scalar column, or an expression with sql:`},
		{"a value an integer column cannot hold", Field{Column: "status", Values: []Label{{"active", "b"}}},
			`metadata "k": values: "active" is not an integer, and column "status" is integer; fix: list the column's values as Postgres prints them`},
		{"a label that is not of the type", Field{Column: "kind", Type: TypeNumber, Values: []Label{{"a", "many"}}},
			`metadata "k": label "many" cannot be sent as a number: cannot read "many" as a number; fix: write a label of that type, or remove type: to send the labels as strings`},
		{"default without values", Field{Column: "kind", Default: ptr("x")},
			`metadata "k": default: is the label of a value values: does not list; fix: add values:, or remove default`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.f.Key = "k"
			_, err := Compile(Companies{CompanyID: "id", Metadata: []Field{tt.f}}, "public.accounts", accountColumns)
			var ces ConfigErrors
			require.True(t, errors.As(err, &ces), "%v", err)
			require.Len(t, ces, 1)
			assert.Equal(t, tt.want, ces[0].Key+": "+ces[0].Msg+"; fix: "+ces[0].Fix)
		})
	}
}

func TestRestrictMapsOnlyTheKeysOfABackfill(t *testing.T) {
	m, err := Compile(Companies{CompanyID: "id", Metadata: []Field{
		{Key: "name", Column: "name"},
		{Key: "plan", Column: "custom_attributes", Path: []string{"plan_name"}},
	}}, "public.accounts", accountColumns)
	require.NoError(t, err)
	r := m.Restrict([]string{"plan", "gone_too"}, []string{"old_plan", "name"})
	assert.Equal(t, []string{"plan", "old_plan"}, r.Keys(), "a key still mapped is never sent as null")
	co, err := r.Identify([]row.Value{text("7"), text("Acme"), {Null: true}, text(`{"plan_name": "pro"}`), {Null: true}, {Null: true}, {Null: true}, {Null: true}})
	require.NoError(t, err)
	assert.Equal(t, userpilot.Metadata{"plan": json.RawMessage(`"pro"`), "old_plan": userpilot.Null}, co.Metadata)
	assert.Equal(t, []string{"name", "plan"}, m.Keys(), "m is unchanged")
}

// TestDerivedKeysMapWithoutAllocating: the stream's hot path stays free of
// allocations with paths, labels and on_null (the row's buffer is reused).
func TestDerivedKeysMapWithoutAllocating(t *testing.T) {
	m, err := Compile(Companies{CompanyID: "id", Metadata: []Field{
		{Key: "name", Column: "name"},
		{Key: "plan", Column: "custom_attributes", Path: []string{"plan_name"}},
		{Key: "mrr", Column: "custom_attributes", Path: []string{"mrr"}, Type: TypeNumber},
		{Key: "mrr_text", Column: "custom_attributes", Path: []string{"label"}, Type: TypeNumber},
		{Key: "size", Column: "custom_attributes", Path: []string{"company", "size"}},
		{Key: "seats", Column: "custom_attributes", Path: []string{"subscribed.quantity"}},
		{Key: "status", Column: "status", Values: []Label{{"0", "active"}, {"1", "suspended"}}, Default: ptr("unknown")},
		{Key: "kind", Column: "kind", KeepNull: true},
	}}, "public.accounts", accountColumns)
	require.NoError(t, err)
	vals := []row.Value{text("7"), text("Acme"), text("1"),
		text(`{"mrr": 2178.00, "label": "741.00", "plan_name": "pro", "company": {"size": 42}, "subscribed.quantity": 5}`),
		{Null: true}, {Null: true}, {Null: true}, {Null: true}}
	out := make([]json.RawMessage, len(m.Keys()))
	buf := make([]byte, 0, 1024)
	allocs := testing.AllocsPerRun(100, func() {
		var err error
		_, buf, err = m.Map(vals, buf[:0], out)
		if err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs)
	var got []string
	for _, v := range out {
		got = append(got, string(v))
	}
	assert.Equal(t, `"Acme" "pro" 2178.00 741.00 42 5 "suspended" `, strings.Join(got, " "))
}
