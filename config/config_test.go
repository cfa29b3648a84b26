package config

import (
	"errors"
	"github.com/pgpilot/pgpilot/mapping"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	testURL    = "postgres://pgpilot:hunter2-db-pass@db.internal:5432/app"
	testAPIKey = "up-key-7f3a9c0e1d2b"
)

// env is a lookupEnv over a fixed map.
func env(vars map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

func baseEnv() map[string]string {
	return map[string]string{"DATABASE_URL": testURL, "USERPILOT_API_KEY": testAPIKey}
}

// problems returns the messages of all *ConfigErrors in err.
func problems(t *testing.T, err error) []string {
	t.Helper()
	var out []string
	for _, p := range fixedProblems(t, err) {
		out = append(out, p.msg)
	}
	return out
}

// fixedProblems returns each *ConfigError in err as its message and, apart,
// its fix.
func fixedProblems(t *testing.T, err error) []problem {
	t.Helper()
	require.Error(t, err)
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	var out []problem
	for _, e := range errs {
		var ce *mapping.ConfigError
		require.True(t, errors.As(e, &ce), "not a *ConfigError: %v", e)
		out = append(out, problem{ce.Error(), ce.Fix})
	}
	return out
}

const minimal = `postgres:
  url: ${DATABASE_URL}
userpilot:
  api_key: ${USERPILOT_API_KEY}
companies:
  table: companies
  company_id: id
  metadata:
    name: name
`

func TestParseMinimalFileAppliesDefaults(t *testing.T) {
	cfg, err := Parse("conf/pgpilot.yaml", []byte(minimal), env(baseEnv()))
	require.NoError(t, err)
	assert.Equal(t, &Config{
		Path:      "conf/pgpilot.yaml",
		Postgres:  Postgres{URL: testURL, Slot: "pgpilot", Publication: "pgpilot"},
		Userpilot: Userpilot{APIKey: testAPIKey, Endpoint: "https://analytex.userpilot.io", RateLimit: 10, BulkRate: 20},
		State:     State{Dir: filepath.Join("conf", "pgpilot-state")},
		Delivery:  Delivery{MaxRetainedWAL: 256 << 20, OutboxAfter: 5 * time.Minute, WarnRetainedWAL: 1 << 30, SnapshotChunkRows: 2000, StallAfter: time.Minute},
		HTTP:      HTTP{UnreadyAfter: 5 * time.Minute},
		Companies: mapping.Companies{
			OnDelete: mapping.OnDeleteIgnore,
			Table:    "companies", Schema: "public", Name: "companies", CompanyID: "id",
			Metadata:      []mapping.Field{{Key: "name", Column: "name", Line: 9}},
			File:          "conf/pgpilot.yaml",
			CompanyIDLine: 7,
		},
	}, cfg)
}

func TestParseFullFile(t *testing.T) {
	data := `postgres:
  url: host=db dbname=app password=${PGPASSWORD}
  slot: pgpilot_prod
  publication: "Pgpilot Pub"
userpilot:
  api_key: ${USERPILOT_API_KEY}
  endpoint: https://analytex-us.userpilot.io/
  rate_limit: 2.5
state:
  dir: /var/lib/pgpilot
companies:
  table: '"My Schema"."Companies"'
  company_id: id
  metadata:
    name: name
    seats: {column: seat_count, type: number}
    seats_text: {column: seat_count, type: string}
    active: {column: active}
    signed_up: {column: created, type: date}
    flag: {column: flag, type: boolean}
`
	vars := baseEnv()
	vars["PGPASSWORD"] = "pw"
	cfg, err := Parse("/etc/pgpilot.yaml", []byte(data), env(vars))
	require.NoError(t, err)
	assert.Equal(t, Postgres{URL: "host=db dbname=app password=pw", Slot: "pgpilot_prod", Publication: "Pgpilot Pub"}, cfg.Postgres)
	assert.Equal(t, Userpilot{APIKey: testAPIKey, Endpoint: "https://analytex-us.userpilot.io", RateLimit: 2.5, BulkRate: userpilot.DefaultBulkRate}, cfg.Userpilot)
	assert.Equal(t, State{Dir: "/var/lib/pgpilot"}, cfg.State)
	assert.Equal(t, "My Schema", cfg.Companies.Schema)
	assert.Equal(t, "Companies", cfg.Companies.Name)
	assert.Equal(t, `"My Schema"."Companies"`, cfg.Companies.Table)
	assert.Equal(t, []mapping.Field{
		{Key: "name", Column: "name", Line: 15},
		{Key: "seats", Column: "seat_count", Type: mapping.TypeNumber, Line: 16},
		{Key: "seats_text", Column: "seat_count", Type: mapping.TypeString, Line: 17},
		{Key: "active", Column: "active", Line: 18},
		{Key: "signed_up", Column: "created", Type: mapping.TypeDate, Line: 19},
		{Key: "flag", Column: "flag", Type: mapping.TypeBoolean, Line: 20},
	}, cfg.Companies.Metadata)
}

// replaceLine swaps line n (1-based) of minimal for repl (which may span lines).
func replaceLine(n int, repl string) string {
	lines := strings.Split(minimal, "\n")
	lines[n-1] = repl
	return strings.Join(lines, "\n")
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		data string
		env  map[string]string // added to baseEnv; a "-" value unsets
		want []problem
	}{
		{
			name: "unknown top-level key",
			data: minimal + "postgress:\n  url: x\n",
			want: []problem{{`p.yaml:10: postgress: unknown key "postgress"; allowed: postgres, userpilot, state, delivery, http, companies, users`, ""}},
		},
		{
			name: "unknown nested key",
			data: replaceLine(2, "  url: ${DATABASE_URL}\n  slots: pgpilot"),
			want: []problem{{`p.yaml:3: postgres.slots: unknown key "slots"; allowed: url, slot, publication, failover_slot`, ""}},
		},
		{
			name: "unknown key inside a metadata entry",
			data: minimal + "    seats: {column: seat_count, kind: number}\n",
			want: []problem{{`p.yaml:10: companies.metadata.seats.kind: unknown key "kind"; allowed: column, path, sql, type, values, default, on_null, pii`, ""}},
		},
		{
			name: "unknown state key",
			data: minimal + "state:\n  directory: x\n",
			want: []problem{{`p.yaml:11: state.directory: unknown key "directory"; allowed: dir`, ""}},
		},
		{
			name: "duplicate top-level key",
			data: minimal + "postgres:\n  url: x\n",
			want: []problem{{`p.yaml:10: postgres: duplicate key (first at line 1)`, `keep one of them`}},
		},
		{
			name: "duplicate metadata key",
			data: minimal + "    name: company_name\n",
			want: []problem{{`p.yaml:10: companies.metadata.name: duplicate key (first at line 9)`, `keep one of them`}},
		},
		{
			name: "missing required keys",
			data: "postgres:\n  slot: s\nuserpilot:\n  endpoint: eu\ncompanies:\n  metadata:\n    name: name\n",
			want: []problem{
				{`p.yaml:1: postgres.url: missing`, `write url: ${DATABASE_URL} (a libpq URL or key=value string)`},
				{`p.yaml:3: userpilot.api_key: missing`, `write api_key: ${USERPILOT_API_KEY}, or api_key_file: /path/to/secret`},
				{`p.yaml:5: companies.table: missing`, `write table: public.companies (the table to mirror)`},
				{`p.yaml:5: companies.company_id: missing`, `write company_id: id (the column holding the company's id)`},
			},
		},
		{
			name: "missing sections",
			data: "state:\n  dir: x\n",
			want: []problem{
				{`p.yaml:1: postgres: missing`, `add a postgres: section with url: ${DATABASE_URL}`},
				{`p.yaml:1: userpilot: missing`, `add a userpilot: section with api_key: ${USERPILOT_API_KEY}`},
				{`p.yaml:1: the file has neither a companies: nor a users: section, so there is nothing to sync`,
					`add a companies: section with table, company_id and metadata, a users: section with table, user_id, company_id and metadata, or both`},
			},
		},
		{
			name: "missing metadata",
			data: strings.TrimSuffix(minimal, "  metadata:\n    name: name\n"),
			want: []problem{{`p.yaml:5: companies.metadata: missing`, `add metadata: with one key: column line per value to send, e.g. name: name`}},
		},
		{
			name: "empty metadata",
			data: strings.Replace(minimal, "  metadata:\n    name: name\n", "  metadata: {}\n", 1),
			want: []problem{{`p.yaml:8: companies.metadata: has no entries`, `add metadata: with one key: column line per value to send, e.g. name: name`}},
		},
		{
			name: "metadata is a list",
			data: strings.Replace(minimal, "    name: name\n", "    - name\n", 1),
			want: []problem{{`p.yaml:8: companies.metadata: must be a mapping of keys, not a list`, `indent its keys under metadata:`}},
		},
		{
			name: "metadata entry without a column",
			data: minimal + "    seats:\n",
			want: []problem{{`p.yaml:10: companies.metadata.seats: column must be a string (write seats: seats or seats: {column: seats, type: number})`, ""}},
		},
		{
			name: "metadata entry is a list",
			data: minimal + "    seats: [seat_count]\n",
			want: []problem{{`p.yaml:10: companies.metadata.seats: column must be a string (write seats: seats or seats: {column: seats, type: number})`, ""}},
		},
		{
			name: "metadata entry mapping without column",
			data: minimal + "    seats: {type: number}\n",
			want: []problem{{`p.yaml:10: companies.metadata.seats.column: missing`, `write seats: seats or seats: {column: seats, type: number}`}},
		},
		{
			name: "metadata entry with an empty column",
			data: minimal + "    seats: \"\"\n",
			want: []problem{{`p.yaml:10: companies.metadata.seats: is empty`, `write seats: seats or seats: {column: seats, type: number}`}},
		},
		{
			name: "metadata entry column is a mapping",
			data: minimal + "    seats: {column: {name: x}}\n",
			want: []problem{{`p.yaml:10: companies.metadata.seats.column: must be a single value, not a mapping`, `write column: value`}},
		},
		{
			name: "empty metadata key",
			data: minimal + "    \"\": name\n",
			want: []problem{{`p.yaml:10: companies.metadata.: a metadata key must not be empty`, `name the key as Userpilot should show it`}},
		},
		{
			name: "bad type",
			data: minimal + "    seats: {column: seat_count, type: integer}\n",
			want: []problem{{`p.yaml:10: companies.metadata.seats.type: "integer" is not a type; allowed: string, number, boolean, date (leave type out to let the column's Postgres type decide)`, ""}},
		},
		{
			name: "unset environment variable",
			env:  map[string]string{"DATABASE_URL": "-"},
			data: minimal,
			want: []problem{{`p.yaml:2: postgres.url: environment variable DATABASE_URL is not set; export it or write the value in the file`, ""}},
		},
		{
			// The key is read twice (api_key, then as required): one report.
			name: "unset API key variable, reported once",
			env:  map[string]string{"USERPILOT_API_KEY": "-"},
			data: minimal,
			want: []problem{{`p.yaml:4: userpilot.api_key: environment variable USERPILOT_API_KEY is not set; export it or write the value in the file`, ""}},
		},
		{
			name: "one unset variable in two values, reported once naming both",
			env:  map[string]string{"DATABASE_URL": "-"},
			data: replaceLine(9, "    name: ${DATABASE_URL}"),
			want: []problem{{`p.yaml:2: postgres.url: environment variable DATABASE_URL is not set (also used by companies.metadata.name at line 9); export it or write the value in the file`, ""}},
		},
		{
			name: "several unset variables in one value",
			data: replaceLine(9, "    name: ${A}_${B}"),
			want: []problem{
				{`p.yaml:9: companies.metadata.name: environment variable A is not set; export it or write the value in the file`, ""},
				{`p.yaml:9: companies.metadata.name: environment variable B is not set; export it or write the value in the file`, ""},
			},
		},
		{
			name: "required variable set but empty",
			env:  map[string]string{"USERPILOT_API_KEY": ""},
			data: minimal,
			want: []problem{{`p.yaml:4: userpilot.api_key: environment variable USERPILOT_API_KEY is set but empty`, `export it with a value`}},
		},
		{
			name: "required value written empty",
			data: replaceLine(6, `  table: ""`),
			want: []problem{{`p.yaml:6: companies.table: is empty`, `write table: public.companies (the table to mirror)`}},
		},
		{
			name: "unterminated variable",
			data: replaceLine(9, "    name: ${NAME"),
			want: []problem{{`p.yaml:9: companies.metadata.name: ${ without a closing }`, `write ${NAME}, or $${ for a literal ${`}},
		},
		{
			name: "bad variable name",
			data: replaceLine(9, "    name: ${1X}"),
			want: []problem{{`p.yaml:9: companies.metadata.name: "1X" is not an environment variable name`, `write ${NAME} with letters, digits and underscores, or $${ for a literal ${`}},
		},
		{
			name: "http endpoint on a public host",
			data: replaceLine(4, "  api_key: k\n  endpoint: http://analytex.userpilot.io"),
			want: []problem{{`p.yaml:5: userpilot.endpoint: "http://analytex.userpilot.io" uses http; the API key travels in a request header and must be encrypted, so only https is allowed (http only for localhost and 127.0.0.1 test servers)`, `write https://`}},
		},
		{
			name: "endpoint with a path",
			data: replaceLine(4, "  api_key: k\n  endpoint: https://analytex.userpilot.io/v1"),
			want: []problem{{`p.yaml:5: userpilot.endpoint: "https://analytex.userpilot.io/v1" has the path "/v1"; pgpilot adds the API paths itself`, `write us, eu, or your account's base URL such as https://analytex.userpilot.io`}},
		},
		{
			name: "endpoint not a URL",
			data: replaceLine(4, "  api_key: k\n  endpoint: asia"),
			want: []problem{{`p.yaml:5: userpilot.endpoint: "asia" is not an absolute URL`, `write us, eu, or your account's base URL such as https://analytex.userpilot.io`}},
		},
		{
			name: "endpoint with credentials",
			data: replaceLine(4, "  api_key: k\n  endpoint: https://user:pw@analytex.userpilot.io"),
			want: []problem{{`p.yaml:5: userpilot.endpoint: "https://user:pw@analytex.userpilot.io" holds credentials`, `remove them, the key goes in userpilot.api_key`}},
		},
		{
			name: "endpoint from the environment is named, not echoed",
			env:  map[string]string{"UP_ENDPOINT": "http://example.com"},
			data: replaceLine(4, "  api_key: k\n  endpoint: ${UP_ENDPOINT}"),
			want: []problem{{`p.yaml:5: userpilot.endpoint: the value from ${UP_ENDPOINT} uses http; the API key travels in a request header and must be encrypted, so only https is allowed (http only for localhost and 127.0.0.1 test servers)`, `write https://`}},
		},
		{
			name: "rate limit not positive",
			data: replaceLine(4, "  api_key: k\n  rate_limit: 0"),
			want: []problem{{`p.yaml:5: userpilot.rate_limit: "0" is not a positive number of requests per second`, `write e.g. rate_limit: 10 (Userpilot allows 600 requests per minute per API key)`}},
		},
		{
			name: "rate limit not a number",
			data: replaceLine(4, "  api_key: k\n  rate_limit: fast"),
			want: []problem{{`p.yaml:5: userpilot.rate_limit: "fast" is not a positive number of requests per second`, `write e.g. rate_limit: 10 (Userpilot allows 600 requests per minute per API key)`}},
		},
		{
			name: "bulk rate negative",
			data: replaceLine(4, "  api_key: k\n  bulk_rate: -1"),
			want: []problem{{`p.yaml:5: userpilot.bulk_rate: "-1" is not a number of records per second`, `write e.g. bulk_rate: 20 (Userpilot's bulk jobs process 1,200 to 1,800 records per minute), or 0 to send everything on the real-time endpoint`}},
		},
		{
			name: "bad slot name",
			data: replaceLine(2, "  url: ${DATABASE_URL}\n  slot: PgPilot-1"),
			want: []problem{{`p.yaml:3: postgres.slot: "PgPilot-1" is not a valid replication slot name`, `use 1 to 63 lower-case letters, digits and underscores, e.g. slot: pgpilot`}},
		},
		{
			name: "slot name too long",
			data: replaceLine(2, "  url: ${DATABASE_URL}\n  slot: "+strings.Repeat("s", 64)),
			want: []problem{{`p.yaml:3: postgres.slot: "` + strings.Repeat("s", 64) + `" is not a valid replication slot name`, `use 1 to 63 lower-case letters, digits and underscores, e.g. slot: pgpilot`}},
		},
		{
			name: "publication name too long",
			data: replaceLine(2, "  url: ${DATABASE_URL}\n  publication: "+strings.Repeat("p", 64)),
			want: []problem{{`p.yaml:3: postgres.publication: "` + strings.Repeat("p", 64) + `" is 64 bytes long; Postgres names hold at most 63`, `choose a shorter name, e.g. publication: pgpilot`}},
		},
		{
			name: "publication name with NUL",
			data: replaceLine(2, "  url: ${DATABASE_URL}\n  publication: \"a\\0b\""),
			want: []problem{{`p.yaml:3: postgres.publication: contains a NUL character`, `choose a plain name, e.g. publication: pgpilot`}},
		},
		{
			name: "table with a character that needs quotes",
			data: replaceLine(6, "  table: my-companies"),
			want: []problem{{`p.yaml:6: companies.table: "my-companies" has the character '-', which needs quotes`, `write name or schema.name; quote parts that have capitals or other characters, e.g. table: '"My Schema"."Companies"'`}},
		},
		{
			name: "table with three parts",
			data: replaceLine(6, "  table: db.public.companies"),
			want: []problem{{`p.yaml:6: companies.table: "db.public.companies" has more than two parts`, `write name or schema.name (the database comes from postgres.url)`}},
		},
		{
			name: "table with an unclosed quote",
			data: replaceLine(6, `  table: '"Companies'`),
			want: []problem{{`p.yaml:6: companies.table: "\"Companies" has a quote without its closing quote`, `write name or schema.name; quote parts that have capitals or other characters, e.g. table: '"My Schema"."Companies"'`}},
		},
		{
			name: "state dir with tilde",
			data: minimal + "state:\n  dir: ~/pgpilot\n",
			want: []problem{{`p.yaml:11: state.dir: "~/pgpilot" starts with ~, which is not expanded`, `write the full path, or ${HOME}/...`}},
		},
		{
			name: "section is a value",
			data: strings.Replace(minimal, "postgres:\n  url: ${DATABASE_URL}\n", "postgres: ${DATABASE_URL}\n", 1),
			want: []problem{{`p.yaml:1: postgres: must be a mapping of keys, not a single value`, `indent its keys under postgres:`}},
		},
		{
			name: "value is a mapping",
			data: replaceLine(7, "  company_id: {column: id}"),
			want: []problem{{`p.yaml:7: companies.company_id: must be a single value, not a mapping`, `write company_id: value`}},
		},
		{
			name: "not YAML",
			data: "postgres:\n  url: x\n bad indentation: [\n",
			// yaml.v3 reports the line where the enclosing mapping started.
			want: []problem{{`p.yaml:2: the file is not valid YAML: did not find expected key`, `check indentation and quoting near this line (quote values that start with " or contain ": ")`}},
		},
		{
			name: "empty file",
			data: "",
			want: []problem{{`p.yaml:1: the file is empty`, `start from mapping.example.yaml`}},
		},
		{
			name: "comments only",
			data: "# nothing yet\n",
			want: []problem{{`p.yaml:1: the file is empty`, `start from mapping.example.yaml`}},
		},
		{
			name: "not a mapping",
			data: "- postgres\n",
			want: []problem{{`p.yaml:1: the file must be a mapping of sections (postgres:, userpilot:, state:, companies:), not a list`, `start from mapping.example.yaml`}},
		},
		{
			name: "two documents",
			data: minimal + "---\nfoo: bar\n",
			want: []problem{{`p.yaml:10: the file holds a second YAML document (after ---)`, `keep one document per file`}},
		},
		{
			name: "problems are all reported, in line order",
			data: "companies:\n  table: t\n  company_id: id\n  metadata:\n    a: {column: a, type: int}\npostgres:\n  url: ${NOPE}\n  bogus: 1\nuserpilot:\n  api_key: k\n  endpoint: ftp://x\n",
			want: []problem{
				{`p.yaml:5: companies.metadata.a.type: "int" is not a type; allowed: string, number, boolean, date (leave type out to let the column's Postgres type decide)`, ""},
				{`p.yaml:7: postgres.url: environment variable NOPE is not set; export it or write the value in the file`, ""},
				{`p.yaml:8: postgres.bogus: unknown key "bogus"; allowed: url, slot, publication, failover_slot`, ""},
				{`p.yaml:11: userpilot.endpoint: "ftp://x" uses the scheme "ftp"`, `write us, eu, or your account's base URL such as https://analytex.userpilot.io`},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vars := baseEnv()
			for k, v := range tt.env {
				if v == "-" {
					delete(vars, k)
				} else {
					vars[k] = v
				}
			}
			cfg, err := Parse("p.yaml", []byte(tt.data), env(vars))
			assert.Nil(t, cfg)
			assert.Equal(t, tt.want, fixedProblems(t, err))
		})
	}
}

