package mapping

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
