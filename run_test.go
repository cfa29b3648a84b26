package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/internal/fix"
)

func TestRunLogsItsLastErrorWithTheFixAsAnAttribute(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want map[string]any
	}{
		{"a failure with its fix", fmt.Errorf("stream: %w", fix.With(errors.New(`replication slot "s" is gone`), "run `pgpilot teardown` then `pgpilot run`")),
			map[string]any{"level": "ERROR", "msg": "pgpilot stopped", "error": `stream: replication slot "s" is gone`, "fix": "run `pgpilot teardown` then `pgpilot run`"}},
		{"a configuration problem", fmt.Errorf("%w: checkpoint of another database", daemon.ErrConfig),
			map[string]any{"level": "ERROR", "msg": "pgpilot cannot run with this configuration", "error": "configuration problem: checkpoint of another database"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			logStopped(slog.New(slog.NewJSONHandler(&out, nil)), tt.err)
			var line map[string]any
			require.NoError(t, json.Unmarshal(out.Bytes(), &line), out.String())
			delete(line, "time")
			assert.Equal(t, tt.want, line)
		})
	}
}
