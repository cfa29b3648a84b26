package pgtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// standbyCounter makes physical slot names unique across the process.
var standbyCounter atomic.Int64

// StartStandby makes a physical standby of s, a running primary, and
// starts it on its own port, returning once it accepts (read-only)
// connections and streams from s.
//
// The standby is a copy of s's data directory taken while s is cleanly
// stopped (s is stopped and restarted on its port: its open connections
// break), because the prebuilt binaries for 16+ ship no pg_basebackup. It
// streams through a physical slot on s with hot_standby_feedback=on, so the
// primary keeps the WAL and the catalog rows that logical decoding on the
// standby needs (without them a logical slot there is invalidated). Stop
// drops that slot. Crash, Restart and StopKeepData work on the standby as on
// any server.
func (s *Server) StartStandby(ctx context.Context) (*Server, error) {
	s.mu.Lock()
	running, settings := s.pm != nil, maps.Clone(s.settings)
	s.mu.Unlock()
	if !running {
		return nil, fmt.Errorf("pgtest: start a standby of the server on port %d: it is not running; call Restart first", s.Port)
	}
	if s.primary != nil {
		return nil, fmt.Errorf("pgtest: start a standby of the server on port %d: it is itself a standby; cascading standbys are not supported, use its primary", s.Port)
	}
	dir, err := newServerDir(s.owner)
	if err != nil {
		return nil, err
	}
	st := &Server{
		Host:        s.Host,
		DataDir:     filepath.Join(dir, "data"),
		BinDir:      s.BinDir,
		dir:         dir,
		logPath:     filepath.Join(dir, "postgres.log"),
		password:    s.password,
		version:     s.version,
		owner:       s.owner,
		log:         s.log.With("standby_dir", dir),
		primary:     s,
		primarySlot: "pgtest_standby_" + strconv.FormatInt(standbyCounter.Add(1), 10),
	}
	if err := st.startAsStandby(ctx, settings); err != nil {
		// Stop kills what was started, removes dir and drops the slot.
		_ = st.Stop()
		return nil, fmt.Errorf("pgtest: start a standby of the server on port %d: %w", s.Port, err)
	}
	return st, nil
}

func (st *Server) startAsStandby(ctx context.Context, settings map[string]string) error {
	p := st.primary
	// Reserved now, so the WAL from the copy's checkpoint on stays until the
	// standby connects and takes the slot over.
	if err := p.Exec(ctx, "postgres", "SELECT pg_create_physical_replication_slot($1, true)", st.primarySlot); err != nil {
		return err
	}
	if err := p.StopKeepData(ctx); err != nil {
		return err
	}
	copyErr := copyDataDir(p.DataDir, st.DataDir, st.owner)
	if err := p.Restart(ctx); err != nil {
		return errors.Join(copyErr, fmt.Errorf("restart the primary after copying its data directory: %w", err))
	}
	if copyErr != nil {
		return copyErr
	}
	if err := st.owner.writeFile(filepath.Join(st.DataDir, "standby.signal"), nil, 0o600); err != nil {
		return err
	}
	delete(settings, "port")
	settings["unix_socket_directories"] = st.dir
	settings["hot_standby"] = "on"
	settings["hot_standby_feedback"] = "on"
	settings["primary_slot_name"] = st.primarySlot
	settings["primary_conninfo"] = st.primaryConninfo()
	if err := st.launch(ctx, settings, false); err != nil {
		return err
	}
	return st.waitStreaming(ctx)
}

// primaryConninfo is the libpq connection string the standby's WAL receiver
// uses. It holds the password when there is one: it lives only in the
// standby's own (0600) settings file, never in an error or log line.
func (st *Server) primaryConninfo() string {
	quote := func(v string) string {
		return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
	}
	ci := fmt.Sprintf("host=%s port=%d user=%s application_name=%s sslmode=disable",
		st.primary.Host, st.primary.Port, superuser, st.primarySlot)
	if st.password != "" {
		ci += " password=" + quote(st.password)
	}
	return ci
}

// waitStreaming waits until the standby's WAL receiver streams from the
// primary: before that, nothing written on the primary reaches it.
func (st *Server) waitStreaming(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	offset := int64(0)
	var status string
	for {
		err := st.queryRow(ctx, "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'not started')", nil, &status)
		if err == nil && status == "streaming" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("standby on port %d does not stream from the primary on port %d (receiver: %s, last error: %v): %w\nstandby log:\n%s",
				st.Port, st.primary.Port, status, err, ctx.Err(), st.logSince(offset))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// IsStandby reports whether s was made by StartStandby.
func (s *Server) IsStandby() bool { return s.primary != nil }

// WaitReplayed waits until the standby s has replayed everything its
// primary had flushed when it was called, so what was committed on the
// primary can be read on the standby.
func (s *Server) WaitReplayed(ctx context.Context) error {
	if s.primary == nil {
		return fmt.Errorf("pgtest: wait for replay on the server on port %d: it is not a standby", s.Port)
	}
	var target string
	if err := s.primary.queryRow(ctx, "SELECT pg_current_wal_flush_lsn()::text", nil, &target); err != nil {
		return fmt.Errorf("pgtest: read the primary's WAL position: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var replayed *string
	for {
		var done bool
		err := s.queryRow(ctx, "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false), pg_last_wal_replay_lsn()::text",
			[]any{target}, &done, &replayed)
		if err == nil && done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: standby on port %d has not replayed up to %s (at %v, last error: %v): %w", s.Port, target, deref(replayed), err, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return "nothing"
	}
	return *s
}

// queryRow scans the one row of query (with args) in database postgres into
// dest, on a short-lived connection.
func (s *Server) queryRow(ctx context.Context, query string, args []any, dest ...any) error {
	conn, err := s.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return conn.QueryRow(ctx, query, args...).Scan(dest...)
}

// dropPrimarySlot removes the standby's physical slot from its primary,
// best effort: a primary already gone took the slot with it.
func (st *Server) dropPrimarySlot() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	for {
		// The primary's walsender may not have noticed yet that the
		// standby is gone: then the slot is still active (55006).
		err = st.primary.Exec(ctx, "postgres",
			"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", st.primarySlot)
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: drop physical slot %q on the primary: %w", st.primarySlot, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err != nil && pgconnFailed(err) {
		return nil // the primary is down or removed: nothing to clean
	}
	return err
}

// pgconnFailed reports a failure to reach the server at all.
func pgconnFailed(err error) bool {
	var connErr *pgconn.ConnectError
	return errors.As(err, &connErr)
}

// copyDataDir copies a stopped cluster's data directory from src to dst as a
// new standby's, giving it to owner. It leaves out the primary's
// replication slots (pg_basebackup does too: a copied slot would hold WAL
// on the standby for nobody) and its postmaster files.
func copyDataDir(src, dst string, owner *osOwner) error {
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if rel == "postmaster.pid" || rel == "postmaster.opts" {
			return nil
		}
		if filepath.Dir(rel) == "pg_replslot" {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, info.Mode().Perm()); err != nil {
				return err
			}
		case info.Mode()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
			if owner != nil {
				return os.Lchown(target, int(owner.uid), int(owner.gid))
			}
			return nil
		case info.Mode().IsRegular():
			if err := copyFile(path, target, info.Mode().Perm()); err != nil {
				return err
			}
		default:
			return nil // sockets and the like: not part of a cluster's state
		}
		return owner.chown(target)
	})
	if err != nil {
		return fmt.Errorf("copy data directory %s to %s: %w", src, dst, err)
	}
	return nil
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
