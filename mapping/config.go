package mapping

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Defaults for the keys that may be left out of the file.
const (
	DefaultSlot           = "pgpilot"
	DefaultPublication    = "pgpilot"
	DefaultEndpoint       = USEndpoint
	DefaultRateLimit      = 10.0            // requests per second: Userpilot allows 600 per minute per API key
	DefaultMaxRetainedWAL = 256 << 20       // bytes of WAL the slot may hold before outbox mode
	DefaultOutboxAfter    = 5 * time.Minute // Userpilot failing this long: outbox mode
	DefaultBulkRate       = 20.0            // records per second in bulk jobs: the lower published figure, 1,200 per minute
	DefaultStateDir       = "pgpilot-state"

	// DefaultWarnRetainedWAL is the slot's retained WAL, in bytes, above
	// which pgpilot warns (log and metric).
	DefaultWarnRetainedWAL = 1 << 30
	// DefaultUnreadyAfter is how long Userpilot may keep failing before
	// /readyz says 503.
	DefaultUnreadyAfter = 5 * time.Minute
)

// Userpilot's hosts, selected in the file with the shorthands `us` and `eu`.
const (
	USEndpoint = "https://analytex.userpilot.io"
	EUEndpoint = "https://analytex-eu.userpilot.io"
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
	Companies Companies
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
	// BulkRate is how many records per second Userpilot's bulk jobs process
	// (>= 0; 0 turns the bulk path off); default 20, the lower published
	// figure (1,200 per minute). pgpilot uses it to split a backlog between
	// the real-time and bulk paths.
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
	// chunks. Default 5,000.
	SnapshotChunkRows int
}

// DefaultSnapshotChunkRows is delivery.snapshot_chunk_rows's default.
const DefaultSnapshotChunkRows = 5000

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

// Companies is the mapping of one table's rows to Userpilot company profiles.
type Companies struct {
	// OnDelete is the policy for deleted rows: ignore (default), mark or
	// delete; OnDeleteMetadata is what mark sends (default deleted: true).
	OnDelete         string
	OnDeleteMetadata map[string]any

	Table     string  // as written
	Schema    string  // "public" when the table is unqualified
	Name      string  // unquoted table name
	CompanyID string  // column name
	Metadata  []Field // in file order

	// File and CompanyIDLine locate the mapping in its file so that Compile's
	// messages can point at the line to edit. Both are zero for a Companies
	// built in code.
	File          string
	CompanyIDLine int
}

// Field maps one metadata key to one column.
type Field struct {
	Key    string // metadata key sent to Userpilot
	Column string // column name, as Postgres spells it
	Type   Type   // TypeAuto: the column's Postgres type decides
	Line   int    // line of the key in the file, 0 when built in code
}

// Type is the JSON type a metadata value is sent as.
type Type string

// The types a metadata entry may ask for.
const (
	TypeAuto    Type = ""
	TypeString  Type = "string"
	TypeNumber  Type = "number"
	TypeBoolean Type = "boolean"
	TypeDate    Type = "date"
)

// ConfigError is one problem in the configuration file, with the line and
// the dotted key to edit. Msg says what is wrong and how to fix it. Compile
// reports its problems as ConfigErrors too, keyed by metadata key.
type ConfigError struct {
	File string
	Line int
	Key  string
	Msg  string
}

// Error formats the problem as FILE:LINE: KEY: MSG, leaving out what is unknown.
func (e *ConfigError) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads and validates the configuration file at path, taking ${VAR}
// values from the process environment.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config file: %w; fix: pass --config with the path of your mapping file (mapping.example.yaml shows its shape)", err)
	}
	cfg, err := Parse(path, data, os.LookupEnv)
	if err != nil {
		return nil, err
	}
	if f := cfg.Userpilot.APIKeyFile; f != "" {
		key, err := os.ReadFile(f)
		switch {
		case err != nil:
			return nil, &ConfigError{File: path, Line: cfg.Userpilot.APIKeyFileLine, Key: "userpilot.api_key_file",
				Msg: fmt.Sprintf("cannot read %s (%v); fix: point it at the file holding the key", f, errors.Unwrap(err))}
		case strings.TrimSpace(string(key)) == "":
			return nil, &ConfigError{File: path, Line: cfg.Userpilot.APIKeyFileLine, Key: "userpilot.api_key_file",
				Msg: fmt.Sprintf("%s is empty; fix: put the Userpilot API key in it", f)}
		}
		// Secret files often end in a newline.
		cfg.Userpilot.APIKey = strings.TrimSpace(string(key))
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o004 != 0 && len(cfg.literalSecrets) > 0 {
		cfg.Warnings = append(cfg.Warnings, fmt.Sprintf("%s is readable by every user on this machine and holds %s written in it; "+
			"fix: chmod 600 %s, or take the secret from an environment variable (${VAR}) or api_key_file",
			path, strings.Join(cfg.literalSecrets, " and "), path))
	}
	return cfg, nil
}

