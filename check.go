package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/replication"
)

// checkCommand runs the preflight: each line ✓ or ✗ with the fix; exit 0
// only if every check passed. It changes nothing.
func checkCommand(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs, path := commandFlags("check", stderr)
	cfg, code := loadConfig(fs, path, args, stderr)
	if cfg == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	failed := 0
	report := func(name string, err error) bool {
		if err != nil {
			failed++
			fmt.Fprintf(stdout, "✗ %s: %v\n", name, err)
			return false
		}
		fmt.Fprintf(stdout, "✓ %s\n", name)
		return true
	}
	report("config "+cfg.Path, nil)

	table := replication.Table{Schema: cfg.Companies.Schema, Name: cfg.Companies.Name}
	conn, err := replication.ConnectSQL(ctx, cfg.Postgres.URL)
	if !report("Postgres reachable with the configured credentials", err) {
		return exitFailure
	}
	defer conn.Close(context.Background())
	srv, err := replication.ReadServer(ctx, conn)
	if !report("server settings readable", err) {
		return exitFailure
	}
	role := "primary"
	if srv.InRecovery {
		role = "standby"
	}
	report(fmt.Sprintf("Postgres %d (%s), wal_level=%s", srv.Major(), role, srv.WALLevel), srv.CheckServer())

	cols, err := replication.TableColumns(ctx, conn, table)
	if report("table "+table.String()+" exists", err) {
		_, err := mapping.Compile(cfg.Companies, table.String(), toMappingColumns(cols))
		report("every mapped column exists and maps to a primitive", err)
	}
	if !srv.InRecovery {
		problem, err := replication.ReplicaIdentityProblem(ctx, conn, table)
		if err == nil && problem != "" {
			err = fmt.Errorf("%s", problem)
		}
		report("replica identity lets "+table.String()+" be published", err)
	}
	pub, havePub, err := replication.ReadPublication(ctx, conn, cfg.Postgres.Publication)
	switch {
	case err != nil:
		report("publication "+cfg.Postgres.Publication, err)
	case !havePub && srv.InRecovery:
		report("publication "+cfg.Postgres.Publication, fmt.Errorf("missing, and a standby cannot create it: run on the primary: CREATE PUBLICATION %q FOR TABLE %s;", cfg.Postgres.Publication, table.Quoted()))
	case !havePub:
		report(fmt.Sprintf("publication %q will be created by `pgpilot run`", cfg.Postgres.Publication), nil)
	default:
		report(fmt.Sprintf("publication %q exists (created by pgpilot: %t)", pub.Name, pub.CreatedByPgpilot), nil)
	}
	slot, haveSlot, err := replication.ReadSlot(ctx, conn, cfg.Postgres.Slot)
	switch {
	case err != nil:
		report("replication slot "+cfg.Postgres.Slot, err)
	case !haveSlot:
		report(fmt.Sprintf("replication slot %q will be created by `pgpilot run`", cfg.Postgres.Slot), nil)
	default:
		report(fmt.Sprintf("replication slot %q (active: %t, wal_status: %s)", slot.Name, slot.Active, slot.WALStatus), slot.Usable(srv.Database))
	}
	if failed > 0 {
		fmt.Fprintf(stdout, "%d check(s) failed\n", failed)
		return exitFailure
	}
	fmt.Fprintln(stdout, "all checks passed")
	return exitOK
}
