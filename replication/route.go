package replication

import (
	"context"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgpilot/pgpilot/provider"
)

// Route is what opening postgres.url's two kinds of connection showed of
// the way to Postgres.
type Route struct {
	// Pooler is the connection pooler found in the way; nil when none
	// showed itself.
	Pooler *provider.Pooler
	// SQLErr is why the ordinary connection failed; nil when it opened
	// (or was not tried: a pooler found by its address).
	SQLErr error
	// ReplicationErr is why the replication connection, or IDENTIFY_SYSTEM
	// on it, failed; nil when both worked (or were not tried).
	ReplicationErr error
	// KeyPID and BackendPID differ when what answered the connection gave
	// it a cancel key of its own: a pooler or a proxy that speaks the
	// protocol answers for Postgres (a TCP tunnel passes the key through).
	KeyPID, BackendPID uint32
}

// Answered reports whether something between pgpilot and Postgres answered
// for Postgres (see KeyPID).
func (r Route) Answered() bool { return r.BackendPID != 0 && r.KeyPID != r.BackendPID }

// ProbeRoute looks for a connection pooler between pgpilot and Postgres:
// first in postgres.url's hosts (no connection opened), then in how an
// ordinary connection and a replication connection (with IDENTIFY_SYSTEM)
// are answered. It reads and creates nothing, and closes what it opened.
func ProbeRoute(ctx context.Context, url string) Route {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return Route{SQLErr: fmt.Errorf("parse postgres.url: %w", err)}
	}
	endpoints := []provider.Endpoint{{Host: cfg.Host, Port: cfg.Port, User: cfg.User}}
	for _, f := range cfg.Fallbacks {
		endpoints = append(endpoints, provider.Endpoint{Host: f.Host, Port: f.Port, User: cfg.User})
	}
	for _, e := range endpoints {
		if p, ok := provider.PoolerAt(e); ok {
			return Route{Pooler: &p}
		}
	}
	var r Route
	sql, err := ConnectSQL(ctx, url)
	if err != nil {
		r.SQLErr = err
		if p, ok := provider.PoolerRefusal(err, endpoints[0]); ok {
			r.Pooler = &p
		}
		return r
	}
	r.KeyPID = sql.PgConn().PID()
	// The simple protocol: a pooler in transaction mode may not keep a
	// prepared statement between the two messages of the extended one.
	_ = sql.QueryRow(ctx, `SELECT pg_backend_pid()`, pgx.QueryExecModeSimpleProtocol).Scan(&r.BackendPID)
	sql.Close(context.WithoutCancel(ctx))

	repl, err := ConnectReplication(ctx, url)
	if err != nil {
		r.ReplicationErr = err
		if p, ok := provider.PoolerRefusal(err, endpoints[0]); ok {
			r.Pooler = &p
		}
		return r
	}
	defer repl.Close(context.WithoutCancel(ctx))
	if _, err := pglogrepl.IdentifySystem(ctx, repl); err != nil {
		r.ReplicationErr = fmt.Errorf("IDENTIFY_SYSTEM on a replication connection: %w", err)
		if p, ok := provider.PoolerDroppedReplication(err, endpoints[0]); ok {
			r.Pooler = &p
		}
	}
	return r
}
