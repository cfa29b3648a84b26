package mapping

import (
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fastConverters compiles a one-key mapping for every column type and
// requested type that has a fast path.
func fastConverters(t testing.TB) map[string]converter {
	t.Helper()
	out := map[string]converter{}
	for _, c := range []struct {
		name string
		oid  uint32
		typ  Type
	}{
		{"text", pgtype.TextOID, TypeAuto},
		{"int2", pgtype.Int2OID, TypeAuto}, {"int4", pgtype.Int4OID, TypeAuto}, {"int8", pgtype.Int8OID, TypeAuto},
		{"int4 as number", pgtype.Int4OID, TypeNumber},
		{"numeric", pgtype.NumericOID, TypeAuto}, {"numeric as number", pgtype.NumericOID, TypeNumber},
		{"bool", pgtype.BoolOID, TypeAuto}, {"bool as string", pgtype.BoolOID, TypeString},
		{"date", pgtype.DateOID, TypeAuto}, {"timestamp", pgtype.TimestampOID, TypeAuto},
		{"timestamptz", pgtype.TimestamptzOID, TypeAuto}, {"timestamptz as date", pgtype.TimestamptzOID, TypeDate},
		{"text as number", pgtype.TextOID, TypeNumber}, {"text as date", pgtype.TextOID, TypeDate},
	} {
		m, err := Compile(Companies{CompanyID: "id", Metadata: []Field{{Key: "k", Column: "v", Type: c.typ}}}, "t",
			[]row.Column{{Name: "id", TypeOID: pgtype.TextOID}, {Name: "v", TypeOID: c.oid}})
		require.NoError(t, err, c.name)
		out[c.name] = m.fields[0].converter
	}
	return out
}

// checkFastMatchesDecode fails when the fast path gives anything but what
// the long way gives for text.
func checkFastMatchesDecode(t *testing.T, name string, c converter, text []byte) (fast bool) {
	t.Helper()
	// The JSON written straight from the text is the long way's, encoded.
	if raw, ok := c.fastJSON(text); ok {
		v, err := c.decode(text)
		if err != nil {
			t.Fatalf("%s: fast JSON took %q, which the long way refuses: %v", name, text, err)
		}
		want, err := userpilot.Encode(v)
		if err != nil || string(raw) != string(want) {
			t.Fatalf("%s: %q: fast JSON gives %s, the long way %s (%v)", name, text, raw, want, err)
		}
	}
	got, ok := c.fast(text)
	if !ok {
		return false
	}
	want, err := c.decode(text)
	if err != nil {
		t.Fatalf("%s: fast path took %q, which the long way refuses: %v", name, text, err)
	}
	if got != want {
		t.Fatalf("%s: %q: fast path gives %#v, the long way %#v", name, text, got, want)
	}
	return true
}

func TestFastPathsMatchTheLongWay(t *testing.T) {
	convs := fastConverters(t)
	// Each text is in Postgres's canonical output form for the column
	// types listed (the fast path must take it) or not (it must leave it).
	for _, tc := range []struct {
		text string
		fast []string // column types whose converters must take the fast path
	}{
		{"0", []string{"int2", "int4", "int8", "numeric"}},
		{"-1", []string{"int2", "int4", "int8", "numeric"}},
		{"32767", []string{"int2", "int4", "int8", "numeric"}},
		{"-32768", []string{"int2", "int4", "int8", "numeric"}},
		{"32768", []string{"int4", "int8", "numeric"}},
		{"2147483648", []string{"int8", "numeric"}},
		{"-9223372036854775808", []string{"int8", "numeric"}},
		{"9223372036854775808", []string{"numeric"}},
		{"0.00", []string{"numeric"}},
		{"-0.5", []string{"numeric"}},
		{"0.0500", []string{"numeric"}},
		{"123.4500", []string{"numeric"}},
		{"100", []string{"int2", "int4", "int8", "numeric"}},
		{"-100.10", []string{"numeric"}},
		{"1523447.0400000000", []string{"numeric"}},
		{"1234567890123456789012345678.1234567890", []string{"numeric"}},
		{"-0", nil}, {"-0.00", nil}, {"007", nil}, {"00.5", nil}, {".5", nil}, {"5.", nil}, {"+5", nil},
		{" 1", nil}, {"1 ", nil}, {"1e5", nil}, {"1.5e3", nil}, {"NaN", nil}, {"Infinity", nil}, {"-Infinity", nil},
		{"", nil}, {"-", nil}, {"1-2", nil}, {"1..2", nil}, {"0x10", nil},
		{"t", []string{"bool"}},
		{"f", []string{"bool"}},
		{"true", nil}, {"false", nil}, {"T", nil}, {"tt", nil}, {"1", []string{"int2", "int4", "int8", "numeric"}},
		{"2024-03-01", []string{"date"}},
		{"2024-02-29", []string{"date"}},
		{"0001-01-01", []string{"date"}},
		{"9999-12-31", []string{"date"}},
		{"2023-02-29", nil}, {"2024-13-01", nil}, {"2024-00-10", nil}, {"2024-04-31", nil}, {"0000-01-01", nil},
		{"10000-01-01", nil}, {"2024-03-01 BC", nil}, {"infinity", nil}, {"-infinity", nil}, {"2024-3-1", nil},
		{"2024-03-01 09:30:00", []string{"timestamp"}},
		{"2024-03-01 09:30:00.5", []string{"timestamp"}},
		{"2024-03-01 23:59:59.999999", []string{"timestamp"}},
		{"2024-03-01 09:30:00.120000", []string{"timestamp"}},
		{"2024-03-01 09:30:00.000000", []string{"timestamp"}},
		{"2024-03-01 09:30:00+00", []string{"timestamptz"}},
		{"2024-03-01 09:30:00.123456+00", []string{"timestamptz"}},
		{"1900-02-28 00:00:00+00", []string{"timestamptz"}},
		{"2024-03-01 09:30:00.1234567+00", nil}, {"2024-03-01 09:30:00.9999999", nil},
		{"2024-03-01 09:30:00+02", nil}, {"2024-03-01 09:30:00+00:00", nil}, {"2024-03-01 09:30:00-00", nil},
		{"2024-03-01 09:30:00Z", nil}, {"2024-03-01T09:30:00+00", nil}, {"2024-03-01 24:00:00", nil},
		{"2024-03-01 23:59:60", nil}, {"2024-03-01 09:60:00", nil}, {"2024-03-01 09:30", nil},
		{"2024-03-01 09:30:00.", nil}, {"2024-03-01 09:30:00.+00", nil}, {"0044-03-15 12:00:00+00 BC", nil},
		{"2024-03-01 09:30:00+00 ", nil},
	} {
		for name, c := range convs {
			took := checkFastMatchesDecode(t, name, c, []byte(tc.text))
			want := slices.Contains(tc.fast, strings.Fields(name)[0]) // "int4 as number" is an int4
			assert.Equal(t, want, took, "%s: fast path for %q", name, tc.text)
		}
	}
}

// FuzzFastPaths checks, for any text, that a fast path gives exactly what
// the long way gives, or leaves the text to it.
func FuzzFastPaths(f *testing.F) {
	for _, s := range []string{"0", "-12.500", "t", "2024-02-29", "2024-03-01 09:30:00.5+00", "2024-03-01 09:30:00", "-0.0", "1e3",
		"2024-03-01T09:30:00Z", "2024-03-01T09:30:00.120Z", "741.00"} {
		f.Add([]byte(s))
	}
	convs := fastConverters(f)
	f.Fuzz(func(t *testing.T, text []byte) {
		for name, c := range convs {
			checkFastMatchesDecode(t, name, c, text)
		}
	})
}

func TestARowOfTheBenchmarkTableAllocatesAboutOncePerValue(t *testing.T) {
	m, err := Compile(Companies{CompanyID: "id", Metadata: []Field{
		{Key: "name", Column: "name"}, {Key: "plan", Column: "plan"}, {Key: "seats", Column: "seats"},
		{Key: "monthly_spend", Column: "monthly_spend", Type: TypeNumber}, {Key: "trial", Column: "trial"},
		{Key: "created_at", Column: "created_at", Type: TypeDate}, {Key: "notes", Column: "notes"},
	}}, "public.companies", benchColumns)
	require.NoError(t, err)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := m.Identify(benchRow); err != nil {
			t.Fatal(err)
		}
	})
	// company_id, the map (2), and a string and its interface for each of
	// name, plan, seats, monthly_spend and created_at; trial and a NULL
	// notes cost nothing. Before the fast paths: 29.
	assert.LessOrEqual(t, allocs, 13.0)
}