func TestConfigErrorsAreFoundWithErrorsAs(t *testing.T) {
	_, err := Parse("p.yaml", []byte(replaceLine(7, "  company_id: \"\"")), env(baseEnv()))
	var ce *mapping.ConfigError
	require.True(t, errors.As(err, &ce))
	assert.Equal(t, &mapping.ConfigError{File: "p.yaml", Line: 7, Key: "companies.company_id", Msg: "is empty", Fix: "write company_id: id (the column holding the company's id)"}, ce)
}

func TestConfigErrorsPrintEachFixOnALineOfItsOwn(t *testing.T) {
	_, err := Parse("p.yaml", []byte(replaceLine(2, "  url: ${DATABASE_URL}\n  slot: PgPilot-1\n  bogus: 1")), env(baseEnv()))
	assert.Equal(t, `p.yaml:3: postgres.slot: "PgPilot-1" is not a valid replication slot name
  fix: use 1 to 63 lower-case letters, digits and underscores, e.g. slot: pgpilot
p.yaml:4: postgres.bogus: unknown key "bogus"; allowed: url, slot, publication, failover_slot`, err.Error(),
		"a problem without a fix has no fix line")
}

func TestLoadReadsTheFileAndTheEnvironment(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pgpilot.yaml")
	require.NoError(t, os.WriteFile(path, []byte(minimal), 0o600))
	t.Setenv("DATABASE_URL", testURL)
	t.Setenv("USERPILOT_API_KEY", testAPIKey)

	cfg, err := Load(path)
	require.NoError(t, err)
	assert.Equal(t, testAPIKey, cfg.Userpilot.APIKey)
	assert.Equal(t, filepath.Join(dir, "pgpilot-state"), cfg.State.Dir)
}

func TestLoadMissingFileSaysWhatToDo(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	require.ErrorIs(t, err, os.ErrNotExist)
	assert.Contains(t, err.Error(), "nope.yaml")
	assert.Equal(t, "pass --config with the path of your mapping file (mapping.example.yaml shows its shape)", fix.Of(err))
}
