package mapping

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/pgpilot/pgpilot/row"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var companiesColumns = []row.Column{
	{Name: "id", TypeOID: pgtype.Int8OID, TypeName: "bigint"},
	{Name: "name", TypeOID: pgtype.TextOID, TypeName: "text"},
	{Name: "seats", TypeOID: pgtype.Int4OID, TypeName: "integer"},
	{Name: "tags", TypeOID: pgtype.JSONBOID, TypeName: "jsonb"},
	{Name: "active", TypeOID: pgtype.BoolOID, TypeName: "boolean"},
	{Name: "created_at", TypeOID: pgtype.TimestamptzOID, TypeName: "timestamp with time zone"},
	{Name: "token", TypeOID: pgtype.UUIDOID, TypeName: "uuid"},
	{Name: "Plan", TypeOID: pgtype.VarcharOID, TypeName: "character varying(20)"},
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name    string
		id      string
		fields  []Field
		columns []row.Column
		want    []string
	}{
		{
			name:   "mapped column missing",
			id:     "id",
			fields: []Field{{Key: "seats", Column: "seat_count", Line: 14}},
			want:   []string{`p.yaml:14: metadata "seats": column "seat_count" does not exist in public.companies (columns: id, name, seats, tags, active, created_at, token, Plan)`},
		},
		{
			name:   "column differs only in case",
			id:     "id",
			fields: []Field{{Key: "plan", Column: "plan", Line: 9}},
			want:   []string{`p.yaml:9: metadata "plan": column "plan" does not exist in public.companies (columns: id, name, seats, tags, active, created_at, token, Plan); did you mean "Plan"?`},
		},
		{
			name:   "company_id column missing",
			id:     "company_id",
			fields: []Field{{Key: "name", Column: "name", Line: 9}},
			want:   []string{`p.yaml:7: company_id: column "company_id" does not exist in public.companies (columns: id, name, seats, tags, active, created_at, token, Plan)`},
		},
		{
			name:   "company_id of a date type",
			id:     "created_at",
			fields: []Field{{Key: "name", Column: "name"}},
			want:   []string{`p.yaml:7: company_id: column "created_at" is timestamp with time zone, which cannot identify a company; fix: choose a column of an integer, numeric, text or uuid type`},
		},
		{
			name:   "structured column without type",
			id:     "id",
			fields: []Field{{Key: "tags", Column: "tags", Line: 10}},
			want:   []string{`p.yaml:10: metadata "tags": column "tags" is jsonb, which is not a primitive value (Userpilot accepts string, number, boolean or null); fix: add type: string to send its text, or map a scalar column`},
		},
		{
			name:   "structured column as number",
			id:     "id",
			fields: []Field{{Key: "tags", Column: "tags", Type: TypeNumber, Line: 10}},
			want:   []string{`p.yaml:10: metadata "tags": column "tags" is jsonb, which cannot be sent as a number; fix: write type: string to send its text, or map a column that holds a number`},
		},
		{
			name:   "boolean as number",
			id:     "id",
			fields: []Field{{Key: "active", Column: "active", Type: TypeNumber, Line: 11}},
			want:   []string{`p.yaml:11: metadata "active": column "active" is boolean, which cannot be sent as a number; fix: remove type: number to send it as a boolean, write type: string to send its text, or map a column that holds a number`},
		},
		{
			name:   "date as boolean",
			id:     "id",
			fields: []Field{{Key: "c", Column: "created_at", Type: TypeBoolean, Line: 11}},
			want:   []string{`p.yaml:11: metadata "c": column "created_at" is timestamp with time zone, which cannot be sent as a boolean; fix: remove type: boolean to send it as a date, write type: string to send its text, or map a column that holds a boolean`},
		},
		{
			name:   "number as date",
			id:     "id",
			fields: []Field{{Key: "s", Column: "seats", Type: TypeDate, Line: 11}},
			want:   []string{`p.yaml:11: metadata "s": column "seats" is integer, which cannot be sent as a date; fix: remove type: date to send it as a number, write type: string to send its text, or map a column that holds a date`},
		},
		{
			name:   "uuid as number never parses",
			id:     "id",
			fields: []Field{{Key: "t", Column: "token", Type: TypeNumber, Line: 12}},
			want:   []string{`p.yaml:12: metadata "t": column "token" is uuid, which cannot be sent as a number; fix: remove type: number to send it as a string, write type: string to send its text, or map a column that holds a number`},
		},
		{
			name:   "unknown type in code",
			id:     "id",
			fields: []Field{{Key: "n", Column: "name", Type: "int", Line: 12}},
			want:   []string{`p.yaml:12: metadata "n": unknown type "int"; fix: use string, number, boolean or date, or leave type out`},
		},
		{
			name: "all problems together",
			id:   "nope",
			fields: []Field{
				{Key: "a", Column: "x", Line: 10},
				{Key: "b", Column: "name", Line: 11},
				{Key: "c", Column: "tags", Line: 12},
			},
			columns: companiesColumns[:4],
			want: []string{
				`p.yaml:7: company_id: column "nope" does not exist in public.companies (columns: id, name, seats, tags)`,
				`p.yaml:10: metadata "a": column "x" does not exist in public.companies (columns: id, name, seats, tags)`,
				`p.yaml:12: metadata "c": column "tags" is jsonb, which is not a primitive value (Userpilot accepts string, number, boolean or null); fix: add type: string to send its text, or map a scalar column`,
			},
		},
		{
			name:    "long column lists are cut at 20",
			id:      "id",
			fields:  []Field{{Key: "a", Column: "x", Line: 10}},
			columns: numberedColumns(25),
			want:    []string{`p.yaml:10: metadata "a": column "x" does not exist in public.companies (columns: id, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16, c17, c18, c19, …)`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cols := tt.columns
			if cols == nil {
				cols = companiesColumns
			}
			c := Companies{CompanyID: tt.id, Metadata: tt.fields, File: "p.yaml", CompanyIDLine: 7}
			m, err := Compile(c, "public.companies", cols)
			assert.Nil(t, m)
			assert.Equal(t, tt.want, problemsAndFixes(t, err))
		})
	}
}

