package config

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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

func TestBulkRateZeroTurnsTheBulkPathOff(t *testing.T) {
	data := strings.Replace(minimal, "  api_key: ${USERPILOT_API_KEY}\n", "  api_key: ${USERPILOT_API_KEY}\n  bulk_rate: 0\n", 1)
	require.Contains(t, data, "bulk_rate: 0")
	cfg, err := Parse("p.yaml", []byte(data), env(baseEnv()))
	require.NoError(t, err)
	assert.Zero(t, cfg.Userpilot.BulkRate)
}
