// Package pgtest starts throw-away Postgres servers (initdb into a temporary
// directory, wal_level=logical, a free port on 127.0.0.1) for pgpilot's tests
// and demo program. pgpilot is tested against real servers, never a mock: the
// behaviour that matters (slots, pgoutput, crash recovery) only exists there.
//
// Options.Major picks the version: Debian's Postgres 15 by default, or 16+
// from the prebuilt binaries scripts/fetch-postgres.sh installs.
// StartStandby makes a physical standby of a running server, for pgpilot
// pointed at a read replica (logical decoding on a standby needs 16+).
//
// The harness runs in CI as root, and Postgres refuses to run as root, so when
// the effective user is root the servers run as the OS user "postgres".
//
// Every function is safe to call from parallel tests; each Server owns its own
// directory, port and process.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DefaultBinDir is where Debian's postgresql-15 package installs the server
// binaries; Options.BinDir and $PGPILOT_PG_BIN override it.
const DefaultBinDir = "/usr/lib/postgresql/15/bin"

// BinDirEnv names the environment variable that overrides DefaultBinDir.
const BinDirEnv = "PGPILOT_PG_BIN"

const (
	superuser    = "postgres"
	readyTimeout = 60 * time.Second
	stopTimeout  = 30 * time.Second
	// portAttempts bounds retries when the free port picked for a new server
	// is taken by someone else before the postmaster binds it.
	portAttempts = 5
)

// Options configures Start. The zero value starts a trust-authenticated
// server with Postgres 15 from Debian's package.
type Options struct {
	// BinDir holds initdb and postgres; it overrides Major. Default: see
	// Major.
	BinDir string
	// Major picks the Postgres major version when BinDir is empty:
	//   - 0: $PGPILOT_PG_BIN if set, else DefaultBinDir (Debian's 15);
	//   - 15: $PGPILOT_PG15_BIN if set, else DefaultBinDir;
	//   - 16 and later: $PGPILOT_PG<N>_BIN if set, else the binaries that
	//     scripts/fetch-postgres.sh N installed (.cache/postgres/N/bin in
	//     the repository, or /var/cache/pgpilot/postgres/N/bin), else
	//     /usr/lib/postgresql/N/bin.
	// When set, a server of any other version is an error.
	Major int
	// Settings are extra postgresql.conf settings; they override the
	// defaults (see Start). Setting "port" pins the port and disables the
	// retry on "address in use".
	Settings map[string]string
	// Password, if set, becomes the superuser "postgres"'s password and TCP
	// connections must authenticate with scram-sha-256; otherwise TCP is
	// trusted. It never appears in an error or log line from this package.
	Password string
	// Logger receives start/stop events; nil discards them.
	Logger *slog.Logger
}

// Server is one running (or stopped) throw-away Postgres cluster.
type Server struct {
	// Host is the address the server listens on, always 127.0.0.1.
	Host string
	// Port is the TCP port the server listens on; Restart reuses it.
	Port int
	// DataDir is the cluster's data directory (owned by the OS user
	// "postgres" when the harness runs as root).
	DataDir string
	// BinDir holds the initdb and postgres binaries used.
	BinDir string

	dir      string // per-server temp dir: data dir, socket, log
	logPath  string
	password string
	version  int
	owner    *osOwner // nil when not root: run as the current user
	log      *slog.Logger

	// settings is what pgtest.conf holds (port included), so a standby
	// starts from its primary's settings.
	settings map[string]string
	// primary and primarySlot are set on a standby: the server it streams
	// from and the physical slot it streams through (dropped by Stop).
	primary     *Server
	primarySlot string

	mu      sync.Mutex
	pm      *postmaster // nil when not running
	removed bool        // Stop has removed dir; the server is gone for good
}

