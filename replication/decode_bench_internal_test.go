package replication

import (
	"context"
	"encoding/binary"
	"slices"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/pgpilot/pgpilot/row"
)

// BenchmarkHandleMessage is the stream's work on a 100-row transaction of
// the companies table (the fuzz corpus's insert, nine columns) once the
// bytes are read: decoding, filtering by table, handing the transaction
// on. Reported per row; no Postgres (see BenchmarkStreamDecode for the
// stream with its connection).
func BenchmarkHandleMessage(b *testing.B) {
	relMsg, insert := seed(b, "insert")
	m, err := decodeMessage(relMsg)
	if err != nil {
		b.Fatal(err)
	}
	rel, err := decodeRelation(context.Background(), m.(*pglogrepl.RelationMessage), IdentityTypes{})
	if err != nil {
		b.Fatal(err)
	}
	out := make(chan row.Transaction, 1)
	s := &streamer{opts: StreamOptions{Table: rel.Table, Related: []row.Table{{Schema: "public", Name: "subscriptions"}}, ChunkChanges: 250},
		out: out, relations: map[uint32]*row.Relation{}}
	s.relations[rel.ID] = rel
	begin := []byte{'B', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9}
	commit := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64([]byte{'C', 0}, 100), 110)
	commit = binary.BigEndian.AppendUint64(commit, 0)
	msgs := append(append([][]byte{begin}, slices.Repeat([][]byte{insert}, 100)...), commit)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		for _, m := range msgs {
			if err := s.handleMessage(context.Background(), m); err != nil {
				b.Fatal(err)
			}
		}
		<-out
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*100), "ns/row")
}
