package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
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
	n, bad := 0, 0
	err = replication.QueryRows(ctx, conn.PgConn(), replication.SelectColumns(table, cols, *where, *limit), func(vals []row.Value) error {
		n++
		id, err := m.Identify(vals)
		if err != nil {
			bad++
			fmt.Fprintf(stderr, "row %d would be set aside: %v\n", n, err)
			return nil
		}
		return enc.Encode(id)
	})
	if err != nil {
		return fmt.Errorf("read %s: %w", table, err)
	}
	fmt.Fprintf(stderr, "%d rows read, %d would be set aside; nothing was sent\n", n, bad)
	return nil
}