// problemsAndFixes is each problem in err with its fix (the field) after
// "; fix: ", as one string, so a table of expectations checks both.
func problemsAndFixes(t *testing.T, err error) []string {
	t.Helper()
	var ces ConfigErrors
	require.True(t, errors.As(err, &ces), "not ConfigErrors: %v", err)
	var out []string
	for _, ce := range ces {
		msg := ce.Error()
		if ce.Fix != "" {
			msg += "; fix: " + ce.Fix
		}
		out = append(out, msg)
	}
	return out
}

func numberedColumns(n int) []row.Column {
	cols := []row.Column{{Name: "id", TypeOID: pgtype.Int8OID}}
	for i := 1; i < n; i++ {
		cols = append(cols, row.Column{Name: fmt.Sprintf("c%d", i), TypeOID: pgtype.TextOID})
	}
	return cols
}

func TestCompileErrorWithoutFileHasNoPrefix(t *testing.T) {
	_, err := Compile(Companies{CompanyID: "id", Metadata: []Field{{Key: "seats", Column: "seat_count"}}}, "public.companies", companiesColumns[:3])
	require.Error(t, err)
	assert.Equal(t, `metadata "seats": column "seat_count" does not exist in public.companies (columns: id, name, seats)`, err.Error())
}

// convert compiles a one-field mapping for a column of the given type and
// maps one row whose value is text.
func convert(t *testing.T, oid uint32, typ Type, v row.Value) (any, bool, error) {
	t.Helper()
	cols := []row.Column{{Name: "id", TypeOID: pgtype.Int8OID}, {Name: "v", TypeOID: oid, TypeName: fmt.Sprintf("oid %d", oid)}}
	m, err := Compile(Companies{CompanyID: "id", Metadata: []Field{{Key: "k", Column: "v", Type: typ}}}, "t", cols)
	require.NoError(t, err)
	out, err := m.Identify([]row.Value{{Text: []byte("1")}, v})
	if err != nil {
		return nil, false, err
	}
	_, present := out.Metadata["k"]
	return out.Metadata.Values()["k"], present, nil
}

func text(s string) row.Value { return row.Value{Text: []byte(s)} }