// Parse validates the configuration in data, which was read from path (used
// in messages and to resolve a relative state.dir). lookupEnv resolves ${VAR}
// references. All problems are returned together, each a *ConfigError.
func Parse(path string, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	p := &parser{file: path, lookupEnv: lookupEnv}
	cfg := p.parse(data)
	if len(p.problems) > 0 {
		return nil, p.err()
	}
	cfg.literalSecrets = p.literalSecrets
	return cfg, nil
}

var (
	topKeys       = []string{"postgres", "userpilot", "state", "delivery", "http", "companies"}
	deliveryKeys  = []string{"max_retained_wal", "outbox_after", "warn_retained_wal", "snapshot_chunk_rows"}
	httpKeys      = []string{"listen", "unready_after"}
	postgresKeys  = []string{"url", "slot", "publication", "failover_slot"}
	userpilotKeys = []string{"api_key", "api_key_file", "endpoint", "rate_limit", "bulk_rate"}
	stateKeys     = []string{"dir"}
	companiesKeys = []string{"table", "company_id", "metadata", "on_delete", "on_delete_metadata"}
	fieldKeys     = []string{"column", "type"}
)

// parser walks the YAML node tree itself, rather than decoding into structs,
// so that every problem carries its line and dotted key.
type parser struct {
	literalSecrets []string
	file           string
	lookupEnv      func(string) (string, bool)
	problems       []*ConfigError
	secrets        []string // values that must not appear in any message
}

