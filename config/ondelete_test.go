package config

import (
	"encoding/json"
	"github.com/pgpilot/pgpilot/mapping"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestOnDeletePolicies(t *testing.T) {
	tests := []struct {
		name, extra string
		policy      string
		md          map[string]any
		err         problem
	}{
		{"default ignore", "", mapping.OnDeleteIgnore, nil, problem{}},
		{"mark with the default metadata", "  on_delete: mark\n", mapping.OnDeleteMark, map[string]any{"deleted": true}, problem{}},
		{"mark with typed metadata", "  on_delete: mark\n  on_delete_metadata:\n    status: churned\n    active: false\n    seats: 0\n    plan: null\n",
			mapping.OnDeleteMark, map[string]any{"status": "churned", "active": false, "seats": json.Number("0"), "plan": nil}, problem{}},
		{"delete", "  on_delete: delete\n", mapping.OnDeleteDelete, nil, problem{}},
		{"unknown policy", "  on_delete: erase\n", "", nil,
			problem{`p.yaml:10: companies.on_delete: "erase" is not a policy`, `write ignore (log it, the default), mark (send on_delete_metadata) or delete (Userpilot's delete API, a GDPR erasure)`}},
		{"metadata without mark", "  on_delete_metadata:\n    deleted: true\n", "", nil,
			problem{`p.yaml:10: companies.on_delete_metadata: is used only with on_delete: mark`, `remove it, or write on_delete: mark`}},
		{"structured metadata value", "  on_delete: mark\n  on_delete_metadata:\n    tags: [a, b]\n", "", nil,
			problem{`p.yaml:12: companies.on_delete_metadata.tags: must be a string, number, boolean or null (Userpilot takes only primitives), not a list`, ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("p.yaml", []byte(minimal+tt.extra), env(baseEnv()))
			if tt.err != (problem{}) {
				assert.Equal(t, []problem{tt.err}, fixedProblems(t, err))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.policy, cfg.Companies.OnDelete)
			assert.Equal(t, tt.md, cfg.Companies.OnDeleteMetadata)
		})
	}
}