func TestIdentifyConvertsValues(t *testing.T) {
	tests := []struct {
		name string
		oid  uint32
		typ  Type
		in   row.Value
		want any
	}{
		// numbers
		{"int2", pgtype.Int2OID, TypeAuto, text("-32768"), json.Number("-32768")},
		{"int4", pgtype.Int4OID, TypeAuto, text("42"), json.Number("42")},
		{"int8 max", pgtype.Int8OID, TypeAuto, text("9223372036854775807"), json.Number("9223372036854775807")},
		{"oid", pgtype.OIDOID, TypeAuto, text("4294967295"), json.Number("4294967295")},
		{"numeric(38,10) exact", pgtype.NumericOID, TypeAuto, text("1234567890123456789012345678.0123456789"), json.Number("1234567890123456789012345678.0123456789")},
		{"numeric keeps scale", pgtype.NumericOID, TypeAuto, text("12.5000"), json.Number("12.5000")},
		{"numeric negative fraction", pgtype.NumericOID, TypeAuto, text("-0.000001"), json.Number("-0.000001")},
		{"numeric large integer in plain digits", pgtype.NumericOID, TypeAuto, text("100000000000000000000000000000"), json.Number("100000000000000000000000000000")},
		{"numeric NaN", pgtype.NumericOID, TypeAuto, text("NaN"), nil},
		{"numeric Infinity", pgtype.NumericOID, TypeAuto, text("Infinity"), nil},
		{"numeric -Infinity", pgtype.NumericOID, TypeAuto, text("-Infinity"), nil},
		{"float8 shortest", pgtype.Float8OID, TypeAuto, text("0.10000000000000001"), json.Number("0.1")},
		{"float8 plain digits", pgtype.Float8OID, TypeAuto, text("1234567"), json.Number("1234567")},
		{"float8 large", pgtype.Float8OID, TypeAuto, text("1e+21"), json.Number("1e+21")},
		{"float8 small", pgtype.Float8OID, TypeAuto, text("1.5e-07"), json.Number("1.5e-7")},
		{"float4 shortest for its width", pgtype.Float4OID, TypeAuto, text("1.10000002"), json.Number("1.1")},
		{"float8 NaN", pgtype.Float8OID, TypeAuto, text("NaN"), nil},
		{"float8 Infinity", pgtype.Float8OID, TypeAuto, text("Infinity"), nil},
		{"float4 -Infinity", pgtype.Float4OID, TypeAuto, text("-Infinity"), nil},
		{"number from text", pgtype.TextOID, TypeNumber, text(" 42.50 "), json.Number("42.50")},
		{"number from text in exponent form", pgtype.VarcharOID, TypeNumber, text("1.5e3"), json.Number("1500")},
		{"number from text 00", pgtype.TextOID, TypeNumber, text("00"), json.Number("0")},
		{"number from text 0e5", pgtype.TextOID, TypeNumber, text("0e5"), json.Number("0")},
		{"number from text leading zeros", pgtype.TextOID, TypeNumber, text("007.50"), json.Number("7.50")},
		{"number from text keeps big integers", pgtype.TextOID, TypeNumber, text("123456789012345678901234567890"), json.Number("123456789012345678901234567890")},
		// booleans
		{"bool true", pgtype.BoolOID, TypeAuto, text("t"), true},
		{"bool false", pgtype.BoolOID, TypeAuto, text("f"), false},
		{"bool as string", pgtype.BoolOID, TypeString, text("t"), "true"},
		{"bool as string false", pgtype.BoolOID, TypeString, text("f"), "false"},
		{"boolean from text true", pgtype.TextOID, TypeBoolean, text("true"), true},
		{"boolean from text T", pgtype.TextOID, TypeBoolean, text("T"), true},
		{"boolean from text Yes", pgtype.TextOID, TypeBoolean, text(" Yes "), true},
		{"boolean from text on", pgtype.TextOID, TypeBoolean, text("ON"), true},
		{"boolean from text 1", pgtype.BPCharOID, TypeBoolean, text("1"), true},
		{"boolean from text FALSE", pgtype.TextOID, TypeBoolean, text("FALSE"), false},
		{"boolean from text f", pgtype.TextOID, TypeBoolean, text("f"), false},
		{"boolean from text no", pgtype.TextOID, TypeBoolean, text("no"), false},
		{"boolean from text off", pgtype.TextOID, TypeBoolean, text("Off"), false},
		{"boolean from text 0", pgtype.QCharOID, TypeBoolean, text("0"), false},
		// dates
		{"timestamptz UTC", pgtype.TimestamptzOID, TypeAuto, text("2024-03-01 09:30:00+00"), "2024-03-01T09:30:00Z"},
		{"timestamptz with offset to UTC", pgtype.TimestamptzOID, TypeAuto, text("2024-03-01 11:30:00+02"), "2024-03-01T09:30:00Z"},
		{"timestamptz with minutes offset", pgtype.TimestamptzOID, TypeAuto, text("2024-03-01 04:00:00-05:30"), "2024-03-01T09:30:00Z"},
		{"timestamptz fraction", pgtype.TimestamptzOID, TypeAuto, text("2024-03-01 09:30:00.123456+00"), "2024-03-01T09:30:00.123456Z"},
		{"timestamptz short fraction", pgtype.TimestamptzOID, TypeAuto, text("2024-03-01 09:30:00.5+00"), "2024-03-01T09:30:00.5Z"},
		{"timestamp taken as UTC", pgtype.TimestampOID, TypeAuto, text("2024-03-01 09:30:00"), "2024-03-01T09:30:00Z"},
		{"date", pgtype.DateOID, TypeAuto, text("2024-03-01"), "2024-03-01T00:00:00Z"},
		{"date infinity", pgtype.DateOID, TypeAuto, text("infinity"), nil},
		{"timestamptz -infinity", pgtype.TimestamptzOID, TypeAuto, text("-infinity"), nil},
		{"BC date", pgtype.DateOID, TypeAuto, text("0044-03-15 BC"), nil},
		{"BC timestamp", pgtype.TimestampOID, TypeAuto, text("0001-01-01 00:00:00 BC"), nil},
		{"year 10000", pgtype.DateOID, TypeAuto, text("10000-01-01"), nil},
		{"year 1", pgtype.DateOID, TypeAuto, text("0001-01-01"), "0001-01-01T00:00:00Z"},
		{"offset moves before year 1", pgtype.TimestamptzOID, TypeAuto, text("0001-01-01 00:30:00+01"), nil},
		{"date as string keeps Postgres text", pgtype.TimestamptzOID, TypeString, text("2024-03-01 09:30:00+00"), "2024-03-01 09:30:00+00"},
		{"date from RFC 3339 text", pgtype.TextOID, TypeDate, text("2024-03-01T11:30:00+02:00"), "2024-03-01T09:30:00Z"},
		{"date from Postgres ISO text", pgtype.TextOID, TypeDate, text("2024-03-01 09:30:00+00"), "2024-03-01T09:30:00Z"},
		{"date from zone-less text as UTC", pgtype.TextOID, TypeDate, text("2024-03-01 09:30:00"), "2024-03-01T09:30:00Z"},
		{"date from ISO T text without zone", pgtype.VarcharOID, TypeDate, text("2024-03-01T09:30:00"), "2024-03-01T09:30:00Z"},
		{"date from date text", pgtype.TextOID, TypeDate, text(" 2024-03-01 "), "2024-03-01T00:00:00Z"},
		// text
		{"text as is", pgtype.TextOID, TypeAuto, text("Globex  "), "Globex  "},
		{"uuid", pgtype.UUIDOID, TypeAuto, text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{"interval", pgtype.IntervalOID, TypeAuto, text("1 day 02:00:00"), "1 day 02:00:00"},
		{"money", moneyOID, TypeAuto, text("$1,234.50"), "$1,234.50"},
		{"numeric as string keeps text", pgtype.NumericOID, TypeString, text("12.5000"), "12.5000"},
		{"jsonb as string", pgtype.JSONBOID, TypeString, text(`{"a": 1}`), `{"a": 1}`},
		{"array as string", pgtype.TextArrayOID, TypeString, text(`{a,b}`), `{a,b}`},
		{"empty text", pgtype.TextOID, TypeAuto, text(""), ""},
		// NULL
		{"NULL number", pgtype.Int4OID, TypeAuto, row.Value{Null: true}, nil},
		{"NULL text", pgtype.TextOID, TypeAuto, row.Value{Null: true}, nil},
		{"NULL jsonb as string", pgtype.JSONBOID, TypeString, row.Value{Null: true}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, present, err := convert(t, tt.oid, tt.typ, tt.in)
			require.NoError(t, err)
			require.True(t, present, "key must be present")
			assert.Equal(t, tt.want, got)
			if n, ok := got.(json.Number); ok {
				assert.True(t, json.Valid([]byte(n)), "not a JSON number: %s", n)
			}
		})
	}
}

