package mapping

import "slices"

// MembershipKey is the metadata key under which Users.Entity carries the
// user's company: the value of users.company_id's column, as a string,
// null when the user has none. It is not metadata: the engine sends it as
// Userpilot's company ({"company": {"id": …}} in real time, a flat
// company_id in bulk) and leaves the company out when it is null. The
// config loader refuses a metadata key of this name, so no mapped key can
// be mistaken for it; it reads as the config key it stands for in every
// message and record that lists keys (a mapping change, a backfill).
const MembershipKey = "users.company_id"

// Users is the mapping of one table's rows to Userpilot users and their
// company membership (the users: section): each row is one user, its
// UserID column the user's id and its CompanyID column the id of the one
// company it belongs to (equal to a companies row's companies.company_id).
type Users struct {
	// OnDelete is the policy for deleted rows: ignore (default), mark or
	// delete (DELETE /v1/users); OnDeleteMetadata is what mark sends
	// (default deleted: true).
	OnDelete         string
	OnDeleteMetadata map[string]any

	Table  string // as written
	Schema string // "public" when the table is unqualified
	Name   string // unquoted table name
	UserID string // column name
	// CompanyID is the column holding the user's company's id; a NULL
	// (or empty) value means the user belongs to no company. "" when the
	// section maps no membership: users are identified without a company.
	CompanyID string
	Metadata  []Field // in file order

	// Related are the lookups and aggregates over rows that belong to a
	// user (users.related): each entry's CompanyID field holds the column
	// with the user's id, written user_id: in the file.
	Related []Related
	// Where, when not "", is the SQL condition a users row must match to
	// be synced (users.where); WhereLine is its line.
	Where     string
	WhereLine int

	// KeepRemovedKeys (removed_keys: keep) leaves a key dropped from the
	// mapping as Userpilot holds it; by default each user's is sent once
	// as null.
	KeepRemovedKeys bool

	// File, UserIDLine and CompanyIDLine locate the mapping in its file.
	File                      string
	UserIDLine, CompanyIDLine int
}

// Entity is u as the stages that map, re-read and snapshot companies take
// a mapping: the user_id column as the id column, and the metadata with,
// first, one field reading the membership column as a string under
// MembershipKey (when the section maps one). Every message it leads to
// names the users section and its keys. u is not changed.
func (u Users) Entity() Companies {
	c := Companies{
		Kind:             User,
		OnDelete:         u.OnDelete,
		OnDeleteMetadata: u.OnDeleteMetadata,
		Table:            u.Table, Schema: u.Schema, Name: u.Name,
		CompanyID: u.UserID, CompanyIDLine: u.UserIDLine,
		Where: u.Where, WhereLine: u.WhereLine,
		KeepRemovedKeys: u.KeepRemovedKeys,
		File:            u.File,
	}
	if u.CompanyID != "" {
		c.Metadata = append(c.Metadata, Field{Key: MembershipKey, Column: u.CompanyID, Type: TypeString, Line: u.CompanyIDLine})
	}
	c.Metadata = append(c.Metadata, u.Metadata...)
	c.Related = slices.Clone(u.Related)
	for i := range c.Related {
		c.Related[i].Kind = User
	}
	return c
}

// Membership reports whether f is the field Entity adds for the user's
// company.
func (f Field) Membership() bool { return f.Key == MembershipKey }
