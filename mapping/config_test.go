package mapping

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	require.Error(t, err)
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	var out []string
	for _, e := range errs {
		var ce *ConfigError
		require.True(t, errors.As(e, &ce), "not a *ConfigError: %v", e)
		out = append(out, ce.Error())
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
		Delivery:  Delivery{MaxRetainedWAL: 256 << 20, OutboxAfter: 5 * time.Minute, WarnRetainedWAL: 1 << 30, SnapshotChunkRows: 5000},
		HTTP:      HTTP{UnreadyAfter: 5 * time.Minute},
		Companies: Companies{
			OnDelete: OnDeleteIgnore,
			Table:    "companies", Schema: "public", Name: "companies", CompanyID: "id",
			Metadata:      []Field{{Key: "name", Column: "name", Line: 9}},
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
	assert.Equal(t, Userpilot{APIKey: testAPIKey, Endpoint: "https://analytex-us.userpilot.io", RateLimit: 2.5, BulkRate: DefaultBulkRate}, cfg.Userpilot)
	assert.Equal(t, State{Dir: "/var/lib/pgpilot"}, cfg.State)
	assert.Equal(t, "My Schema", cfg.Companies.Schema)
	assert.Equal(t, "Companies", cfg.Companies.Name)
	assert.Equal(t, `"My Schema"."Companies"`, cfg.Companies.Table)
	assert.Equal(t, []Field{
		{Key: "name", Column: "name", Line: 15},
		{Key: "seats", Column: "seat_count", Type: TypeNumber, Line: 16},
		{Key: "seats_text", Column: "seat_count", Type: TypeString, Line: 17},
		{Key: "active", Column: "active", Line: 18},
		{Key: "signed_up", Column: "created", Type: TypeDate, Line: 19},
		{Key: "flag", Column: "flag", Type: TypeBoolean, Line: 20},
	}, cfg.Companies.Metadata)
}

func TestParseEndpointShorthandsAndLoopback(t *testing.T) {
	tests := []struct{ in, want string }{
		{"us", "https://analytex.userpilot.io"},
		{"eu", "https://analytex-eu.userpilot.io"},
		{"EU", "https://analytex-eu.userpilot.io"},
		{"https://analytex-in.userpilot.io", "https://analytex-in.userpilot.io"},
		{"https://userpilot.example.com/", "https://userpilot.example.com"},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080"},
		{"http://127.9.9.9:8080/", "http://127.9.9.9:8080"},
		{"http://localhost:9000", "http://localhost:9000"},
		{"http://[::1]:9000", "http://[::1]:9000"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			data := strings.Replace(minimal, "  api_key: ${USERPILOT_API_KEY}\n", "  api_key: ${USERPILOT_API_KEY}\n  endpoint: "+tt.in+"\n", 1)
			cfg, err := Parse("p.yaml", []byte(data), env(baseEnv()))
			require.NoError(t, err)
			assert.Equal(t, tt.want, cfg.Userpilot.Endpoint)
		})
	}
}

func TestParseStateDirIsRelativeToTheConfigFile(t *testing.T) {
	tests := []struct{ path, dir, want string }{
		{"/etc/pgpilot.yaml", "./state", "/etc/state"},
		{"/etc/pgpilot/pgpilot.yaml", "../lib/pgpilot", "/etc/lib/pgpilot"},
		{"pgpilot.yaml", "state", "state"},
		{"/etc/pgpilot.yaml", "/var/lib/pgpilot/", "/var/lib/pgpilot"},
		{"/etc/pgpilot.yaml", "${EMPTY}", "/etc/pgpilot-state"},
	}
	for _, tt := range tests {
		t.Run(tt.path+" "+tt.dir, func(t *testing.T) {
			vars := baseEnv()
			vars["EMPTY"] = ""
			cfg, err := Parse(tt.path, []byte(minimal+"state:\n  dir: "+tt.dir+"\n"), env(vars))
			require.NoError(t, err)
			assert.Equal(t, tt.want, cfg.State.Dir)
		})
	}
}

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

