package replication

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

// An empty message from the server is an error the session retries, not a
// panic that ends the process.
func TestAnEmptyMessageIsAnError(t *testing.T) {
	s := &streamer{}
	require.NotPanics(t, func() {
		require.ErrorContains(t, s.handleMessage(context.Background(), nil), "empty")
	})
}
