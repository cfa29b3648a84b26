package config_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/userpilot"
)

// The example file is documentation users copy: it must always load, and
// its mapping must compile against the table it describes.
func TestExampleFileLoadsAndCompiles(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://pgpilot:secret@localhost:5432/app")
	t.Setenv("USERPILOT_API_KEY", "example-key")
	path := filepath.Join("..", "mapping.example.yaml")

	cfg, err := config.Load(path)
	require.NoError(t, err)
	assert.Equal(t, config.Postgres{URL: "postgres://pgpilot:secret@localhost:5432/app", Slot: "pgpilot", Publication: "pgpilot"}, cfg.Postgres)
	assert.Equal(t, config.Userpilot{APIKey: "example-key", Endpoint: userpilot.USEndpoint, RateLimit: 10, BulkRate: 20}, cfg.Userpilot)
	assert.Equal(t, filepath.Join("..", "pgpilot-state"), cfg.State.Dir)
	assert.Equal(t, "public", cfg.Companies.Schema)
	assert.Equal(t, "companies", cfg.Companies.Name)
	assert.Equal(t, "id", cfg.Companies.CompanyID)
	require.Len(t, cfg.Companies.Metadata, 4)

	m, err := mapping.Compile(cfg.Companies, "public.companies", exampleColumns)
	require.NoError(t, err)
	out, err := m.Identify(exampleRow)
	require.NoError(t, err)
	body, err := json.Marshal(out)
	require.NoError(t, err)
	assert.JSONEq(t, `{"company_id": "4711", "metadata": {"name": "Globex", "plan": "pro", "monthly_spend": 1234.50, "created_at": "2024-03-01T09:30:00Z"}}`, string(body))
}

var exampleColumns = []row.Column{
	{Name: "id", TypeOID: pgtype.Int8OID, TypeName: "bigint"},
	{Name: "name", TypeOID: pgtype.TextOID, TypeName: "text"},
	{Name: "plan", TypeOID: pgtype.TextOID, TypeName: "text"}, // an enum, resolved to text by the caller
	{Name: "monthly_spend", TypeOID: pgtype.NumericOID, TypeName: "numeric(12,2)"},
	{Name: "created_at", TypeOID: pgtype.TimestamptzOID, TypeName: "timestamp with time zone"},
}

var exampleRow = []row.Value{
	{Text: []byte("4711")},
	{Text: []byte("Globex")},
	{Text: []byte("pro")},
	{Text: []byte("1234.50")},
	{Text: []byte("2024-03-01 10:30:00+01")},
}

func ExampleCompile() {
	companies := mapping.Companies{
		CompanyID: "id",
		Metadata: []mapping.Field{
			{Key: "name", Column: "name"},
			{Key: "monthly_spend", Column: "monthly_spend"},
			{Key: "signed_up_at", Column: "created_at"},
			{Key: "plan", Column: "plan"},
		},
	}
	m, err := mapping.Compile(companies, "public.companies", exampleColumns)
	if err != nil {
		fmt.Println(err)
		return
	}
	out, err := m.Identify([]row.Value{
		{Text: []byte("4711")},
		{Text: []byte("Globex")},
		{Unchanged: true}, // plan: not sent by Postgres, so left out
		{Text: []byte("1234.50")},
		{Null: true}, // created_at: NULL clears the value in Userpilot
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	body, _ := json.Marshal(out)
	fmt.Println(string(body))
	// Output: {"company_id":"4711","metadata":{"monthly_spend":1234.50,"name":"Globex","signed_up_at":null}}
}

// The derived keys the example file shows, commented out, are read as
// written: a copy into a mapping loads.
func TestExampleDerivedKeysLoad(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "mapping.example.yaml"))
	require.NoError(t, err)
	var keys []string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "    # ") && strings.Contains(line, ": {") {
			keys = append(keys, "    "+strings.TrimPrefix(line, "    # "))
		}
	}
	require.Len(t, keys, 6)
	cfg := "postgres:\n  url: postgres://localhost/app\nuserpilot:\n  api_key: k\ncompanies:\n  table: accounts\n  company_id: id\n  metadata:\n" +
		strings.Join(keys, "\n") + "\n  removed_keys: clear\n"
	c, err := config.Parse("example.yaml", []byte(cfg), func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	assert.Len(t, c.Companies.Metadata, 6)
}

// The users section the example file shows, commented out, loads as
// written once uncommented: beside the companies section, and alone.
func TestExampleUsersSectionLoads(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "mapping.example.yaml"))
	require.NoError(t, err)
	text := string(data)
	start := strings.Index(text, "\n# users:\n")
	require.GreaterOrEqual(t, start, 0, "the example has a commented users: section")
	var section []string
	for _, line := range strings.Split(text[start+1:], "\n") {
		if line != "#" && !strings.HasPrefix(line, "# ") {
			break
		}
		section = append(section, strings.TrimPrefix(strings.TrimPrefix(line, "#"), " "))
	}
	users := strings.Join(section, "\n") + "\n"
	lookup := func(name string) (string, bool) {
		return map[string]string{"DATABASE_URL": "postgres://localhost/app", "USERPILOT_API_KEY": "k"}[name], true
	}

	both, err := config.Parse("mapping.example.yaml", []byte(text+"\n"+users), lookup)
	require.NoError(t, err)
	require.True(t, both.HasCompanies())
	require.True(t, both.HasUsers())
	u := both.Users
	assert.Equal(t, "id", u.UserID)
	assert.Equal(t, "account_id", u.CompanyID)
	assert.Len(t, u.Metadata, 5)
	assert.Len(t, u.Related, 1)
	assert.Equal(t, "assignee_id", u.Related[0].CompanyID)
	assert.Equal(t, "not is_bot", u.Where)

	companies := strings.Index(text, "\ncompanies:\n")
	require.GreaterOrEqual(t, companies, 0)
	alone, err := config.Parse("mapping.example.yaml", []byte(text[:companies+1]+users), lookup)
	require.NoError(t, err)
	assert.False(t, alone.HasCompanies())
	assert.Equal(t, u.Entity().Shape(), alone.Users.Entity().Shape())
}