// Start creates a new cluster in a fresh temporary directory and starts it,
// returning once it accepts connections.
//
// Default settings: listen_addresses='127.0.0.1', a free port,
// unix_socket_directories=<the temp dir>, wal_level=logical,
// max_replication_slots=20, max_wal_senders=20, fsync=off,
// full_page_writes=off, synchronous_commit=on, shared_buffers=32MB,
// max_connections=100, log_min_messages=warning, wal_sender_timeout=60s.
//
// On failure nothing is left behind and the error carries the server log.
// ctx bounds only the start-up; the server lives until Stop.
func Start(ctx context.Context, opts Options) (*Server, error) {
	owner, err := lookupOwner()
	if err != nil {
		return nil, err
	}
	binDir, err := findBinDir(opts, owner)
	if err != nil {
		return nil, err
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	dir, err := newServerDir(owner)
	if err != nil {
		return nil, err
	}
	s := &Server{
		Host:     "127.0.0.1",
		DataDir:  filepath.Join(dir, "data"),
		BinDir:   binDir,
		dir:      dir,
		logPath:  filepath.Join(dir, "postgres.log"),
		password: opts.Password,
		owner:    owner,
		log:      logger.With("component", "pgtest", "dir", dir),
	}
	if err := s.start(ctx, opts.Settings, opts.Major); err != nil {
		// Stop is safe here: it kills whatever was started and removes dir.
		_ = s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Server) start(ctx context.Context, extra map[string]string, major int) error {
	if err := s.initdb(ctx); err != nil {
		return err
	}
	if err := s.readVersion(); err != nil {
		return err
	}
	if major != 0 && s.version != major {
		return fmt.Errorf("pgtest: Options.Major is %d but the binaries in %s are Postgres %d; fix Options.BinDir or $%s", major, s.BinDir, s.version, majorBinDirEnv(major))
	}
	if err := s.writeHBA(); err != nil {
		return err
	}
	settings := s.defaultSettings()
	for k, v := range extra {
		settings[k] = v
	}
	pinned := false
	if p, ok := extra["port"]; ok {
		var err error
		if s.Port, err = strconv.Atoi(p); err != nil {
			return fmt.Errorf("pgtest: Settings[\"port\"]=%q is not a port number: %w", p, err)
		}
		pinned = true
	}
	return s.launch(ctx, settings, pinned)
}

// readVersion reads the cluster's major version from PG_VERSION.
func (s *Server) readVersion() error {
	raw, err := os.ReadFile(filepath.Join(s.DataDir, "PG_VERSION"))
	if err != nil {
		return fmt.Errorf("pgtest: read PG_VERSION in %s: %w", s.DataDir, err)
	}
	if s.version, err = strconv.Atoi(strings.TrimSpace(string(raw))); err != nil {
		return fmt.Errorf("pgtest: parse PG_VERSION %q in %s: %w", raw, s.DataDir, err)
	}
	return nil
}

// launch writes settings and starts the postmaster, on a fresh free port
// unless pinned (then settings["port"] must be s.Port).
func (s *Server) launch(ctx context.Context, settings map[string]string, pinned bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.settings = settings
	var err error
	for attempt := 1; ; attempt++ {
		if !pinned {
			if s.Port, err = freePort(); err != nil {
				return err
			}
			settings["port"] = strconv.Itoa(s.Port)
		}
		if err := s.writeSettings(settings); err != nil {
			return err
		}
		err := s.launchLocked(ctx)
		if err == nil {
			s.log.Info("postgres started", "port", s.Port, "version", s.version)
			return nil
		}
		// Between picking the port and the postmaster binding it, another
		// process (often a parallel test's server) may take it: retry.
		if !errors.Is(err, errPortInUse) || pinned || attempt == portAttempts {
			return err
		}
		s.log.Debug("port taken, retrying", "port", s.Port)
	}
}

func (s *Server) defaultSettings() map[string]string {
	return map[string]string{
		"listen_addresses":        s.Host,
		"unix_socket_directories": s.dir,
		"wal_level":               "logical",
		"max_replication_slots":   "20",
		"max_wal_senders":         "20",
		"fsync":                   "off",
		"full_page_writes":        "off",
		// on, not off: with fsync=off a synchronous commit costs one write()
		// (no measurable difference), while off lets Crash lose commits
		// already acknowledged — every time, when Crash follows at once.
		"synchronous_commit": "on",
		"shared_buffers":     "32MB",
		"max_connections":    "100",
		"log_min_messages":   "warning",
		"wal_sender_timeout": "60s",
	}
}

// settingsFile is included from postgresql.conf, so initdb's file stays as
// it was and a port retry only rewrites this one.
const settingsFile = "pgtest.conf"

func (s *Server) writeSettings(settings map[string]string) error {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Written by pgpilot's internal/pgtest for a throw-away test server.\n")
	for _, k := range keys {
		// Quoting every value is valid for every setting type and keeps
		// paths and lists intact.
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(settings[k], "'", "''"))
	}
	if err := s.owner.writeFile(filepath.Join(s.DataDir, settingsFile), []byte(b.String()), 0o600); err != nil {
		return err
	}
	conf := filepath.Join(s.DataDir, "postgresql.conf")
	raw, err := os.ReadFile(conf)
	if err != nil {
		return fmt.Errorf("pgtest: read %s: %w", conf, err)
	}
	include := "include = '" + settingsFile + "'\n"
	if strings.Contains(string(raw), include) {
		return nil
	}
	return s.owner.writeFile(conf, append(raw, "\n"+include...), 0o600)
}

func (s *Server) writeHBA() error {
	method := "trust"
	if s.password != "" {
		method = "scram-sha-256"
	}
	hba := "# Written by pgpilot's internal/pgtest for a throw-away test server.\n" +
		"local all all trust\n" +
		"local replication all trust\n" +
		"host all all 127.0.0.1/32 " + method + "\n" +
		"host replication all 127.0.0.1/32 " + method + "\n"
	return s.owner.writeFile(filepath.Join(s.DataDir, "pg_hba.conf"), []byte(hba), 0o600)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: pick a free port on 127.0.0.1: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// URL returns a libpq URL for database db as the superuser "postgres",
// including the password when the server has one.
func (s *Server) URL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(superuser),
		Host:     net.JoinHostPort(s.Host, strconv.Itoa(s.Port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	if s.password != "" {
		u.User = url.UserPassword(superuser, s.password)
	}
	return u.String()
}

// connect opens a connection to db. The config is built field by field so
// that no connection string holding the password can reach an error message.
func (s *Server) connect(ctx context.Context, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable",
		superuser, net.JoinHostPort(s.Host, strconv.Itoa(s.Port)), url.PathEscape(db)))
	if err != nil {
		return nil, fmt.Errorf("pgtest: build connection config for database %q: %w", db, err)
	}
	cfg.Password = s.password
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgtest: connect to database %q on %s:%d: %w", db, s.Host, s.Port, err)
	}
	return conn, nil
}

