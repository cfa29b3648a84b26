package mapping

import (
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
