package replication

import (
	"bufio"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/pgpilot/pgpilot/row"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// seed reads a two-message entry of the fuzz seed corpus.
func seed(t testing.TB, name string) (relation, row []byte) {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "fuzz", "FuzzDecodeToPayload", name))
	require.NoError(t, err)
	defer f.Close()
	var msgs [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if l, ok := strings.CutPrefix(sc.Text(), "[]byte("); ok {
			s, err := strconv.Unquote(strings.TrimSuffix(l, ")"))
			require.NoError(t, err)
			msgs = append(msgs, []byte(s))
		}
	}
	require.Len(t, msgs, 2)
	return msgs[0], msgs[1]
}

// TestDecodeMessageReadsEveryRowKind decodes the seed corpus's well-formed
// messages as the stream does, and refuses the malformed ones with an error.
func TestDecodeMessageReadsEveryRowKind(t *testing.T) {
	tests := []struct {
		seed        string
		op          row.Op
		id, oldID   string // the first column of Values and Old; "" for none
		values, old int
	}{
		{"insert", row.Insert, "42", "", 9, 0},
		{"update", row.Update, "43", "", 9, 0},
		{"update_key_changed", row.Update, "105", "42", 9, 9},
		{"update_full", row.Update, "43", "42", 9, 9},
		{"delete_key", row.Delete, "42", "", 9, 0},
		{"delete_full", row.Delete, "42", "", 9, 0},
	}
	for _, tt := range tests {
		t.Run(tt.seed, func(t *testing.T) {
			relMsg, rowMsg := seed(t, tt.seed)
			m, err := decodeMessage(relMsg)
			require.NoError(t, err)
			rm, ok := m.(*pglogrepl.RelationMessage)
			require.True(t, ok)
			rel, err := decodeRelation(t.Context(), rm, IdentityTypes{})
			require.NoError(t, err)
			assert.Equal(t, row.Table{Schema: "public", Name: "companies"}, rel.Table)
			require.Len(t, rel.Columns, 9)
			assert.Equal(t, "monthly_spend", rel.Columns[4].Name)

			require.True(t, isRow(rowMsg))
			r, err := decodeRow(rowMsg, &arena{})
			require.NoError(t, err)
			ch := r.change(rel)
			assert.Equal(t, tt.op, ch.Op)
			require.Len(t, ch.Values, tt.values)
			assert.Equal(t, tt.id, string(ch.Values[0].Text))
			require.Len(t, ch.Old, tt.old)
			if tt.old > 0 {
				assert.Equal(t, tt.oldID, string(ch.Old[0].Text))
			}
		})
	}
	for _, name := range []string{"truncated_tuple", "length_past_end"} {
		_, rowMsg := seed(t, name)
		_, err := decodeRow(rowMsg, &arena{})
		assert.ErrorContains(t, err, "malformed", name)
	}
	_, err := decodeMessage([]byte("T\xff\xff\xff\xff\x00\x00\x00\x00\x01"))
	assert.ErrorContains(t, err, "claims 4294967295 relations")
}

// TestDecodeRowCopiesOutOfTheMessage: the connection reuses its buffer for
// the next message, so every value must be a copy; and values of rows
// decoded one after another into one arena never share bytes.
func TestDecodeRowCopiesOutOfTheMessage(t *testing.T) {
	_, rowMsg := seed(t, "insert")
	msg := append([]byte(nil), rowMsg...)
	a := &arena{}
	first, err := decodeRow(msg, a)
	require.NoError(t, err)
	want := make([]string, len(first.values))
	for i, v := range first.values {
		want[i] = string(v.Text)
		assert.Equal(t, len(v.Text), cap(v.Text), "column %d: an append must not reach the next value", i)
	}
	second, err := decodeRow(msg, a)
	require.NoError(t, err)
	for i := range msg {
		msg[i] = 0xee // the next message arrives in the same buffer
	}
	second.values[0].Text = append(second.values[0].Text, "x"...) // capped: never writes into first's bytes
	for i, v := range first.values {
		assert.Equal(t, want[i], string(v.Text), "column %d", i)
	}
	assert.Equal(t, want[0]+"x", string(second.values[0].Text))
}

