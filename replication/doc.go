// Package replication reads the mapped table out of Postgres: it owns the
// connections (replication mode and SQL), the publication and the logical
// slot, the catalog look-ups (columns, types, key, replica identity), the
// chunk reads a snapshot is made of (keyset pages, each with its MVCC
// snapshot and the WAL position after it), and the stream loop that decodes
// pgoutput into row.Transactions of row.Changes.
//
// It knows nothing of Userpilot. It never confirms to Postgres a position it
// was not given: the caller says, through StreamOptions.Confirmed, what has
// been durably checkpointed, and only that is sent as the slot's flush
// position.
package replication
