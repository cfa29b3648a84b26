package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/provider"
	"github.com/pgpilot/pgpilot/related"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
)

// checkProbePath is what `check` asks Userpilot, without a key and with
// it: the status of a background job that does not exist. It changes
// nothing; the answers tell Userpilot (401 without a key) from another
// server, and a refused key (401/403) from an accepted one (404: no such
// job).
const checkProbePath = "/v1/background_jobs/pgpilot-check"

// checker prints one ✓/✗ line per check and counts the failures; a
// warning (!) is printed and counted but fails nothing.
type checker struct {
	out    io.Writer
	failed int
	warned int
	// config is set when a failure is the config file's to fix (the
	// mapping does not fit the table): check exits 2 then, like run.
	config bool
}

// report prints name with ✓ when err is nil, else ✗ and err, with the fix
// err carries on a line of its own, and reports whether the check passed.
func (c *checker) report(name string, err error) bool {
	if err != nil {
		c.failed++
		fmt.Fprintf(c.out, "✗ %s: %v\n", name, err)
		if f := fix.Of(err); f != "" {
			fmt.Fprintf(c.out, "  fix: %s\n", f)
		}
		return false
	}
	fmt.Fprintf(c.out, "✓ %s\n", name)
	return true
}

// warn prints name with ! and why it deserves a look, the fix on a line of
// its own. It fails nothing.
func (c *checker) warn(name string, why error) {
	c.warned++
	fmt.Fprintf(c.out, "! %s: %v\n", name, why)
	if f := fix.Of(why); f != "" {
		fmt.Fprintf(c.out, "  fix: %s\n", f)
	}
}

