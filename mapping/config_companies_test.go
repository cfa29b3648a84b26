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

func TestPIITrueAcknowledgesAKeyAndAnythingElseIsRefused(t *testing.T) {
	data := minimal + "    contact: {column: contact_email, pii: true}\n    phone: {column: phone, type: string, pii: false}\n    owner: owner_email\n"
	cfg, err := Parse("p.yaml", []byte(data), env(baseEnv()))
	require.NoError(t, err)
	assert.Equal(t, []Field{
		{Key: "name", Column: "name", Line: 9},
		{Key: "contact", Column: "contact_email", Line: 10, PII: true},
		{Key: "phone", Column: "phone", Type: TypeString, Line: 11},
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
