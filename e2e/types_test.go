package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// typeCase is one column of the type-torture table: its SQL type, how the
// mapping reads it, and per row the SQL value and the exact JSON value
// Userpilot must receive (mapping/doc.go, "Values").
type typeCase struct {
	column, sqlType string
	typ             string // the mapping's type:, "" for none
	needs           string // an extension the column needs
	rows            []typeValue
}

// typeValue is one value: SQL to insert ("" is NULL), and the JSON value
// received: json.Number, string, bool, or nil for null.
type typeValue struct {
	sql  string
	want any
}

func num(s string) json.Number { return json.Number(s) }

// megabyte is a 1 MB text value of 4-byte and 2-byte characters.
var megabyte = strings.Repeat("𝄞é", 1<<20/6)

const controlChars = "\x01\x07\x08\x0b\x0c\x1b\x1f\x7f"

// typeCases are the common Postgres types, each row a value a production
// table holds. Row 4 holds the extremes.
var typeCases = []typeCase{
	{column: "i2", sqlType: "int2", rows: []typeValue{{"-32768", num("-32768")}, {"32767", num("32767")}, {"0", num("0")}, {"", nil}}},
	{column: "i4", sqlType: "int4", rows: []typeValue{{"-2147483648", num("-2147483648")}, {"2147483647", num("2147483647")}}},
	{column: "i8", sqlType: "int8", rows: []typeValue{{"-9223372036854775808", num("-9223372036854775808")}, {"9223372036854775807", num("9223372036854775807")}}},
	{column: "o", sqlType: "oid", rows: []typeValue{{"4294967295", num("4294967295")}}},
	{column: "n", sqlType: "numeric", rows: []typeValue{
		{"12345678901234567890123456789012345678", num("12345678901234567890123456789012345678")},
		{"'NaN'", nil}, {"'Infinity'", nil}, {"'-Infinity'", nil}}},
	{column: "n_small", sqlType: "numeric", rows: []typeValue{
		{"0.000000000000000000001", num("0.000000000000000000001")}, {"-1.50", num("-1.50")}, {"1e30", num("1000000000000000000000000000000")}, {"0", num("0")}}},
	{column: "n38", sqlType: "numeric(38,10)", typ: "number", rows: []typeValue{
		{"1234567890123456789012345678.0123456789", num("1234567890123456789012345678.0123456789")}, {"-0.0000000001", num("-0.0000000001")}, {"0", num("0.0000000000")}}},
	{column: "f4", sqlType: "float4", rows: []typeValue{{"3.14", num("3.14")}, {"'NaN'", nil}, {"'-Infinity'", nil}, {"1e-45", num("1e-45")}}},
	{column: "f8", sqlType: "float8", rows: []typeValue{{"0.1", num("0.1")}, {"'Infinity'", nil}, {"'NaN'", nil}, {"5e-324", num("5e-324")}}},
	{column: "f8_big", sqlType: "float8", rows: []typeValue{{"1e300", num("1e+300")}, {"123456789012345678901", num("123456789012345680000")}, {"1e21", num("1e+21")}, {"-0.000001", num("-0.000001")}}},
	{column: "mon", sqlType: "money", rows: []typeValue{{"12.34", "$12.34"}, {"-92233720368547758.08", "-$92,233,720,368,547,758.08"}}},
	{column: "b", sqlType: "bool", rows: []typeValue{{"true", true}, {"false", false}}},
	{column: "b_str", sqlType: "bool", typ: "string", rows: []typeValue{{"true", "true"}, {"false", "false"}}},
	{column: "t", sqlType: "text", rows: []typeValue{
		{"'Zürich 株式会社 🚀 𝄞'", "Zürich 株式会社 🚀 𝄞"},
		{"E'" + `\x01\x07\x08\x0b\x0c\x1b\x1f\x7f` + "'", controlChars},
		{"'quote \" backslash \\ tab\t newline\n'", "quote \" backslash \\ tab\t newline\n"},
		{"'" + megabyte + "'", megabyte}}},
	{column: "t_empty", sqlType: "text", rows: []typeValue{{"''", ""}, {"' '", " "}, {"'\u2028\u2029'", "\u2028\u2029"}, {"'<script>&'", "<script>&"}}},
	{column: "vc", sqlType: "varchar(20)", rows: []typeValue{{"'varchar'", "varchar"}}},
	{column: "ch", sqlType: "char(5)", rows: []typeValue{{"'ab'", "ab   "}}},
	{column: "qch", sqlType: `"char"`, rows: []typeValue{{"'x'", "x"}}},
	{column: "nm", sqlType: "name", rows: []typeValue{{"'a_name'", "a_name"}}},
	{column: "ci", sqlType: "citext", needs: "citext", rows: []typeValue{{"'MiXeD Case'", "MiXeD Case"}}},
	{column: "u", sqlType: "uuid", rows: []typeValue{{"'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}}},
	{column: "ip", sqlType: "inet", rows: []typeValue{{"'192.168.0.1/24'", "192.168.0.1/24"}, {"'::1'", "::1"}, {"'10.0.0.1'", "10.0.0.1"}}},
	{column: "net", sqlType: "cidr", rows: []typeValue{{"'10.0.0.0/8'", "10.0.0.0/8"}, {"'2001:db8::/32'", "2001:db8::/32"}}},
	{column: "mac", sqlType: "macaddr", rows: []typeValue{{"'08-00-2B-01-02-03'", "08:00:2b:01:02:03"}}},
	{column: "d", sqlType: "date", rows: []typeValue{
		{"'2024-02-29'", "2024-02-29T00:00:00Z"}, {"'infinity'", nil}, {"'0044-03-15 BC'", nil}, {"'0001-01-01'", "0001-01-01T00:00:00Z"}}},
	{column: "tm", sqlType: "time", rows: []typeValue{{"'13:45:59.123456'", "13:45:59.123456"}, {"'24:00:00'", "24:00:00"}}},
	{column: "tmtz", sqlType: "timetz", rows: []typeValue{{"'13:45:00+05:30'", "13:45:00+05:30"}}},
	{column: "ts", sqlType: "timestamp", rows: []typeValue{
		{"'2024-03-01 09:30:00.5'", "2024-03-01T09:30:00.5Z"}, {"'-infinity'", nil}, {"'10000-01-01 00:00'", nil}, {"'2000-01-01 00:00:00.000001'", "2000-01-01T00:00:00.000001Z"}}},
	{column: "tstz", sqlType: "timestamptz", rows: []typeValue{
		{"'2024-03-01 10:30:00+01'", "2024-03-01T09:30:00Z"}, {"'infinity'", nil}, {"'0044-03-15 12:00:00+00 BC'", nil}, {"'1969-12-31 23:59:59.999999+00'", "1969-12-31T23:59:59.999999Z"}}},
	{column: "tstz_date", sqlType: "timestamptz", typ: "date", rows: []typeValue{{"'9999-12-31 23:59:59+00'", "9999-12-31T23:59:59Z"}, {"'9999-12-31 23:00:00-05'", nil}}},
	{column: "iv", sqlType: "interval", rows: []typeValue{{"'1 year 2 months 3 days 04:05:06.789'", "1 year 2 mons 3 days 04:05:06.789"}, {"'-1 day'", "-1 days"}}},
	{column: "by", sqlType: "bytea", typ: "string", rows: []typeValue{{`'\x00ff10'`, `\x00ff10`}, {"''", `\x`}}},
	{column: "js", sqlType: "json", typ: "string", rows: []typeValue{{`'{"b": 1,  "a": [1,2]}'`, `{"b": 1,  "a": [1,2]}`}}},
	{column: "jsb", sqlType: "jsonb", typ: "string", rows: []typeValue{{`'{"b": 1, "a": [1,2]}'`, `{"a": [1, 2], "b": 1}`}, {`'"just a string"'`, `"just a string"`}}},
	{column: "arr", sqlType: "int[]", typ: "string", rows: []typeValue{{"'{1,2,NULL}'", "{1,2,NULL}"}}},
	{column: "tarr", sqlType: "text[]", typ: "string", rows: []typeValue{{`ARRAY['a b', 'c"d']`, `{"a b","c\"d"}`}}},
	{column: "e", sqlType: "mood", rows: []typeValue{{"'happy 😀'", "happy 😀"}, {"'sad'", "sad"}}},
	{column: "dom", sqlType: "posint", rows: []typeValue{{"42", num("42")}}},
	{column: "dem", sqlType: "email", needs: "citext", rows: []typeValue{{"'A@B.com'", "A@B.com"}}},
	{column: "comp", sqlType: "pair", typ: "string", rows: []typeValue{{"ROW(1, 'x y')", `(1,"x y")`}}},
	{column: "rng", sqlType: "int4range", typ: "string", rows: []typeValue{{"'[1,10)'", "[1,10)"}, {"'empty'", "empty"}}},
	{column: "tnum", sqlType: "text", typ: "number", rows: []typeValue{{"' 1.50 '", num("1.50")}, {"'1e3'", num("1000")}, {"'-0.000000000000000000000000000000000000001'", num("-0.000000000000000000000000000000000000001")}}},
	{column: "tbool", sqlType: "text", typ: "boolean", rows: []typeValue{{"'YES'", true}, {"' off '", false}, {"'1'", true}}},
	{column: "tdate", sqlType: "varchar", typ: "date", rows: []typeValue{{"'2024-03-01T09:30:00+02:00'", "2024-03-01T07:30:00Z"}, {"'2024-03-01'", "2024-03-01T00:00:00Z"}, {"'2024-03-01 09:30:00'", "2024-03-01T09:30:00Z"}}},
}

const typeTortureTypes = `
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy 😀');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
`

// tortureRows is how many ordinary rows the cases fill.
func tortureRows(cases []typeCase) int {
	n := 0
	for _, c := range cases {
		n = max(n, len(c.rows))
	}
	return n
}

// insertTorture inserts the ordinary rows with company ids prefix-1…,
// then rows that cannot be mapped: a NULL and an empty company_id, and a
// value that is not a number under type: number.
func insertTorture(t *testing.T, conn *pgx.Conn, cases []typeCase, prefix string) {
	t.Helper()
	ctx := context.Background()
	cols := []string{"cid"}
	for _, c := range cases {
		cols = append(cols, c.column)
	}
	for r := range tortureRows(cases) {
		vals := []string{fmt.Sprintf("'%s-%d'", prefix, r+1)}
		for _, c := range cases {
			v := "NULL"
			if r < len(c.rows) && c.rows[r].sql != "" {
				v = c.rows[r].sql
			}
			vals = append(vals, v)
		}
		_, err := conn.Exec(ctx, fmt.Sprintf("INSERT INTO torture (%s) VALUES (%s)", strings.Join(cols, ", "), strings.Join(vals, ", ")))
		require.NoError(t, err, "row %d", r+1)
	}
	_, err := conn.Exec(ctx, `INSERT INTO torture (cid, i4) VALUES (NULL, 1), ('', 2)`)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `INSERT INTO torture (cid, tnum) VALUES ($1, 'twelve')`, prefix+"-not-a-number")
	require.NoError(t, err)
}

// tortureConfig is a config for the torture table with mapping lines.
func tortureConfig(e *env, mapping string) string {
	header := strings.TrimSuffix(workload.Config(e.url, e.slot(), e.up.URL(), apiKey, e.stateDir, 2000), workload.Mapping)
	return header + "companies:\n  table: public.torture\n" + mapping
}

// TestEveryCommonTypeArrivesAsDocumented maps a column of every common
// Postgres type, with and without type:, and checks the exact JSON value
// Userpilot received, for rows read by the initial snapshot and rows read
// from the stream alike. Rows that cannot be mapped (NULL or empty
// company_id, text that is not a number) are set aside, not fatal.
func TestEveryCommonTypeArrivesAsDocumented(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	ctx := context.Background()
	cases := typeCases
	var citext bool
	require.NoError(t, e.conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'citext')`).Scan(&citext))
	ddl := typeTortureTypes
	if citext {
		ddl = "CREATE EXTENSION citext;\nCREATE DOMAIN email AS citext;\n" + ddl
	} else {
		t.Log("citext is not installed here: its columns are left out")
		cases = nil
		for _, c := range typeCases {
			if c.needs == "" {
				cases = append(cases, c)
			}
		}
	}
	var cols, mapping []string
	for _, c := range cases {
		cols = append(cols, fmt.Sprintf("%s %s", c.column, c.sqlType))
		if c.typ == "" {
			mapping = append(mapping, fmt.Sprintf("    %s: %s", c.column, c.column))
		} else {
			mapping = append(mapping, fmt.Sprintf("    %s: {column: %s, type: %s}", c.column, c.column, c.typ))
		}
	}
	_, err := e.conn.Exec(ctx, ddl+fmt.Sprintf("CREATE TABLE torture (pk serial PRIMARY KEY, cid text, %s);", strings.Join(cols, ", ")))
	require.NoError(t, err)
	// money's text depends on lc_monetary: the test asks the server.
	for i, c := range cases {
		if c.sqlType != "money" {
			continue
		}
		for r, v := range c.rows {
			var s string
			require.NoError(t, e.conn.QueryRow(ctx, "SELECT ("+v.sql+")::money::text").Scan(&s))
			cases[i].rows[r].want = s
		}
	}
	e.writeConfig(tortureConfig(e, "  company_id: cid\n  metadata:\n"+strings.Join(mapping, "\n")+"\n"))

	insertTorture(t, e.conn, cases, "snapshot")
	p := e.run()
	rows := tortureRows(cases)
	waitCompanies := func(prefix string) {
		t.Helper()
		require.Eventually(t, func() bool {
			for r := range rows {
				if _, ok := e.up.Company(fmt.Sprintf("%s-%d", prefix, r+1)); !ok {
					return false
				}
			}
			return true
		}, 60*time.Second, 20*time.Millisecond, "the %s rows arrive", prefix)
	}
	waitCompanies("snapshot")
	insertTorture(t, e.conn, cases, "stream")
	waitCompanies("stream")

	applied := map[string]map[string]any{}
	for _, a := range e.up.Applied() {
		applied[a.CompanyID] = a.Metadata
	}
	for _, prefix := range []string{"snapshot", "stream"} {
		for r := range rows {
			id := fmt.Sprintf("%s-%d", prefix, r+1)
			got := applied[id]
			require.NotNil(t, got, id)
			assert.Len(t, got, len(cases), "%s: one key per mapped column, nulls included", id)
			for _, c := range cases {
				want := any(nil)
				sql := "NULL"
				if r < len(c.rows) && c.rows[r].sql != "" {
					want, sql = c.rows[r].want, c.rows[r].sql
				}
				v, ok := got[c.column]
				if !assert.True(t, ok, "%s: key %s missing", id, c.column) {
					continue
				}
				assert.Equal(t, want, v, "%s: %s %s (type: %q) = %s", id, c.column, c.sqlType, c.typ, short(sql))
			}
		}
	}

	// Unmappable rows: set aside with the reason, the stream went on.
	require.Eventually(t, func() bool { return strings.Count(readFile(e.stateDir+"/"+state.DeadLetterFile), "\n") >= 6 },
		30*time.Second, 20*time.Millisecond, "six rows set aside")
	require.True(t, p.running(), "bad rows never stop pgpilot")
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
	var reasons []string
	for _, l := range strings.Split(strings.TrimSpace(readFile(e.stateDir+"/"+state.DeadLetterFile)), "\n") {
		var dl state.DeadLetter
		require.NoError(t, json.Unmarshal([]byte(l), &dl))
		assert.Equal(t, 0, dl.Status, "never sent: %s", l)
		reasons = append(reasons, dl.CompanyID+": "+dl.Reason)
	}
	all := strings.Join(reasons, "\n")
	assert.Equal(t, 2, strings.Count(all, `not mapped: company_id (column "cid"): is NULL`), all)
	assert.Equal(t, 2, strings.Count(all, `not mapped: company_id (column "cid"): is empty`), all)
	assert.Equal(t, 2, strings.Count(all, `not mapped: metadata "tnum" (column "tnum"): cannot read "twelve" as a number`), all)
}

// TestRowWithAnUnreadableValueIsSetAsideUnderItsCompanyID: when the
// company_id is fine but a value is not (text that is not a number under
// type: number), the dead letter must say which company it was.
func TestRowWithAnUnreadableValueIsSetAsideUnderItsCompanyID(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	ctx := context.Background()
	_, err := e.conn.Exec(ctx, `CREATE TABLE torture (pk serial PRIMARY KEY, cid text, tnum text); INSERT INTO torture (cid, tnum) VALUES ('acme', 'twelve'), ('globex', '12')`)
	require.NoError(t, err)
	e.writeConfig(tortureConfig(e, "  company_id: cid\n  metadata:\n    tnum: {column: tnum, type: number}\n"))
	p := e.run()
	require.Eventually(t, func() bool { _, ok := e.up.Company("globex"); return ok }, 60*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool { return strings.Contains(readFile(e.stateDir+"/"+state.DeadLetterFile), "\n") }, 30*time.Second, 20*time.Millisecond)
	var dl state.DeadLetter
	require.NoError(t, json.Unmarshal([]byte(readFile(e.stateDir+"/"+state.DeadLetterFile)), &dl))
	assert.Equal(t, "acme", dl.CompanyID, "the dead letter names the company whose row could not be mapped")
	p.stop(t)
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func short(s string) string {
	if len(s) > 50 {
		return fmt.Sprintf("%s…(%d bytes)", s[:40], len(s))
	}
	return s
}

// TestMappingThatCannotProduceAPrimitiveIsRefusedAtStart maps columns that
// cannot become a Userpilot value (structured types without type: string,
// and type: conversions no row could satisfy): run and preview refuse with
// exit 2 and check fails, each naming every key, its column and line, before
// anything is created or sent.
func TestMappingThatCannotProduceAPrimitiveIsRefusedAtStart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	ctx := context.Background()
	_, err := e.conn.Exec(ctx, typeTortureTypes+`CREATE TABLE torture (pk serial PRIMARY KEY, cid text, js json, jsb jsonb, by bytea,
		arr int[], comp pair, rng int4range, pt point, u uuid, iv interval, mon money, b bool, i4 int4, ts timestamp, tstz timestamptz)`)
	require.NoError(t, err)
	refused := []struct{ key, column, why string }{
		{"js_auto", "js", "is json, which is not a primitive value"},
		{"jsb_auto", "jsb", "is jsonb, which is not a primitive value"},
		{"by_auto", "by", "is bytea, which is not a primitive value"},
		{"arr_auto", "arr", "is integer[], which is not a primitive value"},
		{"comp_auto", "comp", "is pair, which is not a primitive value"},
		{"rng_auto", "rng", "is int4range, which is not a primitive value"},
		{"pt_auto", "pt", "is point, which is not a primitive value"},
		{"u_number", "u", "is uuid, which cannot be sent as a number"},
		{"iv_date", "iv", "is interval, which cannot be sent as a date"},
		{"mon_number", "mon", "is money, which cannot be sent as a number"},
		{"b_date", "b", "is boolean, which cannot be sent as a date"},
		{"i4_boolean", "i4", "is integer, which cannot be sent as a boolean"},
		{"ts_number", "ts", "is timestamp without time zone, which cannot be sent as a number"},
		{"jsb_number", "jsb", "is jsonb, which cannot be sent as a number"},
	}
	lines := []string{"  company_id: jsb", "  metadata:"}
	for _, r := range refused {
		typ := r.key[strings.LastIndex(r.key, "_")+1:]
		if typ == "auto" {
			lines = append(lines, fmt.Sprintf("    %s: %s", r.key, r.column))
		} else {
			lines = append(lines, fmt.Sprintf("    %s: {column: %s, type: %s}", r.key, r.column, typ))
		}
	}
	lines = append(lines, "    fine: tstz")
	cfg := tortureConfig(e, strings.Join(lines, "\n")+"\n")
	e.writeConfig(cfg)
	lineOf := func(key string) int {
		for i, l := range strings.Split(cfg, "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), key+":") {
				return i + 1
			}
		}
		return 0
	}

	for _, cmd := range []struct {
		args []string
		code int
	}{
		{[]string{"run", "--config", e.cfgPath}, 2},
		{[]string{"preview", "--config", e.cfgPath}, 2},
		{[]string{"check", "--config", e.cfgPath}, 2},
	} {
		c := e.pgpilot(cmd.args...)
		assert.Equal(t, cmd.code, c.wait(t, 60*time.Second), "pgpilot %s", cmd.args[0])
		out := strings.ReplaceAll(c.out.String(), `\"`, `"`) // run logs JSON
		assert.Contains(t, out, fmt.Sprintf(`pgpilot.yaml:%d: company_id: column "jsb" is jsonb, which cannot identify a company`, lineOf("company_id")), "pgpilot %s", cmd.args[0])
		for _, r := range refused {
			assert.Contains(t, out, fmt.Sprintf(`pgpilot.yaml:%d: metadata "%s": column "%s" %s`, lineOf(r.key), r.key, r.column, r.why), "pgpilot %s", cmd.args[0])
		}
		assert.NotContains(t, out, `"fine"`, "a good key is not reported")
	}
	assert.Empty(t, e.slotsOfDatabase(), "nothing was created")
	assert.Zero(t, e.up.IdentifyRequests(), "nothing was sent")
	_, err = os.Stat(filepath.Join(e.stateDir, state.CheckpointFile))
	assert.ErrorIs(t, err, os.ErrNotExist)
}
