// Package related adds to a company's metadata what other tables hold about
// it (companies.related: a lookup of one row that belongs to the company, or
// SQL aggregates over all such rows), in real time from the same slot, and
// applies companies.where to the companies rows.
//
// Compile checks the config against the database and prepares the queries
// (a Plan). The Stage sits between the snapshot stage and delivery: it takes
// the related tables' changes out of each transaction and notes the
// companies they belong to (a row that moved: both), as it notes a new
// company's (an INSERT, a new company id, a snapshot chunk's rows); it holds
// those transactions, in order, until a read; one read, in one snapshot that
// sees every transaction held, re-reads all those companies' values with one
// query per related entry; each company's values then ride, as one row of a
// Relation of their own (IsRelated, Mapper), in the last held transaction
// that asked for them. Delivery merges, skips and checkpoints them like any
// row, so the slot is never confirmed past a related change before the
// values it caused are owed, and a value read earlier never lands after one
// read later.
//
// companies.where is judged on each streamed row version's own values (and
// its old row's, which REPLICA IDENTITY FULL provides): a row that stops
// matching becomes the DELETE of its old row (on_delete applies), one that
// never matched is dropped, one that starts matching is sent whole.
//
// docs/design.md ("Related tables and where") says why it is built so.
package related
