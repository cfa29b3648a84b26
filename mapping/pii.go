package mapping

import (
	"fmt"
	"slices"
	"strings"
	"unicode"

	"github.com/pgpilot/pgpilot/row"
)

// PersonalData is a mapped key whose column looks like it holds personal
// data: Userpilot's API reference asks that sending personal data (names,
// emails, …) as metadata be checked with legal and security first. It is a
// warning for check and preview; nothing is refused.
type PersonalData struct {
	Field
	// What says what it looks like ("an email address"); Because how that
	// was told ("by its name", "by its type email").
	What, Because string
}

// PersonalData lists, in file order, the metadata keys whose column looks
// like personal data, by its name or by its declared type (a domain such
// as email, or inet), leaving out keys acknowledged with pii: true. cols
// are the table's columns, for the types; a column missing from them is
// judged by its name alone. A users mapping's rows are people: a column
// named name (or display_name, nickname, …) is a person's name there
// (LooksPersonalInUsers).
func (c Companies) PersonalData(cols []row.Column) []PersonalData {
	types := make(map[string]string, len(cols))
	for _, col := range cols {
		types[col.Name] = col.TypeName
	}
	looks := LooksPersonal
	if c.Kind == User {
		looks = LooksPersonalInUsers
	}
	var out []PersonalData
	for _, f := range c.Metadata {
		if f.PII {
			continue
		}
		if what := looks(f.Column); what != "" {
			out = append(out, PersonalData{Field: f, What: what, Because: "by its name"})
			continue
		}
		typ := typeBaseName(types[f.Column])
		if what := personalType(typ); what != "" {
			out = append(out, PersonalData{Field: f, What: what, Because: "by its type " + typ})
		}
	}
	return out
}

// Problem is the warning's text, with the key and line to edit.
func (p PersonalData) Problem(file string) string {
	at := ""
	if file != "" && p.Line > 0 {
		at = fmt.Sprintf("%s:%d: ", file, p.Line)
	}
	return fmt.Sprintf("%smetadata %q: column %q looks like personal data (%s, %s); "+
		"Userpilot's API reference asks you to check with your legal and security teams before sending personal data as metadata",
		at, p.Key, p.Column, p.What, p.Because)
}

// Fix says how to silence the warning once sending it is cleared.
func (p PersonalData) Fix() string {
	typ := ""
	if p.Type != TypeAuto {
		typ = ", type: " + string(p.Type)
	}
	return fmt.Sprintf("once sending it is cleared, acknowledge it: %s: {column: %s%s, pii: true}; otherwise remove the key",
		p.Key, p.Column, typ)
}

// personalRule is one kind of personal data and the column names that
// say it: stems found anywhere in the name once its separators are gone
// (long, unambiguous ones), and whole words (short ones, which hide in
// other words: "zip" in "zipped", "ip" in "description").
type personalRule struct {
	what  string
	stems []string
	words []string
}

// personalRules are tried in order; the first that matches names what the
// column looks like. "name" alone is the company's name, not a person's.
var personalRules = []personalRule{
	{what: "an IP address", words: []string{"ip", "ipv4", "ipv6", "ipaddr", "ipaddress"}},
	{what: "an email address", stems: []string{"email"}},
	{what: "a phone number", stems: []string{"phone"}, words: []string{"mobile", "cell", "msisdn"}},
	{what: "a postal address", stems: []string{"postal", "postcode", "zipcode", "street", "address"}, words: []string{"zip"}},
	{what: "a date of birth", stems: []string{"birth"}, words: []string{"dob"}},
	{what: "a national identity number", stems: []string{"socialsecurity", "nationalid", "nationalinsurance"}, words: []string{"ssn"}},
	{what: "a passport number", stems: []string{"passport"}},
	{what: "a person's name", stems: []string{
		"firstname", "lastname", "fullname", "givenname", "familyname", "middlename", "surname", "maidenname",
		"contactname", "ownername", "personname", "username",
	}},
}

// notPersonal are names that contain a stem but describe the company.
var notPersonal = []string{"emaildomain", "emailsenabled", "emailenabled"}

// LooksPersonal says what personal data a column of this name looks like
// it holds ("an email address"), or "" when the name says nothing of a
// person. Names are split into words at separators and case changes
// (contact_email, contactEmail, "Contact Email").
func LooksPersonal(column string) string {
	words := splitWords(column)
	joined := strings.Join(words, "")
	for _, n := range notPersonal {
		if joined == n {
			return ""
		}
	}
	for _, r := range personalRules {
		for _, s := range r.stems {
			if strings.Contains(joined, s) {
				return r.what
			}
		}
		for _, w := range words {
			for _, rw := range r.words {
				if w == rw {
					return r.what
				}
			}
		}
	}
	return ""
}

// notPeople are the first words of a name column that, in a users table,
// names something other than the person (its company's, its role's).
var notPeople = []string{"company", "account", "org", "organization", "organisation", "team", "workspace",
	"tenant", "group", "department", "plan", "product", "role", "job", "file", "host", "domain", "app", "project"}

// LooksPersonalInUsers is LooksPersonal for a column of a users table,
// whose rows are people: there, a name (name, display_name, nickname,
// full_name) is the person's, unless its first word says whose it is
// (company_name, role_name).
func LooksPersonalInUsers(column string) string {
	if what := LooksPersonal(column); what != "" {
		return what
	}
	words := splitWords(column)
	if len(words) == 0 || slices.Contains(notPeople, words[0]) {
		return ""
	}
	switch words[len(words)-1] {
	case "name", "nickname", "displayname", "screenname":
		return "a person's name"
	}
	return ""
}

// personalType says what personal data a column of this declared type
// looks like it holds: a domain named for it (CREATE DOMAIN email …), or
// inet, Postgres's type for an IP address.
func personalType(typ string) string {
	if typ == "" {
		return ""
	}
	if typ == "inet" {
		return "an IP address"
	}
	return LooksPersonal(typ)
}

// typeBaseName is a declared type's own name, as format_type prints it,
// without its schema, quotes or modifiers: `public."Email"` → "Email".
func typeBaseName(typ string) string {
	if i := strings.IndexByte(typ, '('); i >= 0 {
		typ = typ[:i]
	}
	if i := strings.LastIndexByte(typ, '.'); i >= 0 {
		typ = typ[i+1:]
	}
	return strings.Trim(strings.TrimSpace(typ), `"`)
}

// splitWords lower-cases name and splits it into words at anything that is
// not a letter or digit, and where a lower-case letter or digit meets an
// upper-case one.
func splitWords(name string) []string {
	var words []string
	var cur []rune
	prev := rune(0)
	flush := func() {
		if len(cur) > 0 {
			words = append(words, string(cur))
			cur = cur[:0]
		}
	}
	for _, r := range name {
		switch {
		case !unicode.IsLetter(r) && !unicode.IsDigit(r):
			flush()
		case unicode.IsUpper(r) && (unicode.IsLower(prev) || unicode.IsDigit(prev)):
			flush()
			cur = append(cur, unicode.ToLower(r))
		default:
			cur = append(cur, unicode.ToLower(r))
		}
		prev = r
	}
	flush()
	return words
}
