package replication

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Slot is a replication slot as found in pg_replication_slots.
type Slot struct {
	Name, Plugin, Type, Database string
	Active                       bool
	ActivePID                    *int32
	ConfirmedFlush, Restart      pglogrepl.LSN
	// WALStatus is reserved, extended, unreserved or lost ("lost": the
	// server removed WAL the slot needed, or invalidated the slot for
	// another reason; it can never be used again).
	WALStatus string
	// InvalidationReason is why Postgres invalidated the slot, "" if it did
	// not: Postgres 17's pg_replication_slots.invalidation_reason
	// (wal_removed, rows_removed, wal_level_insufficient, ...), or, on 16,
	// "conflict" when the slot conflicted with recovery on a standby.
	InvalidationReason string
}

// ReadSlot reads slot name; ok is false when it does not exist.
func ReadSlot(ctx context.Context, conn *pgx.Conn, name string) (s Slot, ok bool, err error) {
	var plugin, database, walStatus, reason, conflicting *string
	var confirmed, restart *string
	// The invalidation columns exist only on newer servers (conflicting
	// since 16, invalidation_reason since 17): read through to_jsonb so
	// one query serves every version.
	err = conn.QueryRow(ctx, `
		SELECT slot_name::text, plugin::text, slot_type, database::text, active, active_pid,
		       confirmed_flush_lsn::text, restart_lsn::text, wal_status,
		       to_jsonb(s) ->> 'invalidation_reason', to_jsonb(s) ->> 'conflicting'
		FROM pg_replication_slots s WHERE slot_name = $1`, name).
		Scan(&s.Name, &plugin, &s.Type, &database, &s.Active, &s.ActivePID, &confirmed, &restart, &walStatus, &reason, &conflicting)
	if errors.Is(err, pgx.ErrNoRows) {
		return Slot{}, false, nil
	}
	if err != nil {
		return Slot{}, false, fmt.Errorf("read replication slot %q: %w", name, err)
	}
	s.Plugin, s.Database, s.WALStatus = deref(plugin), deref(database), deref(walStatus)
	s.InvalidationReason = deref(reason)
	if s.InvalidationReason == "" && deref(conflicting) == "true" {
		s.InvalidationReason = "conflict"
	}
	if confirmed != nil {
		s.ConfirmedFlush, _ = pglogrepl.ParseLSN(*confirmed)
	}
	if restart != nil {
		s.Restart, _ = pglogrepl.ParseLSN(*restart)
	}
	return s, true, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// ErrSlotLost is wrapped when the slot was invalidated by the server.
var ErrSlotLost = errors.New("replication slot was invalidated")

// Usable says why s cannot serve pgpilot in database db, or nil.
func (s Slot) Usable(db string) error {
	switch {
	case s.Type != "logical":
		return fmt.Errorf("replication slot %q is a %s slot, not logical; choose another postgres.slot name", s.Name, s.Type)
	case s.Plugin != "pgoutput":
		return fmt.Errorf("replication slot %q uses plugin %q, pgpilot needs pgoutput; choose another postgres.slot name", s.Name, s.Plugin)
	case s.Database != db:
		return fmt.Errorf("replication slot %q belongs to database %q, not %q; choose another postgres.slot name", s.Name, s.Database, db)
	case s.WALStatus == "lost" || s.InvalidationReason != "":
		cause, fixFirst := s.invalidation()
		return fmt.Errorf("%w: %q %s, so changes were lost to it; %s"+
			"run `pgpilot teardown` then `pgpilot run` to start over with a full re-send", ErrSlotLost, s.Name, cause, fixFirst)
	}
	return nil
}

// invalidation says why the slot was invalidated, and what to fix first so
// the next slot does not meet the same end: on a standby the cause is often
// not WAL at all but the primary's vacuum or its wal_level.
func (s Slot) invalidation() (cause, fixFirst string) {
	const feedback = "set hot_standby_feedback = on on the standby, with primary_slot_name naming a physical slot on the primary"
	switch s.InvalidationReason {
	case "", "wal_removed":
		return "lost WAL it needed (max_slot_wal_keep_size?)", ""
	case "rows_removed":
		return "needed catalog rows that the primary removed (hot_standby_feedback off, or no physical slot between primary and standby)",
			feedback + "; after that, "
	case "conflict":
		return "conflicted with recovery on this standby (the primary removed catalog rows it needed, or its wal_level went below logical)",
			feedback + ", and keep wal_level = logical on the primary; after that, "
	case "wal_level_insufficient":
		return "cannot decode since the primary's wal_level went below logical", "set wal_level = logical on the primary and restart it; after that, "
	default:
		return fmt.Sprintf("was invalidated by Postgres (invalidation_reason %s)", s.InvalidationReason), ""
	}
}

// CreatedSlot is a slot just created, with the snapshot it exported.
type CreatedSlot struct {
	// ConsistentPoint is where the slot's stream starts: every transaction
	// committed before it is in the snapshot, every one after in the stream.
	ConsistentPoint pglogrepl.LSN
	// SnapshotName can be imported with SET TRANSACTION SNAPSHOT until the
	// next command on the replication connection that created it.
	SnapshotName string
}

// SlotOptions are how a slot is created.
type SlotOptions struct {
	// Failover (Postgres 17+, on a primary) marks the slot for
	// synchronisation to standbys that set sync_replication_slots, so it
	// survives a failover.
	Failover bool
}

// CreateSlot creates logical slot name (pgoutput) on conn, exporting its
// snapshot.
func CreateSlot(ctx context.Context, conn *pgconn.PgConn, name string, o SlotOptions) (CreatedSlot, error) {
	// The option list (Postgres 15+) rather than the old EXPORT_SNAPSHOT
	// keyword, because FAILOVER exists only there.
	options := "(SNAPSHOT 'export')"
	if o.Failover {
		options = "(SNAPSHOT 'export', FAILOVER true)"
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, conn, pgx.Identifier{name}.Sanitize(), "pgoutput", pglogrepl.CreateReplicationSlotOptions{
		Mode:           pglogrepl.LogicalReplication,
		SnapshotAction: options,
	})
	if err != nil {
		return CreatedSlot{}, fmt.Errorf("create replication slot %q: %w", name, err)
	}
	lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return CreatedSlot{}, fmt.Errorf("create replication slot %q: consistent point: %w", name, err)
	}
	return CreatedSlot{ConsistentPoint: lsn, SnapshotName: res.SnapshotName}, nil
}

