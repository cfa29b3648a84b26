package config

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