func TestParseEnvironmentVariables(t *testing.T) {
	vars := map[string]string{
		"USERPILOT_API_KEY": testAPIKey,
		"PGUSER":            "app",
		"PGPASSWORD":        "s3cr3t-pass",
		"COL":               "plan_code",
		"EMPTY":             "",
	}
	data := `postgres:
  url: postgres://${PGUSER}:${PGPASSWORD}@db/app
  slot: ${EMPTY}
userpilot:
  api_key: ${USERPILOT_API_KEY}
companies:
  table: companies
  company_id: id
  metadata:
    plan: ${COL}
    literal: "$${COL}"
    dollar: "cost$"
    flow: {column: "${COL}", type: string}
`
	cfg, err := Parse("p.yaml", []byte(data), env(vars))
	require.NoError(t, err)
	assert.Equal(t, "postgres://app:s3cr3t-pass@db/app", cfg.Postgres.URL)
	assert.Equal(t, "pgpilot", cfg.Postgres.Slot, "an empty variable selects the default")
	assert.Equal(t, "plan_code", cfg.Companies.Metadata[0].Column)
	assert.Equal(t, "${COL}", cfg.Companies.Metadata[1].Column)
	assert.Equal(t, "cost$", cfg.Companies.Metadata[2].Column)
	assert.Equal(t, "plan_code", cfg.Companies.Metadata[3].Column, "quoted ${VAR} works inside {column, type}")
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
		want []string
	}{
		{
			name: "unknown top-level key",
			data: minimal + "postgress:\n  url: x\n",
			want: []string{`p.yaml:10: postgress: unknown key "postgress"; allowed: postgres, userpilot, state, delivery, http, companies`},
		},
		{
			name: "unknown nested key",
			data: replaceLine(2, "  url: ${DATABASE_URL}\n  slots: pgpilot"),
			want: []string{`p.yaml:3: postgres.slots: unknown key "slots"; allowed: url, slot, publication, failover_slot`},
		},
		{
			name: "unknown key inside a metadata entry",
			data: minimal + "    seats: {column: seat_count, kind: number}\n",
			want: []string{`p.yaml:10: companies.metadata.seats.kind: unknown key "kind"; allowed: column, type`},
		},
		{
			name: "unknown state key",
			data: minimal + "state:\n  directory: x\n",
			want: []string{`p.yaml:11: state.directory: unknown key "directory"; allowed: dir`},
		},
		{
			name: "duplicate top-level key",
			data: minimal + "postgres:\n  url: x\n",
			want: []string{`p.yaml:10: postgres: duplicate key (first at line 1); fix: keep one of them`},
		},
		{
			name: "duplicate metadata key",
			data: minimal + "    name: company_name\n",
			want: []string{`p.yaml:10: companies.metadata.name: duplicate key (first at line 9); fix: keep one of them`},
		},
		{
			name: "missing required keys",
			data: "postgres:\n  slot: s\nuserpilot:\n  endpoint: eu\ncompanies:\n  metadata:\n    name: name\n",
			want: []string{
				`p.yaml:1: postgres.url: missing; fix: write url: ${DATABASE_URL} (a libpq URL or key=value string)`,
				`p.yaml:3: userpilot.api_key: missing; fix: write api_key: ${USERPILOT_API_KEY}, or api_key_file: /path/to/secret`,
				`p.yaml:5: companies.table: missing; fix: write table: public.companies (the table to mirror)`,
				`p.yaml:5: companies.company_id: missing; fix: write company_id: id (the column holding the company's id)`,
			},
		},
		{
			name: "missing sections",
			data: "state:\n  dir: x\n",
			want: []string{
				`p.yaml:1: postgres: missing; fix: add a postgres: section with url: ${DATABASE_URL}`,
				`p.yaml:1: userpilot: missing; fix: add a userpilot: section with api_key: ${USERPILOT_API_KEY}`,
				`p.yaml:1: companies: missing; fix: add a companies: section with table, company_id and metadata`,
			},
		},
		{
			name: "missing metadata",
			data: strings.TrimSuffix(minimal, "  metadata:\n    name: name\n"),
			want: []string{`p.yaml:5: companies.metadata: missing; fix: add metadata: with one key: column line per value to send, e.g. name: name`},
		},
		{
			name: "empty metadata",
			data: strings.Replace(minimal, "  metadata:\n    name: name\n", "  metadata: {}\n", 1),
			want: []string{`p.yaml:8: companies.metadata: has no entries; fix: add metadata: with one key: column line per value to send, e.g. name: name`},
		},
		{
			name: "metadata is a list",
			data: strings.Replace(minimal, "    name: name\n", "    - name\n", 1),
			want: []string{`p.yaml:8: companies.metadata: must be a mapping of keys, not a list; fix: indent its keys under metadata:`},
		},
		{
			name: "metadata entry without a column",
			data: minimal + "    seats:\n",
			want: []string{`p.yaml:10: companies.metadata.seats: column must be a string (write seats: seats or seats: {column: seats, type: number})`},
		},
		{
			name: "metadata entry is a list",
			data: minimal + "    seats: [seat_count]\n",
			want: []string{`p.yaml:10: companies.metadata.seats: column must be a string (write seats: seats or seats: {column: seats, type: number})`},
		},
		{
			name: "metadata entry mapping without column",
			data: minimal + "    seats: {type: number}\n",
			want: []string{`p.yaml:10: companies.metadata.seats.column: missing; fix: write seats: seats or seats: {column: seats, type: number}`},
		},
		{
			name: "metadata entry with an empty column",
			data: minimal + "    seats: \"\"\n",
			want: []string{`p.yaml:10: companies.metadata.seats: is empty; fix: write seats: seats or seats: {column: seats, type: number}`},
		},
		{
			name: "metadata entry column is a mapping",
			data: minimal + "    seats: {column: {name: x}}\n",
			want: []string{`p.yaml:10: companies.metadata.seats.column: must be a single value, not a mapping; fix: write column: value`},
		},
		{
			name: "empty metadata key",
			data: minimal + "    \"\": name\n",
			want: []string{`p.yaml:10: companies.metadata.: a metadata key must not be empty; fix: name the key as Userpilot should show it`},
		},
		{
			name: "bad type",
			data: minimal + "    seats: {column: seat_count, type: integer}\n",
			want: []string{`p.yaml:10: companies.metadata.seats.type: "integer" is not a type; allowed: string, number, boolean, date (leave type out to let the column's Postgres type decide)`},
		},
		{
			name: "unset environment variable",
			env:  map[string]string{"DATABASE_URL": "-"},
			data: minimal,
			want: []string{`p.yaml:2: postgres.url: environment variable DATABASE_URL is not set; export it or write the value in the file`},
		},
		{
			name: "several unset variables in one value",
			data: replaceLine(9, "    name: ${A}_${B}"),
			want: []string{
				`p.yaml:9: companies.metadata.name: environment variable A is not set; export it or write the value in the file`,
				`p.yaml:9: companies.metadata.name: environment variable B is not set; export it or write the value in the file`,
			},
		},
		{
			name: "required variable set but empty",
			env:  map[string]string{"USERPILOT_API_KEY": ""},
			data: minimal,
			want: []string{`p.yaml:4: userpilot.api_key: environment variable USERPILOT_API_KEY is set but empty; fix: export it with a value`},
		},
		{
			name: "required value written empty",
			data: replaceLine(6, `  table: ""`),
			want: []string{`p.yaml:6: companies.table: is empty; fix: write table: public.companies (the table to mirror)`},
		},
		{
			name: "unterminated variable",
			data: replaceLine(9, "    name: ${NAME"),
			want: []string{`p.yaml:9: companies.metadata.name: ${ without a closing }; fix: write ${NAME}, or $${ for a literal ${`},
		},
		{
			name: "bad variable name",
			data: replaceLine(9, "    name: ${1X}"),
			want: []string{`p.yaml:9: companies.metadata.name: "1X" is not an environment variable name; fix: write ${NAME} with letters, digits and underscores, or $${ for a literal ${`},
		},
		{
			name: "http endpoint on a public host",
			data: replaceLine(4, "  api_key: k\n  endpoint: http://analytex.userpilot.io"),
			want: []string{`p.yaml:5: userpilot.endpoint: "http://analytex.userpilot.io" uses http; the API key travels in a request header and must be encrypted, so only https is allowed (http only for localhost and 127.0.0.1 test servers); fix: write https://`},
		},
		{
			name: "endpoint with a path",
			data: replaceLine(4, "  api_key: k\n  endpoint: https://analytex.userpilot.io/v1"),
			want: []string{`p.yaml:5: userpilot.endpoint: "https://analytex.userpilot.io/v1" has the path "/v1"; pgpilot adds the API paths itself; fix: write us, eu, or your account's base URL such as https://analytex.userpilot.io`},
		},
		{
			name: "endpoint not a URL",
			data: replaceLine(4, "  api_key: k\n  endpoint: asia"),
			want: []string{`p.yaml:5: userpilot.endpoint: "asia" is not an absolute URL; fix: write us, eu, or your account's base URL such as https://analytex.userpilot.io`},
		},
		{
			name: "endpoint with credentials",
			data: replaceLine(4, "  api_key: k\n  endpoint: https://user:pw@analytex.userpilot.io"),
			want: []string{`p.yaml:5: userpilot.endpoint: "https://user:pw@analytex.userpilot.io" holds credentials; fix: remove them, the key goes in userpilot.api_key`},
		},
		{
			name: "endpoint from the environment is named, not echoed",
			env:  map[string]string{"UP_ENDPOINT": "http://example.com"},
			data: replaceLine(4, "  api_key: k\n  endpoint: ${UP_ENDPOINT}"),
			want: []string{`p.yaml:5: userpilot.endpoint: the value from ${UP_ENDPOINT} uses http; the API key travels in a request header and must be encrypted, so only https is allowed (http only for localhost and 127.0.0.1 test servers); fix: write https://`},
		},
		{
			name: "rate limit not positive",
			data: replaceLine(4, "  api_key: k\n  rate_limit: 0"),
			want: []string{`p.yaml:5: userpilot.rate_limit: "0" is not a positive number of requests per second; fix: write e.g. rate_limit: 10 (Userpilot allows 600 requests per minute per API key)`},
		},
		{
			name: "rate limit not a number",
			data: replaceLine(4, "  api_key: k\n  rate_limit: fast"),
			want: []string{`p.yaml:5: userpilot.rate_limit: "fast" is not a positive number of requests per second; fix: write e.g. rate_limit: 10 (Userpilot allows 600 requests per minute per API key)`},
		},
		{
			name: "bulk rate negative",
			data: replaceLine(4, "  api_key: k\n  bulk_rate: -1"),
			want: []string{`p.yaml:5: userpilot.bulk_rate: "-1" is not a number of records per second; fix: write e.g. bulk_rate: 20 (Userpilot's bulk jobs process 1,200 to 1,800 records per minute), or 0 to send everything on the real-time endpoint`},
		},
		{
			name: "bad slot name",
			data: replaceLine(2, "  url: ${DATABASE_URL}\n  slot: PgPilot-1"),
			want: []string{`p.yaml:3: postgres.slot: "PgPilot-1" is not a valid replication slot name; fix: use 1 to 63 lower-case letters, digits and underscores, e.g. slot: pgpilot`},
		},
		{
			name: "slot name too long",
			data: replaceLine(2, "  url: ${DATABASE_URL}\n  slot: "+strings.Repeat("s", 64)),
			want: []string{`p.yaml:3: postgres.slot: "` + strings.Repeat("s", 64) + `" is not a valid replication slot name; fix: use 1 to 63 lower-case letters, digits and underscores, e.g. slot: pgpilot`},
		},
		{
			name: "publication name too long",
			data: replaceLine(2, "  url: ${DATABASE_URL}\n  publication: "+strings.Repeat("p", 64)),
			want: []string{`p.yaml:3: postgres.publication: "` + strings.Repeat("p", 64) + `" is 64 bytes long; Postgres names hold at most 63; fix: choose a shorter name, e.g. publication: pgpilot`},
		},
		{
			name: "publication name with NUL",
			data: replaceLine(2, "  url: ${DATABASE_URL}\n  publication: \"a\\0b\""),
			want: []string{`p.yaml:3: postgres.publication: contains a NUL character; fix: choose a plain name, e.g. publication: pgpilot`},
		},
		{
			name: "table with a character that needs quotes",
			data: replaceLine(6, "  table: my-companies"),
			want: []string{`p.yaml:6: companies.table: "my-companies" has the character '-', which needs quotes; fix: write name or schema.name; quote parts that have capitals or other characters, e.g. table: '"My Schema"."Companies"'`},
		},
		{
			name: "table with three parts",
			data: replaceLine(6, "  table: db.public.companies"),
			want: []string{`p.yaml:6: companies.table: "db.public.companies" has more than two parts; fix: write name or schema.name (the database comes from postgres.url)`},
		},
		{
			name: "table with an unclosed quote",
			data: replaceLine(6, `  table: '"Companies'`),
			want: []string{`p.yaml:6: companies.table: "\"Companies" has a quote without its closing quote; fix: write name or schema.name; quote parts that have capitals or other characters, e.g. table: '"My Schema"."Companies"'`},
		},
		{
			name: "state dir with tilde",
			data: minimal + "state:\n  dir: ~/pgpilot\n",
			want: []string{`p.yaml:11: state.dir: "~/pgpilot" starts with ~, which is not expanded; fix: write the full path, or ${HOME}/...`},
		},
		{
			name: "section is a value",
			data: strings.Replace(minimal, "postgres:\n  url: ${DATABASE_URL}\n", "postgres: ${DATABASE_URL}\n", 1),
			want: []string{`p.yaml:1: postgres: must be a mapping of keys, not a single value; fix: indent its keys under postgres:`},
		},
		{
			name: "value is a mapping",
			data: replaceLine(7, "  company_id: {column: id}"),
			want: []string{`p.yaml:7: companies.company_id: must be a single value, not a mapping; fix: write company_id: value`},
		},
		{
			name: "not YAML",
			data: "postgres:\n  url: x\n bad indentation: [\n",
			// yaml.v3 reports the line where the enclosing mapping started.
			want: []string{`p.yaml:2: the file is not valid YAML: did not find expected key; fix: check indentation and quoting near this line (quote values that start with " or contain ": ")`},
		},
		{
			name: "empty file",
			data: "",
			want: []string{`p.yaml:1: the file is empty; fix: start from mapping.example.yaml`},
		},
		{
			name: "comments only",
			data: "# nothing yet\n",
			want: []string{`p.yaml:1: the file is empty; fix: start from mapping.example.yaml`},
		},
		{
			name: "not a mapping",
			data: "- postgres\n",
			want: []string{`p.yaml:1: the file must be a mapping of sections (postgres:, userpilot:, state:, companies:), not a list; fix: start from mapping.example.yaml`},
		},
		{
			name: "two documents",
			data: minimal + "---\nfoo: bar\n",
			want: []string{`p.yaml:10: the file holds a second YAML document (after ---); fix: keep one document per file`},
		},
		{
			name: "problems are all reported, in line order",
			data: "companies:\n  table: t\n  company_id: id\n  metadata:\n    a: {column: a, type: int}\npostgres:\n  url: ${NOPE}\n  bogus: 1\nuserpilot:\n  api_key: k\n  endpoint: ftp://x\n",
			want: []string{
				`p.yaml:5: companies.metadata.a.type: "int" is not a type; allowed: string, number, boolean, date (leave type out to let the column's Postgres type decide)`,
				`p.yaml:7: postgres.url: environment variable NOPE is not set; export it or write the value in the file`,
				`p.yaml:8: postgres.bogus: unknown key "bogus"; allowed: url, slot, publication, failover_slot`,
				`p.yaml:11: userpilot.endpoint: "ftp://x" uses the scheme "ftp"; fix: write us, eu, or your account's base URL such as https://analytex.userpilot.io`,
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
			assert.Equal(t, tt.want, problems(t, err))
		})
	}
}

