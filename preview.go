package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/related"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// previewCommand prints the identify payloads that rows would become, as
// JSON lines, and sends nothing: the companies section's, then the users
// section's. Each line is the body pgpilot would send, so its id key says
// whose it is: company_id or user_id.
func previewCommand(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs, path := commandFlags("preview", stderr)
	limit := fs.Int("limit", 10, "how many rows to read of each section (0: all)")
	where := fs.String("where", "", "an SQL condition choosing the rows, e.g. \"plan = 'pro'\" (with both sections, name one with --companies or --users)")
	changes := fs.Bool("changes", false, "show what `pgpilot run` will backfill after a mapping change of companies: what changed since the mapping recorded in state.dir, and the payloads of the backfill")
	onlyCompanies := fs.Bool("companies", false, "preview the companies section only")
	onlyUsers := fs.Bool("users", false, "preview the users section only")
	cfg, err := loadConfig(fs, path, args, stderr)
	if err != nil {
		return err
	}
	entities, err := previewed(cfg, *onlyCompanies, *onlyUsers, *where != "", *changes)
	if err != nil {
		return err
	}
	var plan *backfillPlan
	if *changes {
		if plan, err = planBackfill(cfg, stderr); err != nil || plan == nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	for _, e := range entities {
		if err := previewEntity(ctx, cfg, e, *where, *limit, plan, enc, stderr); err != nil {
			return err
		}
	}
	return nil
}

// previewed are the sections preview reads: both, or the one the flags
// name. A --where is an SQL condition on one table: with both sections
// it must say which.
func previewed(cfg *config.Config, onlyCompanies, onlyUsers, where, changes bool) ([]mapping.Companies, error) {
	if changes {
		onlyCompanies = true // the backfill of a mapping change compares the companies' mapping
	}
	switch {
	case onlyCompanies && onlyUsers:
		return nil, usageError{errors.New("--companies and --users: name one section, or neither for both")}
	case onlyCompanies && !cfg.HasCompanies():
		return nil, usageError{fmt.Errorf("%s has no companies: section to preview", cfg.Path)}
	case onlyUsers && !cfg.HasUsers():
		return nil, usageError{fmt.Errorf("%s has no users: section to preview", cfg.Path)}
	case onlyCompanies:
		return []mapping.Companies{cfg.Companies}, nil
	case onlyUsers:
		return []mapping.Companies{cfg.Users.Entity()}, nil
	}
	all := cfg.Entities()
	if where && len(all) > 1 {
		return nil, usageError{errors.New("--where is a condition on one table: add --companies or --users to say which section it chooses the rows of")}
	}
	return all, nil
}

// previewEntity prints the payloads of e's rows (at most limit, those
// matching e's where and the --where condition).
func previewEntity(ctx context.Context, cfg *config.Config, e mapping.Companies, where string, limit int, plan *backfillPlan, enc *json.Encoder, stderr io.Writer) error {
	conn, table, cols, err := openEntity(ctx, cfg, e)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	// Compiled once, against every column, so a mistake names the columns
	// there are; the rows are read whole for it.
	m, err := mapping.Compile(e, table.String(), cols)
	if err != nil {
		return usageError{fmt.Errorf("%s: %w", cfg.Path, err)}
	}
	// Seeing the payloads is when to notice what they carry.
	for _, pd := range e.PersonalData(cols) {
		fmt.Fprintf(stderr, "preview: warning: %s\n  fix: %s\n", pd.Problem(cfg.Path), pd.Fix())
	}
	// Related keys are read as the daemon reads them, for a batch of
	// rows at a time, on a connection of their own (the rows stream on
	// the first).
	rel, err := openRelated(ctx, cfg, e)
	if err != nil {
		return err
	}
	defer rel.close()
	cond := where
	if e.Where != "" {
		cond = e.Where
		if where != "" {
			cond = "(" + e.Where + ") AND (" + where + ")"
		}
	}
	n, bad := 0, 0
	var batch []userpilot.Company // a user as its section's view has it: its company is a key
	flush := func() error {
		if err := rel.add(ctx, batch, stderr); err != nil {
			return err
		}
		for _, co := range batch {
			if plan != nil {
				co = plan.narrow(co)
			}
			var line any = co
			if e.Kind == mapping.User {
				line = userOf(co)
			}
			if err := enc.Encode(line); err != nil {
				return err
			}
		}
		batch = batch[:0]
		return nil
	}
	err = replication.QueryRows(ctx, conn.PgConn(), replication.SelectColumns(table, cols, cond, limit), func(vals []row.Value) error {
		n++
		id, err := m.Identify(vals)
		var held mapping.BadValues
		if errors.As(err, &held) {
			// One bad value costs one key: the others are sent.
			fmt.Fprintf(stderr, "row %d of %s (%s %s): %v\n", n, table, e.Kind, id.CompanyID, err)
		} else if err != nil {
			bad++
			fmt.Fprintf(stderr, "row %d of %s would be set aside: %v\n", n, table, err)
			return nil
		}
		if batch = append(batch, id); len(batch) >= 1000 {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", table, err)
	}
	fmt.Fprintf(stderr, "%s: %d rows read, %d would be set aside; nothing was sent\n", table, n, bad)
	return nil
}

// userOf is the identify-user payload of a user mapped through its
// section's view: the company, mapped under mapping.MembershipKey, is
// taken out of the metadata.
func userOf(co userpilot.Company) userpilot.User {
	u := userpilot.User{UserID: co.CompanyID, Metadata: co.Metadata}
	if v, ok := u.Metadata[mapping.MembershipKey]; ok {
		delete(u.Metadata, mapping.MembershipKey)
		u.CompanyID = mapping.CompanyOf(v)
	}
	return u
}

// relatedReader adds the related keys to preview's payloads (nothing when
// the section has no related entries, where or sql: keys).
type relatedReader struct {
	kind mapping.Entity
	conn *pgx.Conn
	plan *related.Plan
	m    *mapping.Mapper
}

func openRelated(ctx context.Context, cfg *config.Config, e mapping.Companies) (*relatedReader, error) {
	r := &relatedReader{kind: e.Kind}
	if len(related.Keys(e)) == 0 {
		return r, nil
	}
	var err error
	if r.conn, err = replication.ConnectSQL(ctx, cfg.Postgres.URL); err != nil {
		return nil, err
	}
	// Preview only reads: what the stream alone needs (a FULL replica
	// identity for companies.where) is check's and run's to ask.
	if r.plan, err = related.CompileReads(ctx, r.conn, e); err != nil {
		r.close()
		if errors.As(err, new(mapping.ConfigErrors)) {
			return nil, usageError{fmt.Errorf("%s: %w", cfg.Path, err)}
		}
		return nil, err
	}
	if r.m, err = related.Mapper(e, r.plan.Relation()); err != nil {
		r.close()
		return nil, usageError{fmt.Errorf("%s: %w", cfg.Path, err)}
	}
	return r, nil
}

// add reads the related values of cos and merges them into their
// metadata; a value held back is said on stderr.
func (r *relatedReader) add(ctx context.Context, cos []userpilot.Company, stderr io.Writer) error {
	if r.plan == nil || len(cos) == 0 {
		return nil
	}
	ids := make([]string, len(cos))
	for i, co := range cos {
		ids[i] = co.CompanyID
	}
	vals, _, err := r.plan.Read(ctx, r.conn, ids)
	if err != nil {
		return err
	}
	for _, co := range cos {
		v, ok := vals[co.CompanyID]
		if !ok {
			continue
		}
		rc, err := r.m.Identify(v)
		var held mapping.BadValues
		if errors.As(err, &held) {
			fmt.Fprintf(stderr, "%s %s: %v\n", r.kind, co.CompanyID, err)
		} else if err != nil {
			return err
		}
		for k, val := range rc.Metadata {
			co.Metadata[k] = val
		}
	}
	return nil
}

func (r *relatedReader) close() {
	if r.conn != nil {
		r.conn.Close(context.Background())
	}
}

// backfillPlan is what a backfill after a mapping change sends of each
// company: the keys that changed, and null for those removed.
type backfillPlan struct {
	set, clear []string
}

// planBackfill compares the mapping with the one recorded in state.dir
// and says so on stderr; nil (and nothing more to show) when there is
// nothing to backfill.
func planBackfill(cfg *config.Config, stderr io.Writer) (*backfillPlan, error) {
	data, ok, err := state.ReadMapping(cfg.State.Dir)
	if err != nil {
		return nil, err
	}
	if !ok {
		fmt.Fprintln(stderr, "no mapping is recorded in state.dir: the first sync sends every key; nothing to backfill")
		return nil, nil
	}
	var was mapping.Shape
	if err := json.Unmarshal(data, &was); err != nil {
		return nil, fmt.Errorf("read the mapping recorded in %s: %w", cfg.State.Dir, err)
	}
	ch := mapping.Compare(was, cfg.Companies.Shape())
	if ch.None() {
		fmt.Fprintln(stderr, "the mapping is unchanged since the last run: nothing to backfill")
		return nil, nil
	}
	set, clear := ch.Backfill(cfg.Companies)
	fmt.Fprintf(stderr, "the mapping changed since the last run: %s\n", ch.Describe(cfg.Companies))
	if len(set)+len(clear) == 0 {
		fmt.Fprintln(stderr, "nothing to backfill")
		return nil, nil
	}
	fmt.Fprintln(stderr, "`pgpilot run` backfills every company alongside the stream, sending (as below):", strings.Join(append(slices.Clone(set), clear...), ", "))
	return &backfillPlan{set: set, clear: clear}, nil
}

// narrow keeps of co what the backfill sends.
func (b *backfillPlan) narrow(co userpilot.Company) userpilot.Company {
	out := userpilot.Company{CompanyID: co.CompanyID, Metadata: userpilot.Metadata{}}
	for _, k := range b.set {
		if v, ok := co.Metadata[k]; ok {
			out.Metadata[k] = v
		}
	}
	for _, k := range b.clear {
		out.Metadata[k] = userpilot.Null
	}
	return out
}