func TestIdentifyOmitsUnchangedValues(t *testing.T) {
	got, present, err := convert(t, pgtype.TextOID, TypeAuto, row.Value{Unchanged: true})
	require.NoError(t, err)
	assert.False(t, present, "an unchanged TOASTed value must be left out, not sent as null")
	assert.Nil(t, got)
}

func TestIdentifyRowErrors(t *testing.T) {
	tests := []struct {
		name string
		oid  uint32
		typ  Type
		in   string
		want string
	}{
		{"number from text", pgtype.TextOID, TypeNumber, "12 seats", `metadata "k" (column "v"): cannot read "12 seats" as a number`},
		{"number from empty text", pgtype.TextOID, TypeNumber, "", `metadata "k" (column "v"): cannot read "" as a number`},
		{"boolean from text", pgtype.TextOID, TypeBoolean, "maybe", `metadata "k" (column "v"): cannot read "maybe" as a boolean (accepted: true/false, t/f, yes/no, on/off, 1/0)`},
		{"boolean prefix is not enough", pgtype.TextOID, TypeBoolean, "tr", `metadata "k" (column "v"): cannot read "tr" as a boolean (accepted: true/false, t/f, yes/no, on/off, 1/0)`},
		{"date from text", pgtype.TextOID, TypeDate, "next tuesday", `metadata "k" (column "v"): cannot read "next tuesday" as a date (expected RFC 3339 like 2024-03-01T09:30:00Z, or Postgres ISO like 2024-03-01 09:30:00+00)`},
		{"long values are cut", pgtype.TextOID, TypeNumber, strings.Repeat("x", 100), `metadata "k" (column "v"): cannot read "` + strings.Repeat("x", 64) + `"… as a number`},
		{"malformed int from the server", pgtype.Int4OID, TypeAuto, "4x", `metadata "k" (column "v"): cannot decode "4x" as a number: `},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := convert(t, tt.oid, tt.typ, text(tt.in))
			// One bad value costs one key: the key is held back, named
			// with its value.
			var bad BadValues
			require.True(t, errors.As(err, &bad), "want BadValues, got %v", err)
			require.Len(t, bad, 1)
			assert.Equal(t, "k", bad[0].Key)
			assert.Equal(t, `column "v"`, bad[0].Source)
			assert.Equal(t, []string{"k"}, bad.HeldBack())
			if strings.HasSuffix(tt.want, ": ") {
				assert.True(t, strings.HasPrefix(err.Error(), tt.want), err.Error())
			} else {
				assert.Equal(t, tt.want+" (held back: the row's other keys are sent)", err.Error())
			}
		})
	}
}

