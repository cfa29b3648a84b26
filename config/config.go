package config

import (
	"fmt"
	"os"
	"time"

	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/state"
)

// Each setting's default is declared by the package it configures (e.g.
// userpilot.DefaultRateLimit, delivery.DefaultOutboxAfter) and used both
// here, for a key left out of the file, and by that package, for a zero
// option: one value each. The slot and publication names are only the
// file's (no package names them otherwise), so they are declared here.
const (
	DefaultSlot        = "pgpilot"
	DefaultPublication = "pgpilot"
)

// Config is a loaded and validated configuration file. Every field holds its
// final value: defaults applied, ${VAR} references replaced, state.dir
// resolved.
type Config struct {
	// Warnings are problems that do not stop pgpilot but that an operator
	// should hear of (a world-readable file holding a secret).
	Warnings []string

	literalSecrets []string // secrets written in the file rather than taken from the environment

	Path      string // the file it was loaded from (for messages)
	Postgres  Postgres
	Userpilot Userpilot
	State     State
	Delivery  Delivery
	HTTP      HTTP
	// Companies is the companies: section, Users the users: section; a
	// file has either or both (HasCompanies, HasUsers), and the one left
	// out is the zero value.
	Companies mapping.Companies
	Users     mapping.Users
}

// HasCompanies reports whether the file has a companies: section.
func (c *Config) HasCompanies() bool { return c.Companies.Table != "" }

// HasUsers reports whether the file has a users: section.
func (c *Config) HasUsers() bool { return c.Users.Table != "" }

// Entities are the sections the file syncs, each as the stages take it
// (a users section through mapping.Users.Entity): companies first, then
// users.
func (c *Config) Entities() []mapping.Companies {
	var out []mapping.Companies
	if c.HasCompanies() {
		out = append(out, c.Companies)
	}
	if c.HasUsers() {
		out = append(out, c.Users.Entity())
	}
	return out
}

// Postgres says where the source database is and which replication objects
// pgpilot owns there.
type Postgres struct {
	URL         string // libpq URL or key=value string; holds the password, never print it
	Slot        string // logical replication slot name; default "pgpilot"
	Publication string // publication name, used as written; default "pgpilot"
	// FailoverSlot creates the slot with FAILOVER true (Postgres 17+, on a
	// primary), so standbys with sync_replication_slots keep it in step
	// and it survives a failover.
	FailoverSlot bool
}

// Userpilot says where identify calls go and how fast.
type Userpilot struct {
	APIKey    string  // sent as "Authorization: Token <key>"; never print it
	Endpoint  string  // base URL without trailing slash; default https://analytex.userpilot.io
	RateLimit float64 // requests per second, > 0; default 10
	// APIKeyFile, when set instead of api_key, is a file holding the key
	// (a Kubernetes secret, say); Load reads it into APIKey.
	APIKeyFile     string
	APIKeyFileLine int
	// BulkRate is where the estimate of how many records per second
	// Userpilot's bulk jobs process starts (>= 0; 0 turns the bulk path
	// off); default 20, the lower published figure (1,200 per minute).
	// pgpilot splits a backlog between the real-time and bulk paths by the
	// estimate, which it measures from every completed job.
	BulkRate float64
}

// Delivery says when pgpilot stops holding the slot back during a Userpilot
// outage and keeps pending changes in its outbox instead.
type Delivery struct {
	// MaxRetainedWAL is the slot's retained WAL, in bytes, above which
	// outbox mode starts; 0: never for that reason. Default 256 MB.
	MaxRetainedWAL int64
	// OutboxAfter is how long Userpilot may accept nothing while changes
	// wait before outbox mode starts. Default 5 minutes.
	OutboxAfter time.Duration
	// WarnRetainedWAL is the slot's retained WAL, in bytes, above which
	// pgpilot logs a warning (at most once a minute) and sets the
	// pgpilot_retained_wal_warning metric; 0: never. Default 1 GB.
	WarnRetainedWAL int64
	// SnapshotChunkRows is how many rows a snapshot (initial sync or
	// re-sync) reads at a time: the memory a snapshot holds is a few
	// chunks. Default 2,000.
	SnapshotChunkRows int
	// StallAfter is how long work may be owed with nothing moving before
	// pgpilot says it is stalled (an ERROR, pgpilot_stalled, /readyz).
	// Default 1 minute.
	StallAfter time.Duration
}