func TestParseErrorsNeverShowSecrets(t *testing.T) {
	tests := []struct {
		name string
		data string
		env  map[string]string
		want []string
	}{
		{
			name: "malformed URL from the environment",
			env:  map[string]string{"DATABASE_URL": "postgres://pgpilot:p%ss#word@db/app"},
			data: minimal,
			want: []string{`p.yaml:2: postgres.url: is not a valid URL (value not shown: it may hold a password); fix: percent-encode special characters in the user name and password (@ as %40, : as %3A, / as %2F, # as %23, ? as %3F, % as %25)`},
		},
		{
			name: "URL cut short by a # in the password",
			env:  map[string]string{"DATABASE_URL": "postgres://pgpilot:p@ss#word@db/app"},
			data: minimal,
			want: []string{`p.yaml:2: postgres.url: is not a valid URL (value not shown: it may hold a password); fix: percent-encode special characters in the user name and password (@ as %40, : as %3A, / as %2F, # as %23, ? as %3F, % as %25)`},
		},
		{
			name: "malformed URL written in the file",
			data: replaceLine(2, "  url: postgres://pgpilot:topsecret@db:port/app"),
			want: []string{`p.yaml:2: postgres.url: is not a valid URL (value not shown: it may hold a password); fix: percent-encode special characters in the user name and password (@ as %40, : as %3A, / as %2F, # as %23, ? as %3F, % as %25)`},
		},
		{
			name: "password with ${ in it",
			data: replaceLine(2, "  url: postgres://u:top${secret@x}@db/app"),
			want: []string{`p.yaml:2: postgres.url: a ${...} (value not shown: it may hold a password) is not an environment variable name; fix: write ${NAME} with letters, digits and underscores, or $${ for a literal ${`},
		},
		{
			name: "URL with a foreign scheme",
			data: replaceLine(2, "  url: mysql://root:topsecret@db/app"),
			want: []string{`p.yaml:2: postgres.url: has an unsupported scheme (value not shown: it may hold a password); fix: start the URL with postgres:// or postgresql://`},
		},
		{
			name: "URL that is no connection string",
			data: replaceLine(2, "  url: topsecret"),
			want: []string{`p.yaml:2: postgres.url: is neither a libpq URL nor a key=value string (value not shown: it may hold a password); fix: write postgres://user:password@host:5432/dbname or host=... dbname=... user=...`},
		},
		{
			name: "several variables are named once each",
			env:  map[string]string{"SCHEMA": "Sales-EU"},
			data: replaceLine(6, "  table: ${SCHEMA}.${USERPILOT_API_KEY}_${SCHEMA}"),
			want: []string{`p.yaml:6: companies.table: the value from ${SCHEMA} and ${USERPILOT_API_KEY} has the character '-', which needs quotes; fix: write name or schema.name; quote parts that have capitals or other characters, e.g. table: '"My Schema"."Companies"'`},
		},
		{
			name: "API key pasted into another key",
			data: replaceLine(4, "  api_key: topsecretkey\n  endpoint: topsecretkey"),
			want: []string{`p.yaml:5: userpilot.endpoint: "[redacted]" is not an absolute URL; fix: write us, eu, or your account's base URL such as https://analytex.userpilot.io`},
		},
		{
			name: "database password pasted into another key",
			data: replaceLine(2, "  url: postgres://u:topsecretpw@db/app\n  slot: topsecretpw!"),
			want: []string{`p.yaml:3: postgres.slot: "[redacted]!" is not a valid replication slot name; fix: use 1 to 63 lower-case letters, digits and underscores, e.g. slot: pgpilot`},
		},
		{
			name: "secret variable used in another key",
			data: replaceLine(6, "  table: ${USERPILOT_API_KEY}!"),
			want: []string{`p.yaml:6: companies.table: the value from ${USERPILOT_API_KEY} has the character '-', which needs quotes; fix: write name or schema.name; quote parts that have capitals or other characters, e.g. table: '"My Schema"."Companies"'`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vars := baseEnv()
			for k, v := range tt.env {
				vars[k] = v
			}
			_, err := Parse("p.yaml", []byte(tt.data), env(vars))
			got := problems(t, err)
			assert.Equal(t, tt.want, got)
			for _, secret := range []string{testAPIKey, "hunter2", "p@ss", "p%ss", "topsecret"} {
				assert.NotContains(t, err.Error(), secret)
			}
		})
	}
}

