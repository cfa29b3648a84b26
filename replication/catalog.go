package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/provider"
	"github.com/pgpilot/pgpilot/row"
)

// Server is what pgpilot needs to know about the Postgres it talks to.
type Server struct {
	// Version is server_version_num, e.g. 150004.
	Version    int
	InRecovery bool
	WALLevel   string
	Database   string
	// WALSenderTimeout is how long the server waits for a status update
	// before it drops a replication connection; 0: never.
	WALSenderTimeout time.Duration
	// Provider is where the server runs, which decides how each problem
	// is fixed.
	Provider provider.Server
}

// Major is the major version, e.g. 15.
func (s Server) Major() int { return s.Version / 10000 }

// ReadServer reads version, recovery state, wal_level and database, and
// recognises the provider.
func ReadServer(ctx context.Context, conn *pgx.Conn) (Server, error) {
	var s Server
	var timeoutMS int64
	err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, pg_is_in_recovery(),
		current_setting('wal_level'), current_database(),
		(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_sender_timeout')`).
		Scan(&s.Version, &s.InRecovery, &s.WALLevel, &s.Database, &timeoutMS)
	if err != nil {
		return Server{}, fmt.Errorf("read server settings: %w", err)
	}
	s.WALSenderTimeout = time.Duration(timeoutMS) * time.Millisecond
	if s.Provider, err = provider.Detect(ctx, conn, conn.Config().Host); err != nil {
		return Server{}, err
	}
	return s, nil
}

// StatusInterval is how often a stream must report to this server to stay
// well inside wal_sender_timeout, even while it is not reading.
func (s Server) StatusInterval() time.Duration {
	if s.WALSenderTimeout <= 0 {
		return 10 * time.Second
	}
	return min(10*time.Second, max(100*time.Millisecond, s.WALSenderTimeout/3))
}

// CheckServer refuses servers that cannot serve a logical slot, saying why
// and, as the error's fix, how to fix it where the server runs.
func (s Server) CheckServer() error {
	if s.WALLevel != "logical" {
		return fix.With(fmt.Errorf("wal_level is %q, logical decoding needs \"logical\"", s.WALLevel),
			s.Provider.LogicalDecodingFix())
	}
	if s.InRecovery {
		return s.Provider.Provider.ReplicaProblem(s.Version)
	}
	return nil
}

// ErrTableMissing is wrapped when the mapped table does not exist.
var ErrTableMissing = errors.New("table does not exist")

// TableColumns lists t's columns in attribute order, with their types
// resolved for decoding.
func TableColumns(ctx context.Context, conn *pgx.Conn, t row.Table) ([]row.Column, error) {
	rows, err := conn.Query(ctx, `
		SELECT a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod)
		FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, t.Schema, t.Name)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", t, err)
	}
	var cols []row.Column
	for rows.Next() {
		var c row.Column
		if err := rows.Scan(&c.Name, &c.TypeOID, &c.TypeName); err != nil {
			return nil, fmt.Errorf("read columns of %s: %w", t, err)
		}
		cols = append(cols, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", t, err)
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("%w: %s (check companies.table in the config, and that this role can see it)", ErrTableMissing, t)
	}
	types := NewTypeResolver(conn)
	for i := range cols {
		if cols[i].TypeOID, err = types.Resolve(ctx, cols[i].TypeOID); err != nil {
			return nil, err
		}
	}
	return cols, nil
}

// GeneratedColumns returns t's generated columns, each with its
// expression. Postgres (before 18, and by default since) leaves them out
// of what logical replication streams: a mapping that reads one would be
// sent by a snapshot and never again.
func GeneratedColumns(ctx context.Context, conn *pgx.Conn, t row.Table) (map[string]string, error) {
	rows, err := conn.Query(ctx, `
		SELECT a.attname, pg_get_expr(d.adbin, d.adrelid)
		FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> ''`, t.Schema, t.Name)
	if err != nil {
		return nil, fmt.Errorf("read the generated columns of %s: %w", t, err)
	}
	out := map[string]string{}
	for rows.Next() {
		var name, expr string
		if err := rows.Scan(&name, &expr); err != nil {
			return nil, fmt.Errorf("read the generated columns of %s: %w", t, err)
		}
		out[name] = expr
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the generated columns of %s: %w", t, err)
	}
	return out, nil
}

// TypeResolver maps a column's type OID to one pgx's type map can decode.
// Results are cached: a type's nature does not change under a running daemon
// in a way that matters (ALTER DOMAIN cannot change the base type).
type TypeResolver struct {
	conn  *pgx.Conn
	known *pgtype.Map
	cache map[uint32]uint32
	names map[[2]int64]string
}

// NewTypeResolver resolves with catalog queries on conn.
func NewTypeResolver(conn *pgx.Conn) *TypeResolver {
	return &TypeResolver{conn: conn, known: pgtype.NewMap(), cache: map[uint32]uint32{}, names: map[[2]int64]string{}}
}

// Resolve returns the OID to decode oid's text with: oid itself for types pgx
// knows, the base type for a domain (recursively), text for enums and
// string-category types, and oid itself otherwise (the mapping then refuses
// it unless told to send its text).
func (r *TypeResolver) Resolve(ctx context.Context, oid uint32) (uint32, error) {
	if _, ok := r.known.TypeForOID(oid); ok {
		return oid, nil
	}
	if v, ok := r.cache[oid]; ok {
		return v, nil
	}
	cur := oid
	for range 32 { // domains over domains, bounded
		var typtype, category string
		var base uint32
		err := r.conn.QueryRow(ctx, `SELECT typtype::text, typbasetype, typcategory::text FROM pg_type WHERE oid = $1`, cur).
			Scan(&typtype, &base, &category)
		if err != nil {
			return 0, fmt.Errorf("look up type %d: %w", cur, err)
		}
		switch {
		case typtype == "d":
			cur = base
			if _, ok := r.known.TypeForOID(cur); ok {
				r.cache[oid] = cur
				return cur, nil
			}
			continue
		case typtype == "e", category == "S":
			r.cache[oid] = pgtype.TextOID
			return pgtype.TextOID, nil
		}
		break
	}
	r.cache[oid] = cur
	return cur, nil
}

// Name is the type as format_type prints it (e.g. "numeric(38,10)"), for
// messages.
func (r *TypeResolver) Name(ctx context.Context, oid uint32, typmod int32) (string, error) {
	key := [2]int64{int64(oid), int64(typmod)}
	if n, ok := r.names[key]; ok {
		return n, nil
	}
	var n string
	if err := r.conn.QueryRow(ctx, `SELECT format_type($1, $2)`, oid, typmod).Scan(&n); err != nil {
		return "", fmt.Errorf("look up the name of type %d: %w", oid, err)
	}
	r.names[key] = n
	return n, nil
}

// ReplicaIdentityProblem says why UPDATEs on t would fail once t is in a
// publication, or returns "" when they would not. Creating a publication on
// a table with no replica identity makes the application's own UPDATEs and
// DELETEs fail, so pgpilot checks before it creates one.
func ReplicaIdentityProblem(ctx context.Context, conn *pgx.Conn, t row.Table) (string, error) {
	var ident string
	var hasPK bool
	err := conn.QueryRow(ctx, `
		SELECT c.relreplident::text,
		       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, t.Schema, t.Name).Scan(&ident, &hasPK)
	if err != nil {
		return "", fmt.Errorf("read replica identity of %s: %w", t, err)
	}
	var fix string
	if ident == "n" || ident == "d" && !hasPK {
		cheapest, err := IdentityFix(ctx, conn, t, "")
		if err != nil {
			return "", err
		}
		fix = "add a primary key, or " + cheapest
	}
	switch {
	case ident == "n":
		return fmt.Sprintf("%s has REPLICA IDENTITY NOTHING: once published, its UPDATEs and DELETEs would fail; %s", t, fix), nil
	case ident == "d" && !hasPK:
		return fmt.Sprintf("%s has no primary key and REPLICA IDENTITY DEFAULT: once published, its UPDATEs and DELETEs would fail; %s", t, fix), nil
	}
	return "", nil
}

// quoteLiteral quotes s as an SQL string literal (for statements shown to
// the operator and for replication commands, which take no parameters).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// PickColumns keeps the columns named in names, in table order.
func PickColumns(cols []row.Column, names []string) []row.Column {
	var out []row.Column
	for _, c := range cols {
		if slices.Contains(names, c.Name) {
			out = append(out, c)
		}
	}
	return out
}
