package config

import "github.com/pgpilot/pgpilot/mapping"

// The keys of the users: section. company_from is listed so that it is
// refused with its fix rather than as an unknown key.
var usersKeys = []string{"table", "user_id", "company_id", "company_from", "metadata", "on_delete", "on_delete_metadata", "related", "where", "removed_keys"}

// users reads the users: section. The keys it shares with companies: are
// read by the same code, into the companies-shaped view of the section
// (mapping.Users.Entity), and copied over.
func (p *parser) users(s section) mapping.Users {
	u := mapping.Users{File: p.file}
	c := mapping.Companies{Kind: mapping.User, File: p.file}
	if v, ok := p.required(s, "table", "write table: public.users (the table of users to mirror)"); ok {
		schema, name, pr := parseTable(v.text)
		if pr.msg != "" {
			p.fail(v.line, s.keyOf("table"), v.show()+" "+pr.msg, pr.fix)
		}
		u.Table, u.Schema, u.Name = v.text, schema, name
	}
	if v, ok := p.required(s, "user_id", "write user_id: id (the column holding the user's id)"); ok {
		u.UserID, u.UserIDLine = v.text, v.line
	}
	if v, ok := p.value(s, "company_id"); ok && p.nonEmpty(v, s.keyOf("company_id"), "write company_id: account_id (the column holding the user's company's id), or leave it out") {
		u.CompanyID, u.CompanyIDLine = v.text, v.line
	}
	p.companyFrom(s)
	if _, written := s.entries["metadata"]; written || u.CompanyID == "" {
		// Without metadata, a users section syncs each user's company:
		// worth it when the front end sends the users' properties but
		// not their company.
		c.Metadata = p.metadata(s)
	}
	p.removedKeys(s, &c)
	p.onDelete(s, &c)
	c.Related = p.related(s, mapping.User)
	p.where(s, &c)
	p.uniqueKeys(&c, s)
	u.Metadata, u.Related = c.Metadata, c.Related
	u.OnDelete, u.OnDeleteMetadata = c.OnDelete, c.OnDeleteMetadata
	u.Where, u.WhereLine = c.Where, c.WhereLine
	u.KeepRemovedKeys = c.KeepRemovedKeys
	return u
}

// companyFrom refuses users.company_from, a many-to-many membership table.
// Userpilot holds one company per user; choosing one of several rows would
// make a user's company depend on rows of another table, which pgpilot
// would have to re-read on every change of that table to keep it current,
// and any rule (the oldest row, the newest) moves users between companies
// when a membership is added or removed elsewhere. A column of the users
// table (or of a view that is the users table) holds the choice where the
// application makes it.
func (p *parser) companyFrom(s section) {
	e, ok := s.entries["company_from"]
	if !ok {
		return
	}
	p.fail(e.key.Line, s.keyOf("company_from"),
		"a membership table is not supported: Userpilot holds one company per user, and a company picked from several rows of another table "+
			"would move users whenever a membership elsewhere is added or removed",
		"map the column that holds each user's primary company (company_id: account_id), adding one to the users table if there is none; "+
			"docs/configure.md (\"One company per user\") shows how")
}