func TestConfigErrorsAreFoundWithErrorsAs(t *testing.T) {
	_, err := Parse("p.yaml", []byte(replaceLine(7, "  company_id: \"\"")), env(baseEnv()))
	var ce *ConfigError
	require.True(t, errors.As(err, &ce))
	assert.Equal(t, &ConfigError{File: "p.yaml", Line: 7, Key: "companies.company_id", Msg: "is empty; fix: write company_id: id (the column holding the company's id)"}, ce)
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
	assert.Contains(t, err.Error(), "fix: pass --config with the path of your mapping file")
}

func TestBulkRateZeroTurnsTheBulkPathOff(t *testing.T) {
	data := strings.Replace(minimal, "  api_key: ${USERPILOT_API_KEY}\n", "  api_key: ${USERPILOT_API_KEY}\n  bulk_rate: 0\n", 1)
	require.Contains(t, data, "bulk_rate: 0")
	cfg, err := Parse("p.yaml", []byte(data), env(baseEnv()))
	require.NoError(t, err)
	assert.Zero(t, cfg.Userpilot.BulkRate)
}

func TestDeliverySection(t *testing.T) {
	tests := []struct {
		name, section string
		want          Delivery
		err           string
	}{
		{"sizes in postgresql.conf units", "delivery:\n  max_retained_wal: 1GB\n  outbox_after: 90s\n  warn_retained_wal: 512MB\n",
			Delivery{MaxRetainedWAL: 1 << 30, OutboxAfter: 90 * time.Second, WarnRetainedWAL: 512 << 20, SnapshotChunkRows: 5000}, ""},
		{"plain bytes, default duration", "delivery:\n  max_retained_wal: 1048576\n", Delivery{MaxRetainedWAL: 1 << 20, OutboxAfter: 5 * time.Minute, WarnRetainedWAL: 1 << 30, SnapshotChunkRows: 5000}, ""},
		{"zero never switches for WAL", "delivery:\n  max_retained_wal: 0\n", Delivery{OutboxAfter: 5 * time.Minute, WarnRetainedWAL: 1 << 30, SnapshotChunkRows: 5000}, ""},
		{"zero never warns", "delivery:\n  warn_retained_wal: 0\n", Delivery{MaxRetainedWAL: 256 << 20, OutboxAfter: 5 * time.Minute, SnapshotChunkRows: 5000}, ""},
		{"snapshot chunk size", "delivery:\n  snapshot_chunk_rows: 200\n", Delivery{MaxRetainedWAL: 256 << 20, OutboxAfter: 5 * time.Minute, WarnRetainedWAL: 1 << 30, SnapshotChunkRows: 200}, ""},
		{"bad chunk size", "delivery:\n  snapshot_chunk_rows: 0\n", Delivery{}, `p.yaml:11: delivery.snapshot_chunk_rows: "0" is not a row count from 1 to 100000; fix: write e.g. snapshot_chunk_rows: 5000`},
		{"bad size", "delivery:\n  max_retained_wal: lots\n", Delivery{}, `p.yaml:11: delivery.max_retained_wal: "lots" is not a size; fix: write e.g. max_retained_wal: 256MB (units B, kB, MB, GB, TB), or 0 to never switch for WAL`},
		{"bad warning size", "delivery:\n  warn_retained_wal: 1 GiB\n", Delivery{}, `p.yaml:11: delivery.warn_retained_wal: "1 GiB" is not a size; fix: write e.g. warn_retained_wal: 1GB (units B, kB, MB, GB, TB), or 0 to never warn`},
		{"bad duration", "delivery:\n  outbox_after: soon\n", Delivery{}, `p.yaml:11: delivery.outbox_after: "soon" is not a positive duration; fix: write e.g. outbox_after: 5m`},
		{"unknown key", "delivery:\n  mode: outbox\n", Delivery{}, `p.yaml:11: delivery.mode: unknown key "mode"; allowed: max_retained_wal, outbox_after, warn_retained_wal, snapshot_chunk_rows`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("p.yaml", []byte(minimal+tt.section), env(baseEnv()))
			if tt.err != "" {
				require.Error(t, err)
				assert.Equal(t, tt.err, err.Error())
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, cfg.Delivery)
		})
	}
}

