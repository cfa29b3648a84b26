package mapping

// Entity is what a mapping's rows become in Userpilot: company profiles
// (the companies: section) or users with their company (users:). The
// stages that map, re-read and snapshot rows are the same for both; the
// entity names the section and the id key in their messages, and keeps
// the two key spaces apart. The zero Entity is Company.
type Entity uint8

// The entities a mapping file may sync.
const (
	Company Entity = iota
	User
)

// String is the entity's name in one word, as metrics label it
// (entity="company", entity="user").
func (e Entity) String() string {
	if e == User {
		return "user"
	}
	return "company"
}

// Section is the config file's section that maps it: companies or users.
func (e Entity) Section() string {
	if e == User {
		return "users"
	}
	return "companies"
}

// IDKey is the section's key naming the id column, and Userpilot's name
// of the id: company_id or user_id.
func (e Entity) IDKey() string {
	if e == User {
		return "user_id"
	}
	return "company_id"
}
