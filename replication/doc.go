// Package replication reads the mapped table out of Postgres: it owns the
// connection in replication mode, the publication and the logical slot, the
// initial snapshot taken in the slot's exported snapshot, and the stream loop
// that decodes pgoutput into Transactions of row Changes.
//
// It knows nothing of Userpilot. It never confirms to Postgres a position it
// was not given: the caller says, through StreamOptions.Confirmed, what has
// been durably checkpointed, and only that is sent as the slot's flush
// position.
package replication