func TestAPIKeyFileIsReadAndTrimmed(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "key"), []byte("from-a-secret-file\n"), 0o600))
	path := filepath.Join(dir, "pgpilot.yaml")
	data := strings.Replace(minimal, "  api_key: ${USERPILOT_API_KEY}\n", "  api_key_file: key\n", 1)
	require.NoError(t, os.WriteFile(path, []byte(data), 0o600))
	t.Setenv("DATABASE_URL", "postgres://u@h/db")
	cfg, err := Load(path)
	require.NoError(t, err)
	assert.Equal(t, "from-a-secret-file", cfg.Userpilot.APIKey, "relative to the config file, trailing newline dropped")

	require.NoError(t, os.WriteFile(filepath.Join(dir, "key"), []byte("\n"), 0o600))
	_, err = Load(path)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "pgpilot.yaml:4: userpilot.api_key_file: ")
	assert.Contains(t, err.Error(), "is empty")

	both := strings.Replace(minimal, "  api_key: ${USERPILOT_API_KEY}\n", "  api_key: ${USERPILOT_API_KEY}\n  api_key_file: key\n", 1)
	_, err = Parse("p.yaml", []byte(both), env(baseEnv()))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "both api_key and api_key_file are set")
}

func TestWorldReadableFileWithLiteralSecretIsWarnedAbout(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pgpilot.yaml")
	literal := strings.Replace(strings.Replace(minimal, "${DATABASE_URL}", "postgres://u:s3cret@h/db", 1),
		"${USERPILOT_API_KEY}", "literal-key", 1)
	tests := []struct {
		name, data string
		perm       os.FileMode
		warn       bool
	}{
		{"literal secrets, world-readable", literal, 0o644, true},
		{"literal secrets, private file", literal, 0o600, false},
		{"secrets from the environment", minimal, 0o644, false},
	}
	t.Setenv("DATABASE_URL", "postgres://u:pw@h/db")
	t.Setenv("USERPILOT_API_KEY", "k")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.NoError(t, os.WriteFile(path, []byte(tt.data), tt.perm))
			require.NoError(t, os.Chmod(path, tt.perm))
			cfg, err := Load(path)
			require.NoError(t, err)
			if !tt.warn {
				assert.Empty(t, cfg.Warnings)
				return
			}
			require.Len(t, cfg.Warnings, 1)
			assert.Contains(t, cfg.Warnings[0], "the password in postgres.url and userpilot.api_key")
			assert.Contains(t, cfg.Warnings[0], "chmod 600")
			assert.NotContains(t, cfg.Warnings[0], "s3cret")
			assert.NotContains(t, cfg.Warnings[0], "literal-key")
		})
	}
}

