package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/related"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/userpilot"
)

// previewCommand prints the identify payloads that rows would become, as
// JSON lines, and sends nothing.
func previewCommand(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs, path := commandFlags("preview", stderr)
	limit := fs.Int("limit", 10, "how many rows to read (0: all)")
	where := fs.String("where", "", "an SQL condition choosing the rows, e.g. \"plan = 'pro'\"")
	cfg, err := loadConfig(fs, path, args, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	conn, table, cols, err := openTable(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	// Compiled once, against every column, so a mistake names the columns
	// there are; the rows are read whole for it.
	m, err := mapping.Compile(cfg.Companies, table.String(), cols)
	if err != nil {
		return usageError{fmt.Errorf("%s: %w", cfg.Path, err)}
	}
	// Seeing the payloads is when to notice what they carry.
	for _, pd := range cfg.Companies.PersonalData(cols) {
		fmt.Fprintf(stderr, "preview: warning: %s\n  fix: %s\n", pd.Problem(cfg.Path), pd.Fix())
	}
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	// Related keys are read as the daemon reads them, for a batch of
	// companies at a time, on a connection of their own (the rows stream
	// on the first).
	rel, err := openRelated(ctx, cfg)
	if err != nil {
		return err
	}
	defer rel.close()
	cond := *where
	if cfg.Companies.Where != "" {
		cond = cfg.Companies.Where
		if *where != "" {
			cond = "(" + cfg.Companies.Where + ") AND (" + *where + ")"
		}
	}
	n, bad := 0, 0
	var batch []userpilot.Company
	flush := func() error {
		if err := rel.add(ctx, batch); err != nil {
			return err
		}
		for _, co := range batch {
			if err := enc.Encode(co); err != nil {
				return err
			}
		}
		batch = batch[:0]
		return nil
	}
	err = replication.QueryRows(ctx, conn.PgConn(), replication.SelectColumns(table, cols, cond, *limit), func(vals []row.Value) error {
		n++
		id, err := m.Identify(vals)
		if err != nil {
			bad++
			fmt.Fprintf(stderr, "row %d would be set aside: %v\n", n, err)
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
	fmt.Fprintf(stderr, "%d rows read, %d would be set aside; nothing was sent\n", n, bad)
	return nil
}

// relatedReader adds the related keys to preview's payloads (nothing when
// companies.related is not configured).
type relatedReader struct {
	conn *pgx.Conn
	plan *related.Plan
	m    *mapping.Mapper
}

func openRelated(ctx context.Context, cfg *mapping.Config) (*relatedReader, error) {
	r := &relatedReader{}
	if len(cfg.Companies.Related) == 0 {
		return r, nil
	}
	var err error
	if r.conn, err = replication.ConnectSQL(ctx, cfg.Postgres.URL); err != nil {
		return nil, err
	}
	if r.plan, err = related.Compile(ctx, r.conn, cfg.Companies); err != nil {
		r.close()
		if errors.As(err, new(mapping.ConfigErrors)) {
			return nil, usageError{fmt.Errorf("%s: %w", cfg.Path, err)}
		}
		return nil, err
	}
	if r.m, err = related.Mapper(cfg.Companies, r.plan.Relation()); err != nil {
		r.close()
		return nil, usageError{fmt.Errorf("%s: %w", cfg.Path, err)}
	}
	return r, nil
}

// add reads the related values of cos and merges them into their metadata.
func (r *relatedReader) add(ctx context.Context, cos []userpilot.Company) error {
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
		if err != nil {
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
