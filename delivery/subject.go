package delivery

import (
	"encoding/json"
	"strings"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/userpilot"
)

// Companies and users share one ledger, one outbox and one no-op index, in
// two key spaces: an entry's key is a company's id, or userPrefix and a
// user's id. No company id can start with it: Postgres text never holds a
// NUL byte, and ids are a column's text. So a user and a company with the
// same id never collide, on any path or in any record, and every part that
// keeps something per company keeps it per user alike.
const userPrefix = "\x00u:"

// KeyOf is the key of entity's id: what the state directory's records
// (the no-op index, the outbox, the in-flight marks and jobs) are keyed by.
func KeyOf(entity mapping.Entity, id string) string {
	if entity == mapping.User {
		return userPrefix + id
	}
	return id
}

// SubjectOf is what a key of the state directory's records is about: the
// entity and its id.
func SubjectOf(key string) (mapping.Entity, string) {
	if id, ok := strings.CutPrefix(key, userPrefix); ok {
		return mapping.User, id
	}
	return mapping.Company, key
}

func keyOf(entity mapping.Entity, id string) string { return KeyOf(entity, id) }
func subjectOf(key string) (mapping.Entity, string) { return SubjectOf(key) }

// call is one real-time identify, as a worker sends it: a company or a
// user, and what the no-op index records once it is accepted (under the
// entry's key, with every packed key, the user's company included).
type call struct {
	key     string
	user    bool
	company userpilot.Company
	person  userpilot.User
	record  userpilot.Company
}

// userPayload splits a user's metadata (as unpacked from its fields) into
// what Userpilot takes: the metadata, and its company, which the mapping
// carries as mapping.MembershipKey (null or absent: none).
func userPayload(id string, md userpilot.Metadata) userpilot.User {
	u := userpilot.User{UserID: id, Metadata: md}
	if raw, ok := md[mapping.MembershipKey]; ok {
		u.Metadata = make(userpilot.Metadata, len(md)-1)
		for k, v := range md {
			if k != mapping.MembershipKey {
				u.Metadata[k] = v
			}
		}
		u.CompanyID = mapping.CompanyOf(json.RawMessage(raw))
	}
	return u
}