func (p *parser) fail(line int, key, format string, args ...any) {
	p.problems = append(p.problems, &ConfigError{File: p.file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// err joins the problems in file order. As a last line of defence it blanks
// out any secret that reached a message through a value echoed under another
// key (an API key pasted into slot:, say).
func (p *parser) err() error {
	sort.SliceStable(p.problems, func(i, j int) bool { return p.problems[i].Line < p.problems[j].Line })
	errs := make([]error, len(p.problems))
	for i, e := range p.problems {
		for _, s := range p.secrets {
			if len(s) >= minRedactLen {
				e.Msg = strings.ReplaceAll(e.Msg, s, "[redacted]")
			}
		}
		errs[i] = e
	}
	return errors.Join(errs...)
}

// minRedactLen keeps redaction from mangling messages around a secret so
// short that it is also an ordinary word; such values are still never echoed
// under their own keys.
const minRedactLen = 4

// section is a YAML mapping whose keys have been checked.
type section struct {
	node    *yaml.Node
	path    string // dotted key of the mapping, "" for the top level
	line    int    // line of the key that opened it, for "missing" messages
	entries map[string]entry
}

type entry struct {
	key, value *yaml.Node
}

func (s section) keyOf(name string) string {
	if s.path == "" {
		return name
	}
	return s.path + "." + name
}

// scalar is one value after ${VAR} replacement.
type scalar struct {
	text    string
	line    int
	null    bool     // written as nothing, ~ or null
	fromEnv []string // variables whose values are in text
}

// show quotes the value for a message, unless part of it came from the
// environment: environment values are where secrets live, so they are named,
// never echoed.
func (s scalar) show() string {
	if len(s.fromEnv) > 0 {
		var names []string
		for _, v := range s.fromEnv {
			if !contains(names, "${"+v+"}") {
				names = append(names, "${"+v+"}")
			}
		}
		return "the value from " + strings.Join(names, " and ")
	}
	return strconv.Quote(s.text)
}

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
	cfg.State = State{Dir: p.resolveDir(DefaultStateDir)}
	if s, ok := p.section(top, "state", stateKeys, false, ""); ok {
		cfg.State = p.state(s)
	}
	cfg.Delivery = Delivery{MaxRetainedWAL: DefaultMaxRetainedWAL, OutboxAfter: DefaultOutboxAfter, WarnRetainedWAL: DefaultWarnRetainedWAL,
		SnapshotChunkRows: DefaultSnapshotChunkRows}
	if s, ok := p.section(top, "delivery", deliveryKeys, false, ""); ok {
		cfg.Delivery = p.delivery(s)
	}
	cfg.HTTP = HTTP{UnreadyAfter: DefaultUnreadyAfter}
	if s, ok := p.section(top, "http", httpKeys, false, ""); ok {
		cfg.HTTP = p.http(s)
	}
	if s, ok := p.section(top, "companies", companiesKeys, true, "add a companies: section with table, company_id and metadata"); ok {
		cfg.Companies = p.companies(s)
	}
	return cfg
}

// delivery reads the outbox thresholds.
func (p *parser) delivery(s section) Delivery {
	d := Delivery{MaxRetainedWAL: DefaultMaxRetainedWAL, OutboxAfter: DefaultOutboxAfter, WarnRetainedWAL: DefaultWarnRetainedWAL,
		SnapshotChunkRows: DefaultSnapshotChunkRows}
	if v, ok := p.value(s, "snapshot_chunk_rows"); ok {
		n, err := strconv.Atoi(strings.TrimSpace(v.text))
		if err != nil || n < 1 || n > 100_000 {
			p.fail(v.line, s.keyOf("snapshot_chunk_rows"), "%s is not a row count from 1 to 100000; fix: write e.g. snapshot_chunk_rows: 5000", v.show())
		}
		d.SnapshotChunkRows = n
	}
	if v, ok := p.value(s, "max_retained_wal"); ok {
		n, err := parseBytes(v.text)
		if err != nil {
			p.fail(v.line, s.keyOf("max_retained_wal"), "%s is not a size; fix: write e.g. max_retained_wal: 256MB (units B, kB, MB, GB, TB), or 0 to never switch for WAL", v.show())
		}
		d.MaxRetainedWAL = n
	}
	if v, ok := p.value(s, "outbox_after"); ok {
		dur, err := time.ParseDuration(strings.TrimSpace(v.text))
		if err != nil || dur <= 0 {
			p.fail(v.line, s.keyOf("outbox_after"), "%s is not a positive duration; fix: write e.g. outbox_after: 5m", v.show())
		}
		d.OutboxAfter = dur
	}
	if v, ok := p.value(s, "warn_retained_wal"); ok {
		n, err := parseBytes(v.text)
		if err != nil {
			p.fail(v.line, s.keyOf("warn_retained_wal"), "%s is not a size; fix: write e.g. warn_retained_wal: 1GB (units B, kB, MB, GB, TB), or 0 to never warn", v.show())
		}
		d.WarnRetainedWAL = n
	}
	return d
}

// http reads where metrics and health checks are served.
func (p *parser) http(s section) HTTP {
	h := HTTP{UnreadyAfter: DefaultUnreadyAfter}
	if v, ok := p.value(s, "listen"); ok && v.text != "" {
		if msg := checkListen(v.text); msg != "" {
			p.fail(v.line, s.keyOf("listen"), "%s %s; fix: write host:port, e.g. listen: 127.0.0.1:9187 (or :9187 for every interface)", v.show(), msg)
		}
		h.Listen = strings.TrimSpace(v.text)
	}
	if v, ok := p.value(s, "unready_after"); ok && v.text != "" {
		dur, err := time.ParseDuration(strings.TrimSpace(v.text))
		if err != nil || dur <= 0 {
			p.fail(v.line, s.keyOf("unready_after"), "%s is not a positive duration; fix: write e.g. unready_after: 5m", v.show())
		}
		h.UnreadyAfter = dur
	}
	return h
}

// checkListen says what is wrong with a listen address, or "". Port 0
// (any free port) is refused: nobody could scrape a port nobody knows.
func checkListen(addr string) string {
	_, port, err := net.SplitHostPort(strings.TrimSpace(addr))
	if err != nil {
		return "is not host:port"
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Sprintf("has the port %q, not a number from 1 to 65535", port)
	}
	return ""
}

// parseBytes reads a size the way postgresql.conf writes one: a number
// with an optional unit B, kB, MB, GB or TB (powers of 1024).
func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("invalid size")
	}
	return n * mult, nil
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// document parses data and returns its root mapping node, or nil after
// reporting why there is none.
func (p *parser) document(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.fail(1, "", "the file is empty; fix: start from mapping.example.yaml")
			return nil
		}
		p.yamlError(err)
		return nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		p.yamlError(err)
		return nil
	default:
		p.fail(extra.Line, "", "the file holds a second YAML document (after ---); fix: keep one document per file")
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			p.fail(1, "", "the file is empty; fix: start from mapping.example.yaml")
			return nil
		}
		root = root.Content[0]
	}
	root = resolve(root)
	if root.Kind != yaml.MappingNode {
		if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
			p.fail(1, "", "the file is empty; fix: start from mapping.example.yaml")
			return nil
		}
		p.fail(root.Line, "", "the file must be a mapping of sections (postgres:, userpilot:, state:, companies:), not %s; fix: start from mapping.example.yaml", kindName(root))
		return nil
	}
	return root
}

