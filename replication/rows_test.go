package replication_test

import (
	"context"
	"runtime"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
)

func TestQueryRowsValuesAreTheTextAndOwnTheirBytes(t *testing.T) {
	ctx := context.Background()
	_, conn := connect(t)
	var rows [][]row.Value
	err := replication.QueryRows(ctx, conn.PgConn(),
		`SELECT * FROM (VALUES ('abc', NULL::text, '', 42::int, 'Ünïcødé'), ('def', 'x', 'y', -1, '')) v`,
		func(vals []row.Value) error {
			rows = append(rows, vals)
			return nil
		})
	require.NoError(t, err)
	require.Len(t, rows, 2)
	assert.Equal(t, []row.Value{{Text: []byte("abc")}, {Null: true}, {}, {Text: []byte("42")}, {Text: []byte("Ünïcødé")}}, rows[0],
		"NULL is Null; an empty text is nil, not NULL")
	assert.Equal(t, []row.Value{{Text: []byte("def")}, {Text: []byte("x")}, {Text: []byte("y")}, {Text: []byte("-1")}, {}}, rows[1],
		"a later row does not overwrite an earlier one")

	_ = append(rows[1][1].Text, "ZZZ"...) // a consumer appending to one value
	assert.Equal(t, "y", string(rows[1][2].Text), "appending to a value must not overwrite the next")
}

// BenchmarkQueryRows reads the companies table as the initial snapshot
// does. Reported per row: heap allocations (pgconn's included).
func BenchmarkQueryRows(b *testing.B) {
	const rows = 20_000
	ctx := context.Background()
	url := pg.NewDatabaseT(b)
	conn, err := replication.ConnectSQL(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := workload.Create(ctx, conn); err != nil {
		b.Fatal(err)
	}
	if err := workload.Seed(ctx, conn, rows); err != nil {
		b.Fatal(err)
	}
	cols, err := replication.TableColumns(ctx, conn, companies)
	if err != nil {
		b.Fatal(err)
	}
	query := replication.SelectColumns(companies, cols, "", 0)
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	b.ResetTimer()
	for range b.N {
		n := 0
		if err := replication.QueryRows(ctx, conn.PgConn(), query, func([]row.Value) error { n++; return nil }); err != nil {
			b.Fatal(err)
		}
		if n != rows {
			b.Fatalf("read %d rows, want %d", n, rows)
		}
	}
	b.StopTimer()
	runtime.ReadMemStats(&ms1)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*rows), "ns/row")
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/float64(b.N*rows), "allocs/row")
}

// TestCompaniesWithoutRowMergesInByteOrder: the known companies no row
// holds any more are found, in the order Go sorts strings, whatever order
// the table's collation would give (the ids "10" and "9", upper and lower
// case, and multibyte text).
func TestCompaniesWithoutRowMergesInByteOrder(t *testing.T) {
	ctx := context.Background()
	_, conn := connect(t)
	_, err := conn.Exec(ctx, `CREATE TABLE companies (id text PRIMARY KEY COLLATE "en_US", name text);
		INSERT INTO companies VALUES ('10', 'a'), ('9', 'b'), ('B', 'c'), ('a', 'd'), ('é', 'e'), ('z', 'f')`)
	if err != nil {
		// Not every machine has that collation: the default one will do.
		_, err = conn.Exec(ctx, `CREATE TABLE companies (id text PRIMARY KEY, name text);
			INSERT INTO companies VALUES ('10', 'a'), ('9', 'b'), ('B', 'c'), ('a', 'd'), ('é', 'e'), ('z', 'f')`)
	}
	require.NoError(t, err)
	known := []string{"1", "10", "100", "9", "A", "B", "a", "b", "z", "é", "ü"}
	require.True(t, slices.IsSorted(known))
	gone, err := replication.CompaniesWithoutRow(ctx, conn, companies, "id", known)
	require.NoError(t, err)
	assert.Equal(t, []string{"1", "100", "A", "b", "ü"}, gone)

	gone, err = replication.CompaniesWithoutRow(ctx, conn, companies, "id", nil)
	require.NoError(t, err)
	assert.Empty(t, gone)
	_, err = conn.Exec(ctx, `DELETE FROM companies`)
	require.NoError(t, err)
	gone, err = replication.CompaniesWithoutRow(ctx, conn, companies, "id", known)
	require.NoError(t, err)
	assert.Equal(t, known, gone, "no row at all: every known company is gone")
}
