package replication_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
)

func TestKeyColumnsFollowThePrimaryKeyOrTheReplicaIdentityIndex(t *testing.T) {
	_, conn := connect(t)
	ctx := context.Background()
	_, err := conn.Exec(ctx, `
		CREATE TABLE pk (region text, id int, name text, PRIMARY KEY (region, id));
		CREATE TABLE ri (code text NOT NULL, name text);
		CREATE UNIQUE INDEX ri_code ON ri (code);
		ALTER TABLE ri REPLICA IDENTITY USING INDEX ri_code;
		CREATE TABLE nokey (id int, name text);
		ALTER TABLE nokey REPLICA IDENTITY FULL;`)
	require.NoError(t, err)
	tests := []struct {
		table string
		want  []string
	}{
		{"pk", []string{"region", "id"}},
		{"ri", []string{"code"}},
	}
	for _, tt := range tests {
		got, err := replication.KeyColumns(ctx, conn, row.Table{Schema: "public", Name: tt.table})
		require.NoError(t, err, tt.table)
		assert.Equal(t, tt.want, got, tt.table)
	}
	_, err = replication.KeyColumns(ctx, conn, row.Table{Schema: "public", Name: "nokey"})
	require.ErrorIs(t, err, replication.ErrNoKey)
	assert.Contains(t, err.Error(), "ADD PRIMARY KEY", "the error says how to fix it")
}

func TestReadChunkPagesByKeyInTextFormat(t *testing.T) {
	_, conn := connect(t)
	ctx := context.Background()
	_, err := conn.Exec(ctx, `
		CREATE TABLE pk (region text, id int, seats int, PRIMARY KEY (region, id));
		INSERT INTO pk SELECT r, i, i * 10 FROM unnest(ARRAY['eu', 'us', 'ap']) r, generate_series(1, 4) i;`)
	require.NoError(t, err)
	tbl := row.Table{Schema: "public", Name: "pk"}
	cols, err := replication.TableColumns(ctx, conn, tbl)
	require.NoError(t, err)
	before, err := replication.CurrentLSN(ctx, conn)
	require.NoError(t, err)

	read := func(where string, args ...any) []string {
		var got []string
		q := replication.ChunkQuery{Table: tbl, Columns: cols, Key: []int{0, 1}, Limit: 5, Where: where, Args: args}
		for {
			c, err := replication.ReadChunk(ctx, conn, q)
			require.NoError(t, err)
			assert.GreaterOrEqual(t, c.High, before, "H is at or after the position before the read")
			assert.NotZero(t, c.Snapshot.Xmax)
			for _, r := range c.Rows {
				got = append(got, fmt.Sprintf("%s/%s=%s", r[0].Text, r[1].Text, r[2].Text))
			}
			if len(c.Rows) < q.Limit {
				return got
			}
			last := c.Rows[len(c.Rows)-1]
			q.After = []row.Value{last[0], last[1]}
		}
	}
	all := read("")
	assert.Equal(t, []string{"ap/1=10", "ap/2=20", "ap/3=30", "ap/4=40", "eu/1=10", "eu/2=20", "eu/3=30", "eu/4=40",
		"us/1=10", "us/2=20", "us/3=30", "us/4=40"}, all, "every row once, in key order, as text")
	assert.Equal(t, []string{"ap/4=40", "eu/4=40", "us/4=40"}, read("seats > $1", 30), "a subset, with its own parameter")
}

func TestIdentityColumnsAreTheReplicaIdentityIndexWhenItIsNotTheKey(t *testing.T) {
	_, conn := connect(t)
	ctx := context.Background()
	_, err := conn.Exec(ctx, `
		CREATE TABLE pkri (id int PRIMARY KEY, code text NOT NULL, name text);
		CREATE UNIQUE INDEX pkri_code ON pkri (code);
		ALTER TABLE pkri REPLICA IDENTITY USING INDEX pkri_code;
		CREATE TABLE pkdefault (id int PRIMARY KEY, name text);
		CREATE TABLE pkfull (id int PRIMARY KEY, name text);
		ALTER TABLE pkfull REPLICA IDENTITY FULL;`)
	require.NoError(t, err)
	tests := []struct {
		table     string
		key, want []string
	}{
		{"pkri", []string{"id"}, []string{"code"}},
		{"pkdefault", []string{"id"}, nil},
		{"pkfull", []string{"id"}, nil},
	}
	for _, tt := range tests {
		tbl := row.Table{Schema: "public", Name: tt.table}
		key, err := replication.KeyColumns(ctx, conn, tbl)
		require.NoError(t, err)
		assert.Equal(t, tt.key, key, tt.table)
		got, err := replication.IdentityColumns(ctx, conn, tbl)
		require.NoError(t, err)
		assert.Equal(t, tt.want, got, tt.table)
	}
}