func TestHTTPSection(t *testing.T) {
	const fix = "fix: write host:port, e.g. listen: 127.0.0.1:9187 (or :9187 for every interface)"
	tests := []struct {
		name, section string
		env           map[string]string
		want          HTTP
		err           string
	}{
		{"absent: no server, default threshold", "", nil, HTTP{UnreadyAfter: 5 * time.Minute}, ""},
		{"empty section", "http:\n", nil, HTTP{UnreadyAfter: 5 * time.Minute}, ""},
		{"loopback and a threshold", "http:\n  listen: 127.0.0.1:9187\n  unready_after: 90s\n", nil, HTTP{Listen: "127.0.0.1:9187", UnreadyAfter: 90 * time.Second}, ""},
		{"every interface", "http:\n  listen: ':9187'\n", nil, HTTP{Listen: ":9187", UnreadyAfter: 5 * time.Minute}, ""},
		{"IPv6", "http:\n  listen: '[::1]:9187'\n", nil, HTTP{Listen: "[::1]:9187", UnreadyAfter: 5 * time.Minute}, ""},
		{"from the environment", "http:\n  listen: ${METRICS_ADDR}\n", map[string]string{"METRICS_ADDR": "localhost:9100"}, HTTP{Listen: "localhost:9100", UnreadyAfter: 5 * time.Minute}, ""},
		{"variable set to empty: no server", "http:\n  listen: ${METRICS_ADDR}\n", map[string]string{"METRICS_ADDR": ""}, HTTP{UnreadyAfter: 5 * time.Minute}, ""},
		{"no port", "http:\n  listen: 127.0.0.1\n", nil, HTTP{}, `p.yaml:11: http.listen: "127.0.0.1" is not host:port; ` + fix},
		{"port zero", "http:\n  listen: 127.0.0.1:0\n", nil, HTTP{}, `p.yaml:11: http.listen: "127.0.0.1:0" has the port "0", not a number from 1 to 65535; ` + fix},
		{"named port", "http:\n  listen: 'localhost:http'\n", nil, HTTP{}, `p.yaml:11: http.listen: "localhost:http" has the port "http", not a number from 1 to 65535; ` + fix},
		{"bad threshold", "http:\n  unready_after: 0s\n", nil, HTTP{}, `p.yaml:11: http.unready_after: "0s" is not a positive duration; fix: write e.g. unready_after: 5m`},
		{"unknown key", "http:\n  port: 9187\n", nil, HTTP{}, `p.yaml:11: http.port: unknown key "port"; allowed: listen, unready_after`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vars := baseEnv()
			for k, v := range tt.env {
				vars[k] = v
			}
			cfg, err := Parse("p.yaml", []byte(minimal+tt.section), env(vars))
			if tt.err != "" {
				require.Error(t, err)
				assert.Equal(t, tt.err, err.Error())
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, cfg.HTTP)
		})
	}
}