// Exec runs sql (with args, if any) in database db on a short-lived
// connection. Without args it uses the simple protocol, so sql may hold
// several statements and statements that refuse to run in a transaction
// block (CREATE DATABASE) work.
func (s *Server) Exec(ctx context.Context, db, sql string, args ...any) error {
	conn, err := s.connect(ctx, db)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("pgtest: exec in database %q on port %d: %w", db, s.Port, err)
	}
	return nil
}

// CreateDatabase creates database name and returns its URL.
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	if err := s.Exec(ctx, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("pgtest: create database %q: %w", name, err)
	}
	return s.URL(name), nil
}

// Version returns the server's major version (e.g. 15), from PG_VERSION.
func (s *Server) Version() int { return s.version }

// Log returns the server log so far (initdb output included), for failure
// messages. It returns "" once Stop has removed the directory.
func (s *Server) Log() string {
	raw, err := os.ReadFile(s.logPath)
	if err != nil {
		return ""
	}
	return string(raw)
}

// logSince returns the log written from offset on, capped to its last 8 KiB
// so an error message stays readable.
func (s *Server) logSince(offset int64) string {
	const maxTail = 8 << 10
	log := s.Log()
	if offset > int64(len(log)) {
		offset = 0
	}
	log = log[offset:]
	if len(log) > maxTail {
		log = "…" + log[len(log)-maxTail:]
	}
	return strings.TrimSpace(log)
}

func (s *Server) logSize() int64 {
	fi, err := os.Stat(s.logPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Stop shuts the server down fast (SIGINT: active sessions are cancelled),
// waits up to 30s before killing it, and removes its directory; for a
// standby it also drops its physical slot on the primary. It is
// idempotent, and safe after Crash or StopKeepData.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return nil
	}
	var errs []error
	if s.pm != nil {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		errs = append(errs, s.pm.stop(ctx, syscall.SIGINT))
		cancel()
		s.pm = nil
	}
	if err := os.RemoveAll(s.dir); err != nil {
		errs = append(errs, fmt.Errorf("pgtest: remove server directory %s: %w", s.dir, err))
	}
	if s.primary != nil {
		errs = append(errs, s.dropPrimarySlot())
	}
	s.removed = true
	s.log.Info("postgres stopped and removed", "port", s.Port)
	return errors.Join(errs...)
}

// StopKeepData shuts the server down cleanly (fast shutdown, a final
// checkpoint) and keeps the data directory, for Restart or for copying it
// to make a standby. If ctx ends first the server is killed and the error
// says so.
func (s *Server) StopKeepData(ctx context.Context) error {
	return s.halt(ctx, syscall.SIGINT, "stop (keep data)")
}

// Crash stops the server the way `pg_ctl stop -m immediate` does (SIGQUIT to
// the postmaster: no checkpoint, crash recovery on the next start), waits
// for it to exit and keeps the data directory for Restart.
// Acknowledged commits survive (WAL is written at commit; only fsync is
// off, and the OS keeps the writes), unless Settings turned
// synchronous_commit off.
func (s *Server) Crash(ctx context.Context) error {
	return s.halt(ctx, syscall.SIGQUIT, "crash")
}

func (s *Server) halt(ctx context.Context, sig syscall.Signal, what string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return fmt.Errorf("pgtest: %s server on port %d: already stopped and removed", what, s.Port)
	}
	if s.pm == nil {
		return fmt.Errorf("pgtest: %s server on port %d: not running; call Restart first", what, s.Port)
	}
	ctx, cancel := context.WithTimeout(ctx, stopTimeout)
	defer cancel()
	err := s.pm.stop(ctx, sig)
	s.pm = nil
	if err != nil {
		return fmt.Errorf("pgtest: %s server on port %d: %w", what, s.Port, err)
	}
	s.log.Info("postgres halted, data kept", "how", what, "port", s.Port)
	return nil
}

// Restart starts the server again on the same port and data directory
// (after Crash or StopKeepData) and waits until it accepts connections,
// crash recovery included.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return fmt.Errorf("pgtest: restart server on port %d: already stopped and removed", s.Port)
	}
	if s.pm != nil {
		return fmt.Errorf("pgtest: restart server on port %d: still running; call Crash or StopKeepData first", s.Port)
	}
	if err := s.launchLocked(ctx); err != nil {
		return fmt.Errorf("pgtest: restart: %w", err)
	}
	s.log.Info("postgres restarted", "port", s.Port)
	return nil
}

// isAuthFailure reports errors that retrying cannot fix (SQLSTATE class 28,
// invalid authorization), so readiness fails at once instead of after 60s.
func isAuthFailure(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "28")
}
