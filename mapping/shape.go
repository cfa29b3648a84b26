package mapping

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Shape is what a mapping sends, as pgpilot records it in the state
// directory: which companies (the table, its id column, companies.where)
// and each metadata key's definition. Comparing the shape recorded with
// the one loaded says which keys Userpilot holds under an older
// definition, for every company: those are backfilled.
type Shape struct {
	Table     string `json:"table"`
	CompanyID string `json:"company_id"`
	Where     string `json:"where,omitempty"`
	// Keys maps each metadata key to its definition (JSON), what it reads
	// and how; line numbers and pii: are not part of it. A users mapping's
	// company (MembershipKey) is one of them: a change of users.company_id
	// sends every user's company again.
	Keys map[string]json.RawMessage `json:"keys"`
	// Kind is the section the shape is of, for Compare's messages; it is
	// not recorded (each entity's shape is a file of its own).
	Kind Entity `json:"-"`
}

// definition is one key's entry in a Shape.
type definition struct {
	// From is where the key's value comes from: "companies" or "users"
	// (the row, or an expression on it), or a related entry ("lookup public.t by c
	// order by …", "aggregate public.t by c").
	From     string   `json:"from"`
	Column   string   `json:"column,omitempty"`
	Path     []string `json:"path,omitempty"`
	SQL      string   `json:"sql,omitempty"`
	Type     Type     `json:"type,omitempty"`
	Values   []Label  `json:"values,omitempty"`
	Default  *string  `json:"default,omitempty"`
	KeepNull bool     `json:"keep_null,omitempty"`
}

func (f Field) definition(from string) definition {
	return definition{From: from, Column: f.Column, Path: f.Path, SQL: f.SQL, Type: f.Type, Values: f.Values, Default: f.Default, KeepNull: f.KeepNull}
}

// Shape is c's shape.
func (c Companies) Shape() Shape {
	s := Shape{Table: c.Schema + "." + c.Name, CompanyID: c.CompanyID, Where: c.Where, Keys: map[string]json.RawMessage{}, Kind: c.Kind}
	put := func(key string, d definition) {
		b, err := json.Marshal(d)
		if err != nil {
			panic(fmt.Sprintf("encode the definition of %q: %v", key, err)) // plain strings and lists: cannot fail
		}
		s.Keys[key] = b
	}
	for _, f := range c.Metadata {
		put(f.Key, f.definition(c.Kind.Section()))
	}
	for _, r := range c.Related {
		from := fmt.Sprintf("aggregate %s.%s by %s", r.Schema, r.Name, r.CompanyID)
		if r.IsLookup() {
			from = fmt.Sprintf("lookup %s.%s by %s order by %s", r.Schema, r.Name, r.CompanyID, r.OrderBy)
		}
		for _, f := range r.Metadata {
			put(f.Key, f.definition(from))
		}
		for _, a := range r.Aggregate {
			put(a.Key, definition{From: from, SQL: a.SQL, Type: a.Type})
		}
	}
	return s
}

// Keys are every metadata key c sends (companies.metadata's, then each
// related entry's), in file order; for users, MembershipKey first when
// the section maps a company.
func (c Companies) Keys() []string {
	var keys []string
	for _, f := range c.Metadata {
		keys = append(keys, f.Key)
	}
	for _, r := range c.Related {
		keys = append(keys, r.Keys()...)
	}
	return keys
}

// Changes is what differs between the shape Userpilot was synced with and
// the mapping's, key by key (each list sorted).
type Changes struct {
	Added, Changed, Removed []string
	// Scope, when not "", says why every key is sent again: the companies
	// (or users) synced are others (another table, id column or where).
	Scope string
	// Moved: the companies are others (another table or id column): the
	// old profiles are not the new ones, and nothing is cleared in them.
	Moved bool
}

// Compare says what changes from old, the shape recorded, to now.
func Compare(old, now Shape) Changes {
	var ch Changes
	for k, d := range now.Keys {
		was, ok := old.Keys[k]
		switch {
		case !ok:
			ch.Added = append(ch.Added, k)
		case !jsonEqual(was, d):
			ch.Changed = append(ch.Changed, k)
		}
	}
	for k := range old.Keys {
		if _, ok := now.Keys[k]; !ok {
			ch.Removed = append(ch.Removed, k)
		}
	}
	sort.Strings(ch.Added)
	sort.Strings(ch.Changed)
	sort.Strings(ch.Removed)
	section := now.Kind.Section()
	switch {
	case old.Table != now.Table:
		ch.Scope, ch.Moved = fmt.Sprintf("%s.table changed from %s to %s", section, old.Table, now.Table), true
	case old.CompanyID != now.CompanyID:
		ch.Scope, ch.Moved = fmt.Sprintf("%s.%s changed from %s to %s", section, now.Kind.IDKey(), old.CompanyID, now.CompanyID), true
	case old.Where != now.Where:
		ch.Scope = fmt.Sprintf("%s.where changed from %q to %q", section, old.Where, now.Where)
	}
	return ch
}

// jsonEqual compares two definitions as values (a shape written by another
// version of pgpilot may order or space them otherwise).
func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return string(a) == string(b)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

// None reports whether nothing changed.
func (ch Changes) None() bool {
	return len(ch.Added)+len(ch.Changed)+len(ch.Removed) == 0 && ch.Scope == ""
}

// Backfill is what a backfill of ch sends, for every company (or user) of
// the mapping now (keys: Keys(), in file order): the current values of set,
// null for clear. With removed_keys: keep, or when the companies moved,
// nothing is cleared.
func (ch Changes) Backfill(now Companies) (set, clear []string) {
	for _, k := range now.Keys() {
		if ch.Scope != "" || slices.Contains(ch.Added, k) || slices.Contains(ch.Changed, k) {
			set = append(set, k)
		}
	}
	if !now.KeepRemovedKeys && !ch.Moved {
		// A user's company is not metadata: there is no null to clear it
		// with (Userpilot moves a user only to another company).
		clear = slices.DeleteFunc(slices.Clone(ch.Removed), func(k string) bool { return k == MembershipKey })
	}
	return set, clear
}

// Describe says what changes in a line: for the log, check and preview.
func (ch Changes) Describe(now Companies) string {
	var parts []string
	if ch.Scope != "" {
		parts = append(parts, ch.Scope+": every key is sent again")
	}
	list := func(what string, keys []string) {
		if len(keys) > 0 {
			parts = append(parts, fmt.Sprintf("%s %s", what, strings.Join(keys, ", ")))
		}
	}
	list("added", ch.Added)
	list("changed", ch.Changed)
	removed := ch.Removed
	if slices.Contains(removed, MembershipKey) {
		parts = append(parts, MembershipKey+" removed (users keep the company Userpilot has)")
		removed = slices.DeleteFunc(slices.Clone(removed), func(k string) bool { return k == MembershipKey })
	}
	switch {
	case len(removed) == 0:
	case ch.Moved:
		list("removed (left as they are in the old profiles)", removed)
	case now.KeepRemovedKeys:
		list("removed (left as Userpilot holds them: removed_keys: keep)", removed)
	default:
		list("removed (sent once as null)", removed)
	}
	return strings.Join(parts, "; ")
}