func TestIdentifyCompanyID(t *testing.T) {
	tests := []struct {
		name    string
		oid     uint32
		in      row.Value
		want    string
		wantErr string
	}{
		{"bigint as a string", pgtype.Int8OID, text("4711"), "4711", ""},
		{"numeric text as is", pgtype.NumericOID, text("4711.0"), "4711.0", ""},
		{"uuid", pgtype.UUIDOID, text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", ""},
		{"NULL", pgtype.Int8OID, row.Value{Null: true}, "", `company_id (column "id"): is NULL; every company needs an id (fix: make the column NOT NULL, or choose another column)`},
		{"empty", pgtype.TextOID, text(""), "", `company_id (column "id"): is empty; every company needs an id (fix: choose a column that always holds one)`},
		{"unchanged", pgtype.TextOID, row.Value{Unchanged: true}, "", `company_id (column "id"): Postgres did not send the value (an unchanged TOASTed value); fix: ALTER TABLE ... REPLICA IDENTITY FULL, or choose a shorter column`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cols := []row.Column{{Name: "id", TypeOID: tt.oid}, {Name: "name", TypeOID: pgtype.TextOID}}
			m, err := Compile(Companies{CompanyID: "id", Metadata: []Field{{Key: "name", Column: "name"}}}, "t", cols)
			require.NoError(t, err)
			out, err := m.Identify([]row.Value{tt.in, text("Globex")})
			if tt.wantErr != "" {
				var re *RowError
				require.True(t, errors.As(err, &re), "want *RowError, got %v", err)
				assert.Equal(t, "", re.Key)
				assert.Equal(t, tt.wantErr, err.Error())
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, out.CompanyID)
		})
	}
}