func (p *parser) yamlError(err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 1
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	p.fail(line, "", "the file is not valid YAML: %s; fix: check indentation and quoting near this line (quote values that start with \" or contain \": \")", msg)
}

// resolve follows an alias to the node it names.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return "a single value"
	}
}

// mappingEntries checks a mapping's keys: each a plain value, none repeated
// and, when allowed is not nil, each one of allowed.
func (p *parser) mappingEntries(n *yaml.Node, path string, line int, allowed []string) section {
	s := section{node: n, path: path, line: line, entries: map[string]entry{}}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			p.fail(k.Line, path, "a key must be a plain name, not %s; fix: write name: value", kindName(k))
			continue
		}
		key := s.keyOf(k.Value)
		if prev, dup := s.entries[k.Value]; dup {
			p.fail(k.Line, key, "duplicate key (first at line %d); fix: keep one of them", prev.key.Line)
			continue
		}
		if allowed != nil && !contains(allowed, k.Value) {
			p.fail(k.Line, key, "unknown key %q; allowed: %s", k.Value, strings.Join(allowed, ", "))
			continue
		}
		s.entries[k.Value] = entry{key: k, value: v}
	}
	return s
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// section returns the mapping under name in parent. A missing or empty
// optional section is returned empty; a missing required one is reported.
func (p *parser) section(parent section, name string, allowed []string, required bool, fix string) (section, bool) {
	key := parent.keyOf(name)
	e, ok := parent.entries[name]
	if !ok || (e.value.Kind == yaml.ScalarNode && e.value.Tag == "!!null") {
		if !required {
			return section{path: key, line: parent.line, entries: map[string]entry{}}, ok
		}
		line := parent.line
		if ok {
			line = e.key.Line
		}
		p.fail(line, key, "missing; fix: %s", fix)
		return section{}, false
	}
	if e.value.Kind != yaml.MappingNode {
		p.fail(e.key.Line, key, "must be a mapping of keys, not %s; fix: indent its keys under %s:", kindName(e.value), name)
		return section{}, false
	}
	return p.mappingEntries(e.value, key, e.key.Line, allowed), true
}

// value returns the scalar under name in s with ${VAR} replaced. present is
// false when the key is absent or written without a value; problems with the
// value itself are reported and also yield present == false.
func (p *parser) value(s section, name string) (v scalar, present bool) {
	key := s.keyOf(name)
	e, ok := s.entries[name]
	if !ok {
		return scalar{line: s.line}, false
	}
	return p.scalarOf(e, key, "write "+name+": value")
}

func (p *parser) scalarOf(e entry, key, fix string) (scalar, bool) {
	n := e.value
	if n.Kind != yaml.ScalarNode {
		p.fail(e.key.Line, key, "must be a single value, not %s; fix: %s", kindName(n), fix)
		return scalar{line: e.key.Line}, false
	}
	if n.Tag == "!!null" && n.Style == 0 {
		return scalar{line: e.key.Line, null: true}, false
	}
	text, vars, problems := expand(n.Value, p.lookupEnv, secretKeys[key])
	for _, msg := range problems {
		p.fail(n.Line, key, "%s", msg)
	}
	if len(problems) > 0 {
		return scalar{line: n.Line}, false
	}
	return scalar{text: text, line: n.Line, fromEnv: vars}, true
}