// HTTP says where pgpilot serves its metrics and health checks.
type HTTP struct {
	// Listen is the host:port serving /metrics, /healthz and /readyz; ""
	// (the default) serves nothing.
	Listen string
	// UnreadyAfter is how long Userpilot may keep failing before /readyz
	// answers 503. Default 5 minutes.
	UnreadyAfter time.Duration
}

// State says where pgpilot keeps its checkpoint.
type State struct {
	Dir string // relative paths are resolved against the config file's directory; default "pgpilot-state"
}

// Load reads and validates the configuration file at path, taking ${VAR}
// values from the process environment.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fix.With(fmt.Errorf("read config file: %w", err),
			"pass --config with the path of your mapping file (mapping.example.yaml shows its shape)")
	}
	cfg, err := Parse(path, data, os.LookupEnv)
	if err != nil {
		return nil, err
	}
	if err := readAPIKeyFile(cfg); err != nil {
		return nil, mapping.ConfigErrors{err}
	}
	warnLiteralSecrets(cfg)
	return cfg, nil
}

// Parse validates the configuration in data, which was read from path (used
// in messages and to resolve a relative state.dir). lookupEnv resolves ${VAR}
// references. All problems are returned together, as ConfigErrors.
func Parse(path string, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	p := &parser{file: path, lookupEnv: lookupEnv}
	cfg := p.parse(data)
	if len(p.problems) > 0 {
		return nil, p.err()
	}
	cfg.literalSecrets = p.literalSecrets
	return cfg, nil
}

// topKeys are the file's sections.
var topKeys = []string{"postgres", "userpilot", "state", "delivery", "http", "companies", "users"}

// parse reads the sections in turn, each with its defaults when it is left
// out; it returns nil when data holds no mapping at all.
func (p *parser) parse(data []byte) *Config {
	root := p.document(data)
	if root == nil {
		return nil
	}
	top := p.mappingEntries(root, "", 1, topKeys)

	cfg := &Config{Path: p.file}
	if s, ok := p.section(top, "postgres", postgresKeys, true, "add a postgres: section with url: ${DATABASE_URL}"); ok {
		cfg.Postgres = p.postgres(s)
	}
	if s, ok := p.section(top, "userpilot", userpilotKeys, true, "add a userpilot: section with api_key: ${USERPILOT_API_KEY}"); ok {
		cfg.Userpilot = p.userpilot(s)
	}
	cfg.State = State{Dir: p.resolveDir(state.DefaultDir)}
	if s, ok := p.section(top, "state", stateKeys, false, ""); ok {
		cfg.State = p.state(s)
	}
	cfg.Delivery = defaultDelivery()
	if s, ok := p.section(top, "delivery", deliveryKeys, false, ""); ok {
		cfg.Delivery = p.delivery(s)
	}
	cfg.HTTP = defaultHTTP()
	if s, ok := p.section(top, "http", httpKeys, false, ""); ok {
		cfg.HTTP = p.http(s)
	}
	_, hasCompanies := top.entries["companies"]
	_, hasUsers := top.entries["users"]
	if !hasCompanies && !hasUsers {
		p.fail(1, "", "the file has neither a companies: nor a users: section, so there is nothing to sync",
			"add a companies: section with table, company_id and metadata, a users: section with table, user_id, company_id and metadata, or both")
	}
	if s, ok := p.section(top, "companies", companiesKeys, hasCompanies, "add a companies: section with table, company_id and metadata"); ok && hasCompanies {
		cfg.Companies = p.companies(s)
	}
	if s, ok := p.section(top, "users", usersKeys, hasUsers, "add a users: section with table, user_id, company_id and metadata"); ok && hasUsers {
		cfg.Users = p.users(s)
	}
	return cfg
}
