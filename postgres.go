package main

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
)

// openTable connects and reads all columns of the companies table.
func openTable(ctx context.Context, cfg *config.Config) (*pgx.Conn, row.Table, []row.Column, error) {
	return openEntity(ctx, cfg, cfg.Companies)
}

// openEntity connects and reads all columns of the table e maps (the
// companies table, or the users table of cfg.Users.Entity()).
func openEntity(ctx context.Context, cfg *config.Config, e mapping.Companies) (*pgx.Conn, row.Table, []row.Column, error) {
	table := row.Table{Schema: e.Schema, Name: e.Name}
	conn, err := replication.ConnectSQL(ctx, cfg.Postgres.URL)
	if err != nil {
		return nil, table, nil, err
	}
	cols, err := replication.TableColumns(ctx, conn, table)
	if err != nil {
		conn.Close(context.Background())
		return nil, table, nil, err
	}
	return conn, table, cols, nil
}