// required returns the non-empty value under name, reporting it when it is
// missing or empty. No message shows the value: url and api_key are secrets.
func (p *parser) required(s section, name, fix string) (scalar, bool) {
	v, ok := p.value(s, name)
	if !ok {
		if _, written := s.entries[name]; !written || v.null {
			p.fail(v.line, s.keyOf(name), "missing; fix: %s", fix)
		}
		return v, false
	}
	return v, p.nonEmpty(v, s.keyOf(name), fix)
}

// optional returns the value under name, or def when it is absent or empty
// (an environment variable set to "" selects the default).
func (p *parser) optional(s section, name, def string) (scalar, bool) {
	v, ok := p.value(s, name)
	if !ok || v.text == "" {
		if _, written := s.entries[name]; written && !ok && !v.null {
			return v, false // already reported
		}
		return scalar{text: def, line: v.line}, true
	}
	return v, true
}

// secretKeys hold values that no message may show, not even in part.
var secretKeys = map[string]bool{"postgres.url": true, "userpilot.api_key": true}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// expand replaces each ${VAR} in s by the variable's value; $${ is a literal
// ${. It runs on parsed values, so substituted text can never change the
// YAML's structure or shift line numbers. Messages name variables, never
// their values; in a secret value (a password may contain ${), not even an
// invalid name is quoted.
func expand(s string, lookup func(string) (string, bool), secret bool) (out string, vars, problems []string) {
	if !strings.Contains(s, "${") {
		return s, nil, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		switch {
		case strings.HasPrefix(s[i:], "$${"):
			b.WriteString("${")
			i += 3
		case strings.HasPrefix(s[i:], "${"):
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				problems = append(problems, "${ without a closing }; fix: write ${NAME}, or $${ for a literal ${")
				return "", vars, problems
			}
			name := s[i+2 : i+2+end]
			i += 2 + end + 1
			if !envName.MatchString(name) {
				shown := strconv.Quote(name)
				if secret {
					shown = "a ${...} (value not shown: it may hold a password)"
				}
				problems = append(problems, fmt.Sprintf("%s is not an environment variable name; fix: write ${NAME} with letters, digits and underscores, or $${ for a literal ${", shown))
				continue
			}
			val, ok := lookup(name)
			if !ok {
				problems = append(problems, fmt.Sprintf("environment variable %s is not set; export it or write the value in the file", name))
				continue
			}
			b.WriteString(val)
			vars = append(vars, name)
		default:
			b.WriteByte(s[i])
			i++
		}
	}
	return b.String(), vars, problems
}

func (p *parser) postgres(s section) Postgres {
	var pg Postgres
	if v, ok := p.required(s, "url", "write url: ${DATABASE_URL} (a libpq URL or key=value string)"); ok {
		p.secrets = append(p.secrets, v.text)
		if pw := urlPassword(v.text); pw != "" {
			p.secrets = append(p.secrets, pw)
			if len(v.fromEnv) == 0 {
				p.literalSecrets = append(p.literalSecrets, "the password in postgres.url")
			}
		}
		if msg := checkPostgresURL(v.text); msg != "" {
			p.fail(v.line, s.keyOf("url"), "%s", msg)
		}
		pg.URL = v.text
	}
	if v, ok := p.value(s, "failover_slot"); ok {
		switch strings.ToLower(strings.TrimSpace(v.text)) {
		case "true":
			pg.FailoverSlot = true
		case "false":
		default:
			p.fail(v.line, s.keyOf("failover_slot"), "%s is not true or false; fix: write failover_slot: true (Postgres 17+ primary) or leave it out", v.show())
		}
	}
	if v, ok := p.optional(s, "slot", DefaultSlot); ok {
		if !slotName.MatchString(v.text) {
			p.fail(v.line, s.keyOf("slot"), "%s is not a valid replication slot name; fix: use 1 to 63 lower-case letters, digits and underscores, e.g. slot: %s", v.show(), DefaultSlot)
		}
		pg.Slot = v.text
	}
	if v, ok := p.optional(s, "publication", DefaultPublication); ok {
		switch {
		case len(v.text) > 63:
			p.fail(v.line, s.keyOf("publication"), "%s is %d bytes long; Postgres names hold at most 63; fix: choose a shorter name, e.g. publication: %s", v.show(), len(v.text), DefaultPublication)
		case strings.IndexByte(v.text, 0) >= 0:
			p.fail(v.line, s.keyOf("publication"), "contains a NUL character; fix: choose a plain name, e.g. publication: %s", DefaultPublication)
		}
		pg.Publication = v.text
	}
	return pg
}

