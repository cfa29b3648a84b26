package replication_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/replication"
)

func TestUsableNamesWhyASlotWasInvalidatedAndWhatToFixFirst(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		walStatus string
		reason    string
		want      []string
	}{
		{"wal removed (15, 16)", "lost", "", []string{"lost WAL it needed (max_slot_wal_keep_size?)"}},
		{"wal removed (17)", "lost", "wal_removed", []string{"lost WAL it needed"}},
		{"catalog rows removed under a standby (17)", "lost", "rows_removed",
			[]string{"needed catalog rows that the primary removed", "set hot_standby_feedback = on on the standby", "primary_slot_name"}},
		{"conflict with recovery (16)", "lost", "conflict",
			[]string{"conflicted with recovery on this standby", "hot_standby_feedback = on", "keep wal_level = logical on the primary"}},
		{"primary's wal_level lowered", "lost", "wal_level_insufficient",
			[]string{"primary's wal_level went below logical", "set wal_level = logical on the primary and restart it"}},
		{"a reason from a later Postgres", "lost", "idle_timeout", []string{"invalidation_reason idle_timeout"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := replication.Slot{Name: "pgpilot", Type: "logical", Plugin: "pgoutput", Database: "app",
				WALStatus: tt.walStatus, InvalidationReason: tt.reason}
			err := s.Usable("app")
			require.ErrorIs(t, err, replication.ErrSlotLost)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.Contains(t, err.Error(), "run `pgpilot teardown` then `pgpilot run` to start over with a full re-send")
		})
	}
	healthy := replication.Slot{Name: "pgpilot", Type: "logical", Plugin: "pgoutput", Database: "app", WALStatus: "reserved"}
	assert.NoError(t, healthy.Usable("app"))
}

// TestAMissingPublicationIsToldFromAMissingSlot: both are undefined_object
// (42704) from START_REPLICATION; only the publication's is a DBA's DROP
// that a start over cures.
func TestAMissingPublicationIsToldFromAMissingSlot(t *testing.T) {
	pub := fmt.Errorf("replication stream: %w", &pgconn.PgError{Code: "42704", Message: `publication "pgpilot" does not exist`})
	slot := fmt.Errorf("start replication: %w", &pgconn.PgError{Code: "42704", Message: `replication slot "pgpilot" does not exist`})
	assert.True(t, replication.IsPublicationMissing(pub))
	assert.False(t, replication.IsPublicationMissing(slot))
	assert.False(t, replication.IsPublicationMissing(errors.New(`publication "pgpilot" does not exist`)), "by its code, not its words alone")
	assert.False(t, replication.IsPublicationMissing(nil))
}