func TestOnDeletePolicies(t *testing.T) {
	tests := []struct {
		name, extra string
		policy      string
		md          map[string]any
		err         string
	}{
		{"default ignore", "", OnDeleteIgnore, nil, ""},
		{"mark with the default metadata", "  on_delete: mark\n", OnDeleteMark, map[string]any{"deleted": true}, ""},
		{"mark with typed metadata", "  on_delete: mark\n  on_delete_metadata:\n    status: churned\n    active: false\n    seats: 0\n    plan: null\n",
			OnDeleteMark, map[string]any{"status": "churned", "active": false, "seats": json.Number("0"), "plan": nil}, ""},
		{"delete", "  on_delete: delete\n", OnDeleteDelete, nil, ""},
		{"unknown policy", "  on_delete: erase\n", "", nil,
			`p.yaml:10: companies.on_delete: "erase" is not a policy; fix: write ignore (log it, the default), mark (send on_delete_metadata) or delete (Userpilot's delete API, a GDPR erasure)`},
		{"metadata without mark", "  on_delete_metadata:\n    deleted: true\n", "", nil,
			`p.yaml:10: companies.on_delete_metadata: is used only with on_delete: mark; fix: remove it, or write on_delete: mark`},
		{"structured metadata value", "  on_delete: mark\n  on_delete_metadata:\n    tags: [a, b]\n", "", nil,
			`p.yaml:12: companies.on_delete_metadata.tags: must be a string, number, boolean or null (Userpilot takes only primitives), not a list`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("p.yaml", []byte(minimal+tt.extra), env(baseEnv()))
			if tt.err != "" {
				require.Error(t, err)
				assert.Equal(t, tt.err, err.Error())
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.policy, cfg.Companies.OnDelete)
			assert.Equal(t, tt.md, cfg.Companies.OnDeleteMetadata)
		})
	}
}

func TestFailoverSlot(t *testing.T) {
	on := strings.Replace(minimal, "  url: ${DATABASE_URL}\n", "  url: ${DATABASE_URL}\n  failover_slot: true\n", 1)
	cfg, err := Parse("p.yaml", []byte(on), env(baseEnv()))
	require.NoError(t, err)
	assert.True(t, cfg.Postgres.FailoverSlot)
	cfg, err = Parse("p.yaml", []byte(minimal), env(baseEnv()))
	require.NoError(t, err)
	assert.False(t, cfg.Postgres.FailoverSlot, "off by default")
	_, err = Parse("p.yaml", []byte(strings.Replace(on, "true", "yes please", 1)), env(baseEnv()))
	require.Error(t, err)
	assert.Contains(t, err.Error(), `p.yaml:3: postgres.failover_slot: "yes please" is not true or false`)
}