var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// checkPostgresURL validates the connection string lightly: pgx parses it
// for real when connecting. The result never contains the string, nor the
// parser's error, which quotes pieces of it.
func checkPostgresURL(s string) string {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		u, err := url.Parse(s)
		if err != nil || u.Fragment != "" {
			// libpq URLs have no #fragment: a # there is an unencoded
			// character in the password that cut the URL short.
			return "is not a valid URL (value not shown: it may hold a password); fix: percent-encode special characters in the user name and password (@ as %40, : as %3A, / as %2F, # as %23, ? as %3F, % as %25)"
		}
		return ""
	}
	if strings.Contains(s, "://") {
		return "has an unsupported scheme (value not shown: it may hold a password); fix: start the URL with postgres:// or postgresql://"
	}
	if !strings.Contains(s, "=") {
		return "is neither a libpq URL nor a key=value string (value not shown: it may hold a password); fix: write postgres://user:password@host:5432/dbname or host=... dbname=... user=..."
	}
	return ""
}

// urlPassword extracts the password from either connection-string form, so
// that it is redacted wherever it might be echoed.
func urlPassword(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		pw, _ := u.User.Password()
		return pw
	}
	for _, f := range strings.Fields(s) {
		if pw, ok := strings.CutPrefix(f, "password="); ok {
			return strings.Trim(pw, "'")
		}
	}
	return ""
}

func (p *parser) userpilot(s section) Userpilot {
	var up Userpilot
	key, haveKey := p.value(s, "api_key")
	file, haveFile := p.value(s, "api_key_file")
	switch {
	case haveKey && haveFile:
		p.fail(file.line, s.keyOf("api_key_file"), "both api_key and api_key_file are set; fix: keep one")
	case haveFile:
		// Read by Load, after parsing: Parse does no I/O.
		up.APIKeyFile, up.APIKeyFileLine = p.resolveDir(strings.TrimSpace(file.text)), file.line
	default:
		if v, ok := p.required(s, "api_key", "write api_key: ${USERPILOT_API_KEY}, or api_key_file: /path/to/secret"); ok {
			p.secrets = append(p.secrets, v.text)
			up.APIKey = v.text
			if len(v.fromEnv) == 0 {
				p.literalSecrets = append(p.literalSecrets, "userpilot.api_key")
			}
		}
		_ = key
	}
	if v, ok := p.optional(s, "endpoint", DefaultEndpoint); ok {
		endpoint, msg := parseEndpoint(v)
		if msg != "" {
			p.fail(v.line, s.keyOf("endpoint"), "%s", msg)
		}
		up.Endpoint = endpoint
	}
	if v, ok := p.optional(s, "rate_limit", strconv.FormatFloat(DefaultRateLimit, 'g', -1, 64)); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(v.text), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f <= 0 {
			p.fail(v.line, s.keyOf("rate_limit"), "%s is not a positive number of requests per second; fix: write e.g. rate_limit: 10 (Userpilot allows 600 requests per minute per API key)", v.show())
		}
		up.RateLimit = f
	}
	if v, ok := p.optional(s, "bulk_rate", strconv.FormatFloat(DefaultBulkRate, 'g', -1, 64)); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(v.text), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
			p.fail(v.line, s.keyOf("bulk_rate"), "%s is not a number of records per second; fix: write e.g. bulk_rate: 20 (Userpilot's bulk jobs process 1,200 to 1,800 records per minute), or 0 to send everything on the real-time endpoint", v.show())
		}
		up.BulkRate = f
	}
	return up
}