// checkCommand runs the preflight: each line ✓ or ✗ with the fix. It
// returns nil only if every check passed, and changes nothing, on Postgres
// or Userpilot.
func checkCommand(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs, path := commandFlags("check", stderr)
	skipUserpilot := fs.Bool("skip-userpilot", false, "do not contact Userpilot (e.g. from a machine without access to it)")
	cfg, err := loadConfig(fs, path, args, stderr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()

	c := &checker{out: stdout}
	c.report("config "+cfg.Path, nil)
	checkPostgres(ctx, cfg, c)
	if *skipUserpilot {
		fmt.Fprintln(stdout, "- Userpilot not checked (--skip-userpilot)")
	} else {
		checkUserpilot(ctx, cfg, c)
	}
	if c.failed > 0 {
		// The ✗ lines said what failed; this line ends the list.
		err := fmt.Errorf("%d check(s) failed", c.failed)
		fmt.Fprintln(stdout, err)
		if c.config {
			return shownError{usageError{err}}
		}
		return shownError{err}
	}
	if c.warned > 0 {
		fmt.Fprintf(stdout, "all checks passed, with %d warning(s) above\n", c.warned)
		return nil
	}
	fmt.Fprintln(stdout, "all checks passed")
	return nil
}

// checkPostgres checks everything `pgpilot run` needs from the database:
// the server, then each section's table (companies, users), then the
// publication of them all, the slot and the state.
func checkPostgres(ctx context.Context, cfg *config.Config, c *checker) {
	route := replication.ProbeRoute(ctx, cfg.Postgres.URL)
	if route.Pooler != nil {
		// Whatever else is checked through a pooler is about whichever
		// server session it lends: fix the URL first.
		c.report("postgres.url reaches Postgres directly, not through a connection pooler", route.Pooler.Err())
		fmt.Fprintln(c.out, "- the other Postgres checks wait for a direct postgres.url")
		return
	}
	err := route.SQLErr // the probe's attempt: one wait for a server that does not answer, not two
	var conn *pgx.Conn
	if err == nil {
		conn, err = replication.ConnectSQL(ctx, cfg.Postgres.URL)
	}
	if !c.report("Postgres reachable with the configured credentials", err) {
		return
	}
	defer conn.Close(context.Background())
	checkTLS(ctx, cfg, conn, c)
	srv, err := replication.ReadServer(ctx, conn)
	if !c.report("server settings readable", err) {
		return
	}
	checkRoute(srv.Provider, route, c)
	role := "primary"
	if srv.InRecovery {
		role = "standby"
	}
	serverOK := c.report(fmt.Sprintf("Postgres %d (%s), wal_level=%s", srv.Major(), role, srv.WALLevel), srv.CheckServer())
	if serverOK && srv.InRecovery {
		c.report("standby keeps the primary from removing rows the slot needs", standbyFeedbackProblem(ctx, conn, srv.Provider.Provider))
	}

	user, canStream := checkStreamingRight(ctx, conn, srv.Provider.Provider, c)
	if canStream {
		checkReplicationConnection(srv.Provider.Provider, user, route, c)
	}

	for _, e := range cfg.Entities() {
		checkEntity(ctx, conn, cfg, e, user, srv, c)
	}
	st := readState(ctx, conn, cfg)
	defer st.close()
	checkPublication(ctx, conn, cfg, publishedTables(cfg), srv, c, st)
	if cfg.HasCompanies() {
		checkMappingChange(cfg, c)
	}

	slot, haveSlot, slotErr := replication.ReadSlot(ctx, conn, cfg.Postgres.Slot)
	checkHeadroom(ctx, conn, haveSlot, srv.Provider.Provider, c)
	switch {
	case slotErr != nil:
		c.report("replication slot "+cfg.Postgres.Slot, slotErr)
	case !haveSlot && st.established() && st.pending == nil:
		c.report("replication slot "+cfg.Postgres.Slot, fix.With(fmt.Errorf("it is gone, but the checkpoint in %s is at %s: `pgpilot run` refuses, "+
			"the changes since cannot be streamed from it", cfg.State.Dir, st.cp.LSN),
			fmt.Sprintf("run `pgpilot recover --config %s`, then `pgpilot run`: %s", cfg.Path, st.plan(true))))
	case !haveSlot && st.established():
		c.report(fmt.Sprintf("replication slot %q will be created by `pgpilot run`, starting over", cfg.Postgres.Slot), nil)
	case !haveSlot:
		c.report(fmt.Sprintf("replication slot %q will be created by `pgpilot run`", cfg.Postgres.Slot), nil)
	default:
		retained := "none (the slot holds no WAL)"
		pos, err := replication.CurrentLSN(ctx, conn)
		if err != nil {
			retained = "unknown (" + err.Error() + ")"
		} else if slot.Restart != 0 && pos >= slot.Restart {
			retained = formatBytes(uint64(pos - slot.Restart))
		}
		c.report(fmt.Sprintf("replication slot %q (active: %t, wal_status: %s, retained WAL: %s)",
			slot.Name, slot.Active, orDash(slot.WALStatus), retained), slot.Usable(srv.Database))
	}
	checkState(cfg, c, st)
}

// checkEntity checks one section's table as `pgpilot run` reads it: it
// exists, the mapping fits it, nothing reads a generated column, personal
// data is acknowledged, the role may read it, it can be published and
// paged by a key, and its related tables and where fit. The lines of the
// users section say so; the companies section's are as they always were.
func checkEntity(ctx context.Context, conn *pgx.Conn, cfg *config.Config, e mapping.Companies, user string, srv replication.Server, c *checker) {
	table := row.Table{Schema: e.Schema, Name: e.Name}
	of := ""
	if e.Kind != mapping.Company {
		of = e.Kind.Section() + ": "
	}
	cols, err := replication.TableColumns(ctx, conn, table)
	if c.report("table "+table.String()+" exists", err) {
		_, err := mapping.Compile(e, table.String(), cols)
		if !c.report(of+"every mapped column exists and maps to a primitive", err) {
			c.config = true
		}
		generated, err := replication.GeneratedColumns(ctx, conn, table)
		if err == nil {
			err = e.Generated(generated)
		}
		if !c.report(of+"no key reads a generated column (Postgres does not stream them)", err) && errors.As(err, new(mapping.ConfigErrors)) {
			c.config = true
		}
		checkPersonalData(cfg, e, cols, c)
		c.report(fmt.Sprintf("role %q may SELECT from %s", user, table),
			replication.ReadRight(ctx, conn, table, user, "so the initial sync cannot read the table"))
	}
	if !srv.InRecovery {
		problem, err := replication.ReplicaIdentityProblem(ctx, conn, table)
		if err == nil && problem != "" {
			err = errors.New(problem)
		}
		c.report("replica identity lets "+table.String()+" be published", err)
	}
	if key, err := replication.KeyColumns(ctx, conn, table); err == nil {
		c.report(fmt.Sprintf("snapshots page %s by its key (%s)", table, strings.Join(key, ", ")), nil)
	} else {
		c.report("snapshots can page "+table.String()+" by a unique key", err)
	}
	checkRelated(ctx, conn, cfg, e, c)
}

// checkTLS reports whether the connection is encrypted, as the server
// sees it, and warns when postgres.url lets a connection to another machine
// run in plaintext: pgx's default, sslmode=prefer, falls back to it without
// a word.
func checkTLS(ctx context.Context, cfg *config.Config, conn *pgx.Conn, c *checker) {
	policy, err := replication.ReadTLSPolicy(cfg.Postgres.URL)
	if err != nil {
		c.report("TLS settings of postgres.url", err)
		return
	}
	enc, err := replication.ReadEncryption(ctx, conn)
	switch {
	case err != nil:
		c.report("connection encryption readable", err)
	case enc.SSL:
		c.report(fmt.Sprintf("connection to Postgres encrypted: yes (%s, %s; sslmode=%s)", enc.Version, enc.Cipher, policy.Mode), nil)
	default:
		c.report(fmt.Sprintf("connection to Postgres encrypted: no (sslmode=%s)", policy.Mode), nil)
	}
	if err := tlsProblem(policy); err != nil {
		c.warn("TLS is not required", err)
	}
}

// tlsProblem says why policy lets pgpilot's connections (the rows, and the
// password's exchange) cross a network in plaintext, or returns nil.
func tlsProblem(p replication.TLSPolicy) error {
	if !p.Plaintext || len(p.Remote) == 0 {
		return nil
	}
	var why string
	switch p.Mode {
	case "disable":
		why = "sslmode=disable never encrypts"
	case "allow":
		why = "sslmode=allow tries without TLS first, and stays plaintext whenever the server accepts that"
	default:
		why = "sslmode=prefer (pgx's default when postgres.url names none) falls back to plaintext without a word when TLS fails or the server offers none"
	}
	return fix.With(fmt.Errorf("%s, and %s is not this machine: the rows can cross the network unencrypted", why, strings.Join(p.Remote, ", ")),
		"require TLS in postgres.url: sslmode=verify-full&sslrootcert=/path/to/the-server-ca.crt (or sslrootcert=system for a public CA); "+
			"sslmode=require encrypts but does not check the server's certificate")
}

// checkPersonalData warns of each mapped key of e whose column looks like
// personal data (by its name or type) and is not acknowledged with
// pii: true. It blocks nothing: whether to send it is the operator's call.
// A users table holds people: its names and emails are named each.
func checkPersonalData(cfg *config.Config, e mapping.Companies, cols []row.Column, c *checker) {
	found := e.PersonalData(cols)
	if len(found) == 0 {
		of := ""
		if e.Kind != mapping.Company {
			of = e.Kind.Section() + ": "
		}
		c.report(of+"no mapped column looks like personal data (or each is acknowledged with pii: true)", nil)
		return
	}
	for _, pd := range found {
		c.warn("personal data", fix.With(errors.New(pd.Problem(cfg.Path)), pd.Fix()))
	}
}

// standbyFeedbackProblem says why the primary could remove catalog rows a
// logical slot on this standby needs (Postgres then invalidates the slot,
// and pgpilot must start over with a full re-send), or returns nil. A
// managed service runs the link between primary and replica itself
// (primary_slot_name is its business): only hot_standby_feedback is asked
// of it.
func standbyFeedbackProblem(ctx context.Context, conn *pgx.Conn, p provider.Provider) error {
	var feedback string
	var slotName *string
	err := conn.QueryRow(ctx, `SELECT current_setting('hot_standby_feedback'),
		(SELECT setting FROM pg_settings WHERE name = 'primary_slot_name')`).Scan(&feedback, &slotName)
	if err != nil {
		return fmt.Errorf("read hot_standby_feedback: %w", err)
	}
	if feedback != "on" {
		f := "set hot_standby_feedback = on on this standby (and primary_slot_name to a physical slot on the primary) and reload"
		if p.Managed() {
			f = p.SetParameter("hot_standby_feedback", "on", false) + ", for this read replica"
		}
		return fix.With(errors.New("hot_standby_feedback is off: the primary may vacuum away catalog rows the logical slot needs, and Postgres then invalidates the slot"), f)
	}
	// A row-less answer means this role may not read the setting: do not
	// fail on what cannot be seen.
	if slotName != nil && *slotName == "" && !p.Managed() {
		return fix.With(errors.New("primary_slot_name is empty: hot_standby_feedback protects the slot only while the standby is connected, so a restart of either server can get the slot invalidated"),
			"create a physical slot on the primary (SELECT pg_create_physical_replication_slot('standby1');), set primary_slot_name to it on this standby and reload")
	}
	return nil
}

// checkPublication checks that the publication exists, publishes what
// pgpilot streams and covers the tables, or that `pgpilot run` can create
// it (on the first setup only), and that it is the one the checkpoint
// streams through. A role that may not create it (least privilege: it owns
// no table) gets the exact statement for whoever may.
func checkPublication(ctx context.Context, conn *pgx.Conn, cfg *config.Config, tables []row.Table, srv replication.Server, c *checker, st *stateView) {
	name := cfg.Postgres.Publication
	createSQL := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s;", pgx.Identifier{name}.Sanitize(), quotedTables(tables))
	pub, havePub, err := replication.ReadPublication(ctx, conn, name)
	switch {
	case err != nil:
		c.report("publication "+name, err)
	case !havePub && st.established():
		c.report("publication "+name, fix.With(fmt.Errorf("it is gone: it was dropped after the checkpoint in %s (%s), and pgpilot does not create it again over a DBA's head; "+
			"`pgpilot run` waits for it, unready", cfg.State.Dir, st.cp.LSN),
			fmt.Sprintf("create it again, on the primary: %s then `pgpilot run` starts over by itself: %s", createPublicationSQL(cfg), st.plan(true))))
	case havePub && st.established() && st.cp.Publication != nil && st.cp.Publication.OID != pub.OID:
		c.warn(fmt.Sprintf("publication %q was dropped and created again since the checkpoint (oid %d, was %d)", name, pub.OID, st.cp.Publication.OID),
			fmt.Errorf("the slot cannot decode the changes made while it was missing: `pgpilot run` starts over by itself: %s", st.plan(true)))
	case !havePub && srv.InRecovery:
		c.report("publication "+name, fmt.Errorf("missing, and a standby cannot create it; run on the primary:\n  %s", createSQL))
	case !havePub:
		// CREATE PUBLICATION ... FOR TABLE needs CREATE on the database and
		// ownership of the tables (superusers have both).
		var mayCreate bool
		err := conn.QueryRow(ctx, `SELECT has_database_privilege(current_database(), 'CREATE')
			AND coalesce((SELECT bool_and(pg_has_role(c.relowner, 'USAGE')) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			              WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))), true)`,
			tableSchemas(tables), tableNames(tables)).Scan(&mayCreate)
		if err == nil && !mayCreate {
			err = fix.With(fmt.Errorf("this role may not create it (that needs CREATE on the database and ownership of %s); pgpilot streams from one a DBA creates", quotedTables(tables)),
				"run on the primary, as the tables' owner (or a superuser): "+createSQL)
		}
		c.report(fmt.Sprintf("publication %q will be created by `pgpilot run`", name), err)
	default:
		if err := replication.PublishesChanges(ctx, conn, name); err != nil {
			c.report(fmt.Sprintf("publication %q publishes inserts, updates and deletes", pub.Name), err)
		}
		missing, err := replication.MissingFromPublication(ctx, conn, name, tables)
		switch {
		case err != nil:
		case len(missing) > 0 && pub.CreatedByPgpilot && !srv.InRecovery:
			c.report(fmt.Sprintf("publication %q exists (created by pgpilot); `pgpilot run` adds %s to it", pub.Name, quotedTables(missing)), nil)
			return
		case len(missing) > 0:
			err = fix.With(fmt.Errorf("it does not publish %s", quotedTables(missing)),
				fmt.Sprintf("run on the primary, as the publication's owner: ALTER PUBLICATION %s ADD TABLE %s;", pgx.Identifier{name}.Sanitize(), quotedTables(missing)))
		}
		c.report(fmt.Sprintf("publication %q exists (created by pgpilot: %t)", pub.Name, pub.CreatedByPgpilot), err)
	}
}

func tableSchemas(tables []row.Table) []string {
	s := make([]string, len(tables))
	for i, t := range tables {
		s[i] = t.Schema
	}
	return s
}

func tableNames(tables []row.Table) []string {
	s := make([]string, len(tables))
	for i, t := range tables {
		s[i] = t.Name
	}
	return s
}

func quotedTables(tables []row.Table) string {
	q := make([]string, len(tables))
	for i, t := range tables {
		q[i] = t.Quoted()
	}
	return strings.Join(q, ", ")
}

// checkRelated checks a section's related entries and where (e's:
// companies.related and companies.where, or users') against the
// database: the tables, columns and expressions (Postgres plans every
// query the daemon will run), each related table's replica identity (a
// DELETE must say which company, or user, its row belonged to), an index
// for the re-reads, and the privilege to read.
func checkRelated(ctx context.Context, conn *pgx.Conn, cfg *config.Config, e mapping.Companies, c *checker) {
	if !related.Configured(e) {
		return
	}
	section := e.Kind.Section()
	var what []string
	if len(e.Related) > 0 {
		what = append(what, section+".related")
	}
	if e.Where != "" {
		what = append(what, section+".where")
	}
	if slices.ContainsFunc(e.Metadata, func(f mapping.Field) bool { return f.SQL != "" }) {
		if e.Kind == mapping.Company {
			what = append(what, "the sql: keys")
		} else {
			what = append(what, "the sql: keys of "+section)
		}
	}
	_, err := related.Compile(ctx, conn, e)
	switch {
	case errors.As(err, new(*replication.ReadRightError)):
		// Each table's line below names the rights and the GRANTs.
		fmt.Fprintln(c.out, "- "+strings.Join(what, " and ")+" not checked: the role may not read their tables (see below)")
	case !c.report(strings.Join(what, " and ")+" fit the tables (Postgres plans every re-read)", err):
		if errors.As(err, new(mapping.ConfigErrors)) {
			c.config = true
		}
	}
	var user string
	_ = conn.QueryRow(ctx, `SELECT current_user`).Scan(&user)
	owner := e.Kind.String()
	for _, r := range e.Related {
		t := row.Table{Schema: r.Schema, Name: r.Name}
		problem, err := replication.RelatedIdentityProblemOf(ctx, conn, t, r.CompanyID, owner)
		if err == nil && problem != "" {
			err = errors.New(problem)
			c.config = true
		}
		c.report(fmt.Sprintf("%s: a DELETE in %s says which %s its row belonged to (replica identity)", r.Path(), t, owner), err)
		indexed, err := replication.HasIndexOn(ctx, conn, t, r.CompanyID)
		switch {
		case err != nil:
			c.report(fmt.Sprintf("%s: indexes of %s readable", r.Path(), t), err)
		case !indexed:
			c.warn(fmt.Sprintf("%s: no index on %s (%s)", r.Path(), t, r.CompanyID), fix.With(
				fmt.Errorf("each re-read of a %s's related values scans the whole table", owner),
				fmt.Sprintf("run on the primary: CREATE INDEX CONCURRENTLY ON %s (%s);", t.Quoted(), pgx.Identifier{r.CompanyID}.Sanitize())))
		default:
			c.report(fmt.Sprintf("%s: %s is indexed on %s", r.Path(), t, r.CompanyID), nil)
		}
		c.report(fmt.Sprintf("role %q may SELECT from %s", user, t),
			replication.ReadRight(ctx, conn, t, user, "so its related values cannot be read"))
		if r.IsLookup() {
			// A lookup sends a related row's columns: the same warning as
			// for the companies table's.
			rcols, _ := replication.TableColumns(ctx, conn, t)
			for _, pd := range (mapping.Companies{Kind: e.Kind, Metadata: r.Metadata}).PersonalData(rcols) {
				c.warn("personal data", fix.With(errors.New(pd.Problem(cfg.Path)), pd.Fix()))
			}
		}
	}
}

// checkMappingChange says what `pgpilot run` will backfill: the keys that
// changed since the mapping recorded in the state directory.
func checkMappingChange(cfg *config.Config, c *checker) {
	data, ok, err := state.ReadMapping(cfg.State.Dir)
	var was mapping.Shape
	switch {
	case err != nil:
		c.report("the mapping recorded in state.dir", err)
	case !ok:
		c.report("no mapping recorded in state.dir yet: the first sync sends every key", nil)
	case json.Unmarshal(data, &was) != nil:
		c.warn("the mapping recorded in state.dir", fix.With(fmt.Errorf("%s cannot be read: `pgpilot run` records this mapping without backfilling what changed",
			filepath.Join(cfg.State.Dir, state.MappingFile)), "run `pgpilot resync` after `pgpilot run` if the mapping changed"))
	default:
		ch := mapping.Compare(was, cfg.Companies.Shape())
		if ch.None() {
			c.report("mapping unchanged since the last run", nil)
			return
		}
		c.report("mapping changed since the last run: "+ch.Describe(cfg.Companies)+
			"; `pgpilot run` backfills this for every company alongside the stream (`pgpilot preview --changes` shows it)", nil)
	}
}

// checkHeadroom checks that a replication slot (unless pgpilot's exists)
// and a WAL sender are free for `pgpilot run`.
func checkHeadroom(ctx context.Context, conn *pgx.Conn, haveSlot bool, p provider.Provider, c *checker) {
	var slotsUsed, slotsMax, sendersUsed, sendersMax int
	err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_replication_slots)::int, current_setting('max_replication_slots')::int,
		(SELECT count(*) FROM pg_stat_replication)::int, current_setting('max_wal_senders')::int`).
		Scan(&slotsUsed, &slotsMax, &sendersUsed, &sendersMax)
	if err != nil {
		c.report("replication slots and WAL senders free", err)
		return
	}
	err = nil
	if !haveSlot && slotsUsed >= slotsMax {
		err = fix.With(errors.New("none is free for pgpilot's"),
			fmt.Sprintf("drop a slot nobody uses (see SELECT slot_name, active FROM pg_replication_slots;), or raise max_replication_slots: %s",
				p.SetParameter("max_replication_slots", strconv.Itoa(slotsMax+1), true)))
	}
	c.report(fmt.Sprintf("replication slots: %d of max_replication_slots=%d in use", slotsUsed, slotsMax), err)
	err = nil
	if sendersUsed >= sendersMax {
		err = fix.With(errors.New("none is free for pgpilot's stream"), "raise max_wal_senders: "+p.SetParameter("max_wal_senders", strconv.Itoa(sendersMax+1), true))
	}
	c.report(fmt.Sprintf("WAL senders: %d of max_wal_senders=%d in use", sendersUsed, sendersMax), err)
}

// checkUserpilot sends two harmless requests for the status of a job that
// does not exist: first without a key, which Userpilot refuses (401: its
// published answer to a missing key), then with the configured one, which
// it accepts (404: no such job). A server that answers 404 without a key
// does not serve Userpilot's paths (a wrong base URL, a proxy, a web site),
// so its 404 with the key says nothing about the key. The key goes only
// into the header; no error built here can contain it.
func checkUserpilot(ctx context.Context, cfg *config.Config, c *checker) {
	endpoint := cfg.Userpilot.Endpoint
	name := "Userpilot at " + endpoint + " reachable and the API key accepted"
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	wrongEndpoint := "set userpilot.endpoint to Userpilot's API host and nothing more: us, eu, or the URL Userpilot's Settings → Environment shows (no path, no proxy in between)"

	status, location, err := probeUserpilot(ctx, endpoint, "")
	switch {
	case err != nil:
		c.report(name, err)
		return
	case status/100 == 3:
		c.report(name, fix.With(fmt.Errorf("it answered with a redirect (HTTP %d to %q)", status, location), wrongEndpoint))
		return
	case status != http.StatusUnauthorized && status != http.StatusForbidden:
		c.report(name, fix.With(fmt.Errorf("it is not Userpilot's API: GET %s without a key answered HTTP %d, where Userpilot answers 401",
			checkProbePath, status), wrongEndpoint))
		return
	}

	status, location, err = probeUserpilot(ctx, endpoint, strings.TrimSpace(cfg.Userpilot.APIKey))
	switch {
	case err != nil:
		c.report(name, err)
	case status == http.StatusNotFound || status/100 == 2:
		// 404: the key was accepted and the probe job does not exist.
		c.report(name, nil)
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		c.report(name, fmt.Errorf("Userpilot refused the API key (HTTP %d): fix userpilot.api_key (Userpilot: Settings → Environment; "+
			"and check that userpilot.endpoint is your account's region)", status))
	case status/100 == 3:
		c.report(name, fix.With(fmt.Errorf("it answered with a redirect (HTTP %d to %q)", status, location), wrongEndpoint))
	default:
		c.report(name, fix.With(fmt.Errorf("unexpected answer HTTP %d to GET %s (a refused key is 401, an accepted one 404)", status, checkProbePath),
			"check userpilot.endpoint, or try again if Userpilot is having trouble"))
	}
}

// probeUserpilot asks for the status of the probe job, with key when it
// is not "", and returns the answer's status (and Location, for a
// redirect). Its errors carry their fix and never the key.
func probeUserpilot(ctx context.Context, endpoint, key string) (status int, location string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+checkProbePath, nil)
	if err != nil {
		return 0, "", fix.With(fmt.Errorf("build the request: %w", err), "check userpilot.endpoint")
	}
	if key != "" {
		req.Header.Set("Authorization", "Token "+key)
	}
	req.Header.Set("Accept", "application/json, text/plain, */*")
	req.Header.Set("X-API-Version", "2020-09-22")
	req.Header.Set("User-Agent", "pgpilot check")
	client := &http.Client{
		// A redirect means a wrong endpoint: report it rather than follow it
		// (with the key) somewhere else.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", fix.With(fmt.Errorf("cannot reach it (%w)", err), "check userpilot.endpoint, and that this machine can reach it (proxy, firewall, DNS)")
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Location"), nil
}

// formatBytes prints n in bytes and, from 1 KiB on, in binary units too.
func formatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB (%d bytes)", float64(n)/float64(div), "KMGTPE"[exp], n)
}