// DropSlot drops slot name, waiting up to a few seconds for a walsender that
// is shutting down to let go of it.
func DropSlot(ctx context.Context, conn *pgx.Conn, name string) error {
	var err error
	for range 50 {
		_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, name)
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" { // object_in_use
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("drop replication slot %q: %w", name, err)
	}
	return nil
}

// IsSlotActive reports whether err is Postgres saying another process is
// streaming from the slot (it is busy, not broken: retry later).
func IsSlotActive(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55006"
}

// CurrentLSN is the server's current WAL position: the insert position on a
// primary, the replayed position on a standby.
func CurrentLSN(ctx context.Context, conn *pgx.Conn) (pglogrepl.LSN, error) {
	var s string
	err := conn.QueryRow(ctx, `SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text`).Scan(&s)
	if err != nil {
		return 0, fmt.Errorf("read the server's WAL position: %w", err)
	}
	return pglogrepl.ParseLSN(s)
}

// RetainedWAL is how many bytes of WAL slot name holds back on the server
// (its restart_lsn to the server's current position); 0 when the slot does
// not exist.
func RetainedWAL(ctx context.Context, conn *pgx.Conn, name string) (int64, error) {
	var n *int64
	err := conn.QueryRow(ctx, `
		SELECT ((CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END) - restart_lsn)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, name).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && n == nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read retained WAL of slot %q: %w", name, err)
	}
	return *n, nil
}