// parseEndpoint turns the endpoint setting into a base URL. Plain http is
// refused except on this machine because the API key travels in a header.
func parseEndpoint(v scalar) (string, string) {
	switch strings.ToLower(strings.TrimSpace(v.text)) {
	case "us":
		return USEndpoint, ""
	case "eu":
		return EUEndpoint, ""
	}
	const fix = "fix: write us, eu, or your account's base URL such as https://analytex.userpilot.io"
	u, err := url.Parse(strings.TrimSpace(v.text))
	if err != nil || !u.IsAbs() || u.Host == "" {
		return "", fmt.Sprintf("%s is not an absolute URL; %s", v.show(), fix)
	}
	switch {
	case u.User != nil:
		return "", fmt.Sprintf("%s holds credentials; fix: remove them, the key goes in userpilot.api_key", v.show())
	case u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return "", fmt.Sprintf("%s has a query or fragment; %s", v.show(), fix)
	case u.Path != "" && u.Path != "/":
		return "", fmt.Sprintf("%s has the path %q; pgpilot adds the API paths itself; %s", v.show(), u.Path, fix)
	case u.Scheme == "https":
	case u.Scheme == "http" && isLoopback(u.Hostname()):
		// A stand-in server on this machine: the key never leaves it.
	case u.Scheme == "http":
		return "", fmt.Sprintf("%s uses http; the API key travels in a request header and must be encrypted, so only https is allowed (http only for localhost and 127.0.0.1 test servers); fix: write https://", v.show())
	default:
		return "", fmt.Sprintf("%s uses the scheme %q; %s", v.show(), u.Scheme, fix)
	}
	return u.Scheme + "://" + u.Host, ""
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (p *parser) state(s section) State {
	v, ok := p.optional(s, "dir", DefaultStateDir)
	if !ok {
		return State{}
	}
	if strings.HasPrefix(v.text, "~") {
		p.fail(v.line, s.keyOf("dir"), "%s starts with ~, which is not expanded; fix: write the full path, or ${HOME}/...", v.show())
	}
	return State{Dir: p.resolveDir(v.text)}
}

// resolveDir makes a relative state directory relative to the config file,
// so that `--config /etc/pgpilot.yaml` finds the same checkpoint whatever
// the working directory.
func (p *parser) resolveDir(dir string) string {
	if filepath.IsAbs(dir) {
		return filepath.Clean(dir)
	}
	return filepath.Join(filepath.Dir(p.file), dir)
}

func (p *parser) companies(s section) Companies {
	c := Companies{File: p.file}
	if v, ok := p.required(s, "table", "write table: public.companies (the table to mirror)"); ok {
		schema, name, msg := parseTable(v.text)
		if msg != "" {
			p.fail(v.line, s.keyOf("table"), "%s %s", v.show(), msg)
		}
		c.Table, c.Schema, c.Name = v.text, schema, name
	}
	if v, ok := p.required(s, "company_id", "write company_id: id (the column holding the company's id)"); ok {
		c.CompanyID, c.CompanyIDLine = v.text, v.line
	}
	c.Metadata = p.metadata(s)
	p.onDelete(s, &c)
	return c
}

// parseTable splits `name` or `schema.name`, folding unquoted parts to lower
// case and unquoting "quoted" parts as Postgres does.
func parseTable(s string) (schema, name, msg string) {
	const fix = `fix: write name or schema.name; quote parts that have capitals or other characters, e.g. table: '"My Schema"."Companies"'`
	var parts []string
	for i := 0; ; {
		part, next, problem := parseIdent(s, i)
		if problem != "" {
			return "", "", problem + "; " + fix
		}
		parts = append(parts, part)
		if next == len(s) {
			break
		}
		if s[next] != '.' {
			return "", "", "is not a table name; " + fix
		}
		i = next + 1
	}
	switch len(parts) {
	case 1:
		return "public", parts[0], ""
	case 2:
		return parts[0], parts[1], ""
	default:
		return "", "", "has more than two parts; fix: write name or schema.name (the database comes from postgres.url)"
	}
}

// parseIdent reads one identifier starting at s[i], returning it and the
// index after it.
func parseIdent(s string, i int) (string, int, string) {
	if i < len(s) && s[i] == '"' {
		var b strings.Builder
		for j := i + 1; j < len(s); j++ {
			if s[j] != '"' {
				b.WriteByte(s[j])
				continue
			}
			if j+1 < len(s) && s[j+1] == '"' {
				b.WriteByte('"')
				j++
				continue
			}
			if b.Len() == 0 {
				return "", 0, "has an empty quoted name"
			}
			if b.Len() > 63 {
				return "", 0, "has a name longer than Postgres's 63 bytes"
			}
			return b.String(), j + 1, ""
		}
		return "", 0, "has a quote without its closing quote"
	}
	j := i
	for j < len(s) && s[j] != '.' {
		c := s[j]
		ok := c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80 || (j > i && (c == '$' || c >= '0' && c <= '9'))
		if !ok {
			return "", 0, fmt.Sprintf("has the character %q, which needs quotes", c)
		}
		j++
	}
	if j == i {
		return "", 0, "has an empty name"
	}
	if j-i > 63 {
		return "", 0, "has a name longer than Postgres's 63 bytes"
	}
	return foldASCII(s[i:j]), j, ""
}

// foldASCII lower-cases like Postgres folds unquoted identifiers: ASCII only.
func foldASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func (p *parser) metadata(parent section) []Field {
	const fix = "add metadata: with one key: column line per value to send, e.g. name: name"
	s, ok := p.section(parent, "metadata", nil, true, fix)
	if !ok {
		return nil
	}
	if len(s.node.Content) == 0 {
		p.fail(s.line, s.path, "has no entries; fix: %s", fix)
		return nil
	}
	var fields []Field
	// Walk the node, not the map, to keep the file's order.
	for i := 0; i+1 < len(s.node.Content); i += 2 {
		k := resolve(s.node.Content[i])
		if e, ok := s.entries[k.Value]; !ok || e.key != k {
			continue // a duplicate or bad key, already reported
		}
		if f, ok := p.field(s, k, resolve(s.node.Content[i+1])); ok {
			fields = append(fields, f)
		}
	}
	return fields
}

// field reads one metadata entry: `key: column` or `key: {column, type}`.
func (p *parser) field(parent section, k, v *yaml.Node) (Field, bool) {
	key := parent.keyOf(k.Value)
	if k.Value == "" {
		p.fail(k.Line, key, "a metadata key must not be empty; fix: name the key as Userpilot should show it")
		return Field{}, false
	}
	col := plainColumn(k.Value)
	shape := fmt.Sprintf("write %s: %s or %s: {column: %s, type: number}", k.Value, col, k.Value, col)
	f := Field{Key: k.Value, Line: k.Line}
	switch {
	case v.Kind == yaml.ScalarNode && !(v.Tag == "!!null" && v.Style == 0):
		c, ok := p.scalarOf(entry{key: k, value: v}, key, shape)
		if !ok || !p.nonEmpty(c, key, shape) {
			return f, false
		}
		f.Column = c.text
	case v.Kind == yaml.MappingNode:
		inner := p.mappingEntries(v, key, k.Line, fieldKeys)
		c, ok := p.value(inner, "column")
		if !ok {
			if _, written := inner.entries["column"]; !written || c.null {
				p.fail(c.line, inner.keyOf("column"), "missing; fix: %s", shape)
			}
			return f, false
		}
		if !p.nonEmpty(c, inner.keyOf("column"), shape) {
			return f, false
		}
		f.Column = c.text
		t, ok := p.value(inner, "type")
		if !ok {
			if _, written := inner.entries["type"]; written && !t.null {
				return f, false // a bad value, already reported
			}
		} else if t.text != "" {
			f.Type = Type(t.text)
			if !validType(f.Type) {
				p.fail(t.line, inner.keyOf("type"), "%s is not a type; allowed: string, number, boolean, date (leave type out to let the column's Postgres type decide)", t.show())
				return f, false
			}
		}
	default:
		p.fail(k.Line, key, "column must be a string (%s)", shape)
		return f, false
	}
	return f, true
}

// nonEmpty reports an empty value of a key that needs one.
func (p *parser) nonEmpty(v scalar, key, fix string) bool {
	switch {
	case v.text != "":
		return true
	case len(v.fromEnv) > 0:
		p.fail(v.line, key, "environment variable %s is set but empty; fix: export it with a value", strings.Join(v.fromEnv, ", "))
	default:
		p.fail(v.line, key, "is empty; fix: %s", fix)
	}
	return false
}

// plainColumn suggests the metadata key itself as the column in messages,
// when it could be one.
func plainColumn(key string) string {
	for _, c := range key {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return "column_name"
		}
	}
	return key
}

func validType(t Type) bool {
	switch t {
	case TypeString, TypeNumber, TypeBoolean, TypeDate:
		return true
	}
	return false
}