func TestCheckChunkQueryPlansTheExactChunkQueries(t *testing.T) {
	_, conn := connect(t)
	ctx := context.Background()
	_, err := conn.Exec(ctx, `CREATE TABLE plans (id bigint PRIMARY KEY, plan text); INSERT INTO plans VALUES (1, 'pro')`)
	require.NoError(t, err)
	tbl := row.Table{Schema: "public", Name: "plans"}
	cols, err := replication.TableColumns(ctx, conn, tbl)
	require.NoError(t, err)
	check := func(where string) error {
		return replication.CheckChunkQuery(ctx, conn, replication.ChunkQuery{Table: tbl, Columns: cols, Key: []int{0}, Limit: 10, Where: where})
	}
	assert.NoError(t, check("plan = 'pro'"))
	assert.NoError(t, check("plan::int > 0"), "planned, not run: it fails only on rows, at run time")
	assert.ErrorContains(t, check("no_such_column = 1"), "no_such_column")
	assert.ErrorIs(t, check("id > 0 -- every row"), replication.ErrCondition)
	assert.ErrorIs(t, check("id > 0) OR (true"), replication.ErrCondition)
}

// A chunk's rows are the text pgoutput would send (NULL is Null, an empty
// text nil), each value its own bytes, and they cost allocations by the
// block, not by the row: the initial sync of a large table reads every row
// through here.
func TestReadChunkValuesAreTheTextOwnTheirBytesAndAreAllocatedByTheBlock(t *testing.T) {
	_, conn := connect(t)
	ctx := context.Background()
	const n = 2000
	_, err := conn.Exec(ctx, `CREATE TABLE chunky (id int PRIMARY KEY, name text, note text, born date)`)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `INSERT INTO chunky SELECT i, 'Ünïcødé ' || i, CASE WHEN i % 2 = 0 THEN '' END, date '2024-01-01' + i FROM generate_series(1, $1::int) i`, n)
	require.NoError(t, err)
	tbl := row.Table{Schema: "public", Name: "chunky"}
	cols, err := replication.TableColumns(ctx, conn, tbl)
	require.NoError(t, err)
	q := replication.ChunkQuery{Table: tbl, Columns: cols, Key: []int{0}, Limit: n}
	_, err = replication.ReadChunk(ctx, conn, q) // the statement prepared, pgx's buffers grown
	require.NoError(t, err)

	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	c, err := replication.ReadChunk(ctx, conn, q)
	runtime.ReadMemStats(&ms1)
	require.NoError(t, err)
	require.Len(t, c.Rows, n)
	assert.Equal(t, []row.Value{{Text: []byte("1")}, {Text: []byte("Ünïcødé 1")}, {Null: true}, {Text: []byte("2024-01-02")}}, c.Rows[0])
	assert.Equal(t, []row.Value{{Text: []byte("2")}, {Text: []byte("Ünïcødé 2")}, {}, {Text: []byte("2024-01-03")}}, c.Rows[1],
		"an empty text is nil, not NULL")
	_ = append(c.Rows[0][1].Text, "ZZZ"...) // a consumer appending to one value
	assert.Equal(t, "2024-01-02", string(c.Rows[0][3].Text), "appending to a value must not overwrite the next")
	assert.Equal(t, "2000", string(c.Rows[n-1][0].Text))
	assert.Less(t, ms1.Mallocs-ms0.Mallocs, uint64(n/4), "allocations for %d rows", n)
}