// TestDecodeRowRefusesMalformedMessages: each length and count is checked
// against the message, so a damaged one is an error, never a panic or a
// huge allocation.
func TestDecodeRowRefusesMalformedMessages(t *testing.T) {
	tests := []struct{ name, msg, want string }{
		{"short", "I\x00\x00", "no relation id"},
		{"insert without new tuple", "I\x00\x00@\x01K\x00\x01n", "unexpected tuple kind 'K'"},
		{"delete with a new tuple", "D\x00\x00@\x01N\x00\x01n", "unexpected tuple kind 'N'"},
		{"update old tuple then nothing", "U\x00\x00@\x01K\x00\x01n", "no new tuple"},
		{"column count past the end", "I\x00\x00@\x01N\xff\xff", "claims 65535 columns"},
		{"column missing", "I\x00\x00@\x01N\x00\x02t\x00\x00\x00\x00", "column 2 of 2 missing"},
		{"no length", "I\x00\x00@\x01N\x00\x01t\x00\x00", "column 1 without length"},
		{"length past the end", "I\x00\x00@\x01N\x00\x01t\x7f\xff\xff\xffab", "claims 2147483647 bytes, 2 left"},
		{"unknown column kind", "I\x00\x00@\x01N\x00\x01z", "unknown kind 'z'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeRow([]byte(tt.msg), &arena{})
			require.Error(t, err)
			assert.Contains(t, err.Error(), "malformed")
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

// A transaction's changes are allocated once, at the size of the last
// transaction's: grown from nothing, 100 rows cost eight allocations and
// 2.5 times their size (in a catch-up of 100-row transactions, the most a
// change allocated after its values). Nothing else of a transaction
// allocates.
func TestATransactionsChangesAreSizedAsTheLastOnes(t *testing.T) {
	table := row.Table{Schema: "public", Name: "companies"}
	out := make(chan row.Transaction, 100)
	s := &streamer{opts: StreamOptions{Table: table, ChunkChanges: 250}, out: out,
		relations: map[uint32]*row.Relation{7: {Table: table}}}
	begin := []byte{'B', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9}
	insert := []byte{'I', 0, 0, 0, 7, 'N', 0, 1, 't', 0, 0, 0, 1, '1'}
	commit := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64([]byte{'C', 0}, 100), 110)
	commit = binary.BigEndian.AppendUint64(commit, 0)
	msgs := append(append([][]byte{begin}, slices.Repeat([][]byte{insert}, 100)...), commit)
	var last row.Transaction
	txn := func() {
		for _, m := range msgs {
			require.NoError(t, s.handleMessage(context.Background(), m))
		}
		got := <-out
		require.Len(t, got.Changes, 100)
		last = got
	}
	txn()             // the first is grown: nothing came before it
	s.arena = arena{} // its blocks are allocated as they fill: counted apart
	allocs := testing.AllocsPerRun(10, txn)
	// Per transaction: its changes, and a block of values every 10
	// transactions (AllocsPerRun rounds up). Its begin and commit are read
	// in place and the open transaction is the stream's own value: as
	// pglogrepl's messages and an object, they were three more.
	assert.LessOrEqual(t, allocs, 2.0, "the changes were grown, or the transaction, its begin or its commit allocated")
	assert.Equal(t, 100, cap(last.Changes))
}

// Rows are kept or dropped by their relation's table, and each keeps the
// description of its relation Postgres sent last: the stream remembers the
// relation of the last row it kept, but a new description (the table
// altered) and a row of another relation are each looked up again.
func TestRowsTakeTheirRelationsLatestDescription(t *testing.T) {
	table := row.Table{Schema: "public", Name: "companies"}
	other := row.Table{Schema: "public", Name: "audit"}
	out := make(chan row.Transaction, 1)
	s := &streamer{opts: StreamOptions{Table: table, ChunkChanges: 250}, out: out, relations: map[uint32]*row.Relation{}}
	first, audit, second := &row.Relation{ID: 7, Table: table}, &row.Relation{ID: 8, Table: other}, &row.Relation{ID: 7, Table: table}
	s.describe(7, first)
	s.describe(8, audit)
	insert := func(rel byte) []byte { return []byte{'I', 0, 0, 0, rel, 'N', 0, 1, 't', 0, 0, 0, 1, '1'} }
	begin := []byte{'B', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9}
	commit := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64([]byte{'C', 0}, 100), 110)
	commit = binary.BigEndian.AppendUint64(commit, 0)
	ctx := context.Background()
	for _, m := range [][]byte{begin, insert(7), insert(8), insert(7)} {
		require.NoError(t, s.handleMessage(ctx, m))
	}
	s.describe(7, second) // ALTER TABLE: Postgres describes the table anew
	for _, m := range [][]byte{insert(7), insert(8), commit} {
		require.NoError(t, s.handleMessage(ctx, m))
	}
	got := <-out
	var rels []*row.Relation
	for _, ch := range got.Changes {
		rels = append(rels, ch.Relation)
	}
	assert.Equal(t, []*row.Relation{first, first, second}, rels, "the audit table's rows are dropped, and a row after the new description has it")
	assert.Same(t, second, rels[2])
}

// Begin and Commit are read in place as pglogrepl reads them: the same
// positions and times, whatever the bytes; too short a message is an
// error, not a panic.
func FuzzBeginAndCommitReadAsPglogreplDoes(f *testing.F) {
	begin := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64([]byte{'B'}, 0x16B3748), 818_000_000_123_456), 741)
	commit := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64([]byte{'C', 0}, 0x16B3748), 0x16B3778), 818_000_000_123_456)
	f.Add(begin)
	f.Add(commit)
	f.Add([]byte{'B', 1, 2})
	f.Add(append(commit, 9, 9))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 || (data[0] != 'B' && data[0] != 'C') {
			return
		}
		want, wantErr := pglogrepl.Parse(data)
		if data[0] == 'B' {
			got, err := decodeBegin(data)
			if wantErr != nil {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			w := want.(*pglogrepl.BeginMessage)
			assert.Equal(t, w.FinalLSN, got.FinalLSN)
			assert.Equal(t, w.Xid, got.Xid)
			assert.True(t, w.CommitTime.Equal(got.CommitTime), "%s, want %s", got.CommitTime, w.CommitTime)
			return
		}
		got, err := decodeCommit(data)
		if wantErr != nil {
			require.Error(t, err)
			return
		}
		require.NoError(t, err)
		w := want.(*pglogrepl.CommitMessage)
		assert.Equal(t, w.Flags, got.Flags)
		assert.Equal(t, w.CommitLSN, got.CommitLSN)
		assert.Equal(t, w.TransactionEndLSN, got.TransactionEndLSN)
		assert.True(t, w.CommitTime.Equal(got.CommitTime), "%s, want %s", got.CommitTime, w.CommitTime)
	})
}
