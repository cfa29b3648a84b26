package mapping

import (
	"fmt"
	"strconv"
)

// Generated refuses what reads a generated column of the companies table
// (generated: each one's expression, replication.GeneratedColumns):
// Postgres leaves generated columns out of what logical replication
// streams, so such a key would be sent by a snapshot and never again. An
// sql: key computes the same value on the row, kept current: that is the
// fix. It returns nil or ConfigErrors.
func (c Companies) Generated(generated map[string]string) error {
	if len(generated) == 0 {
		return nil
	}
	var errs ConfigErrors
	section := c.Kind.Section()
	if expr, ok := generated[c.CompanyID]; ok {
		errs = append(errs, &ConfigError{File: c.File, Line: c.CompanyIDLine, Key: section + "." + c.Kind.IDKey(),
			Msg: fmt.Sprintf("column %q is a generated column (%s), which Postgres does not stream", c.CompanyID, expr),
			Fix: "choose a column that is not generated (the primary key, usually)"})
	}
	for _, f := range c.Metadata {
		expr, ok := generated[f.Column]
		if f.SQL != "" || !ok {
			continue
		}
		if c.Kind == User && f.Membership() {
			// A user would keep the company of its first sync.
			errs = append(errs, &ConfigError{File: c.File, Line: f.Line, Key: MembershipKey,
				Msg: fmt.Sprintf("column %q is a generated column (%s), which Postgres does not stream: a user would keep the company it had at the initial sync", f.Column, expr),
				Fix: "map the column the generated one is computed from, or a plain column holding the user's company's id"})
			continue
		}
		errs = append(errs, &ConfigError{File: c.File, Line: f.Line, Key: section + ".metadata." + f.Key,
			Msg: fmt.Sprintf("column %q is a generated column, which Postgres does not stream (logical replication leaves it out): "+
				"its value would be sent by the initial sync and never again", f.Column),
			Fix: fmt.Sprintf("map what it computes with sql:, which pgpilot keeps current on every change of the row: %s: {sql: %s}",
				f.Key, strconv.Quote(expr))})
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}