func TestIdentifyBuildsThePayload(t *testing.T) {
	fields := []Field{
		{Key: "name", Column: "name"},
		{Key: "seats", Column: "seats"},
		{Key: "seats_label", Column: "seats", Type: TypeString},
		{Key: "active", Column: "active"},
		{Key: "signed_up_at", Column: "created_at"},
		{Key: "tags", Column: "tags", Type: TypeString},
		{Key: "plan", Column: "Plan"},
	}
	m, err := Compile(Companies{CompanyID: "id", Metadata: fields}, "public.companies", companiesColumns)
	require.NoError(t, err)
	assert.Equal(t, companiesColumns, m.Columns())

	out, err := m.Identify([]row.Value{
		text("4711"), text("Globex"), text("42"), text(`["a"]`), text("f"),
		text("2024-03-01 09:30:00+00"), text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), {Unchanged: true},
	})
	require.NoError(t, err)
	body, err := json.Marshal(out)
	require.NoError(t, err)
	assert.JSONEq(t, `{"company_id": "4711", "metadata": {"name": "Globex", "seats": 42, "seats_label": "42", "active": false, "signed_up_at": "2024-03-01T09:30:00Z", "tags": "[\"a\"]"}}`, string(body))
	assert.Contains(t, string(body), `"seats":42`, "numbers are sent as JSON numbers")
}

func TestIdentifyMetadataIsAnObjectWhenEveryValueIsUnchanged(t *testing.T) {
	m, err := Compile(Companies{CompanyID: "id", Metadata: []Field{{Key: "name", Column: "name"}}}, "t", companiesColumns[:2])
	require.NoError(t, err)
	out, err := m.Identify([]row.Value{text("1"), {Unchanged: true}})
	require.NoError(t, err)
	body, err := json.Marshal(out)
	require.NoError(t, err)
	assert.Equal(t, `{"company_id":"1","metadata":{}}`, string(body))
}

func TestIdentifyRejectsAValueCountThatDoesNotMatchTheColumns(t *testing.T) {
	m, err := Compile(Companies{CompanyID: "id", Metadata: []Field{{Key: "name", Column: "name"}}}, "t", companiesColumns[:2])
	require.NoError(t, err)
	_, err = m.Identify([]row.Value{text("1")})
	require.EqualError(t, err, "map row: got 1 values for 2 columns; the table's columns changed: compile the mapping again")
	var re *RowError
	assert.False(t, errors.As(err, &re), "a caller bug is not a row problem")
}

func TestColumnsReturnsACopy(t *testing.T) {
	m, err := Compile(Companies{CompanyID: "id", Metadata: []Field{{Key: "name", Column: "name"}}}, "t", companiesColumns[:2])
	require.NoError(t, err)
	m.Columns()[0].Name = "changed"
	assert.Equal(t, "id", m.Columns()[0].Name)
}

func TestIdentifyIsSafeForConcurrentUse(t *testing.T) {
	fields := []Field{
		{Key: "seats", Column: "seats"},
		{Key: "active", Column: "active"},
		{Key: "created", Column: "created_at"},
		{Key: "n", Column: "name", Type: TypeNumber},
		{Key: "d", Column: "Plan", Type: TypeDate},
	}
	m, err := Compile(Companies{CompanyID: "id", Metadata: fields}, "t", companiesColumns)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				_, err := m.Identify([]row.Value{text("1"), text("42"), text("42"), text("{}"), text("t"), text("2024-03-01 09:30:00+00"), text("x"), text("2024-03-01")})
				assert.NoError(t, err)
			}
		}()
	}
	wg.Wait()
}

func TestCompaniesColumnsListsEachMappedColumnOnce(t *testing.T) {
	c := Companies{CompanyID: "id", Metadata: []Field{
		{Key: "name", Column: "name"},
		{Key: "seats", Column: "seat_count"},
		{Key: "seats_label", Column: "seat_count", Type: TypeString},
		{Key: "external_id", Column: "id"},
	}}
	assert.Equal(t, []string{"id", "name", "seat_count"}, c.Columns())
}
