package config

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// postgresKeys are the keys of the postgres: section.
var postgresKeys = []string{"url", "slot", "publication", "failover_slot"}

func (p *parser) postgres(s section) Postgres {
	var pg Postgres
	if v, ok := p.required(s, "url", "write url: ${DATABASE_URL} (a libpq URL or key=value string)"); ok {
		p.secrets = append(p.secrets, v.text)
		if pw := urlPassword(v.text); pw != "" {
			p.secrets = append(p.secrets, pw)
			if len(v.fromEnv) == 0 {
				p.literalSecrets = append(p.literalSecrets, "the password in postgres.url")
			}
		}
		if pr := checkPostgresURL(v.text); pr.msg != "" {
			p.fail(v.line, s.keyOf("url"), pr.msg, pr.fix)
		}
		pg.URL = v.text
	}
	if v, ok := p.value(s, "failover_slot"); ok {
		switch strings.ToLower(strings.TrimSpace(v.text)) {
		case "true":
			pg.FailoverSlot = true
		case "false":
		default:
			p.fail(v.line, s.keyOf("failover_slot"), v.show()+" is not true or false", "write failover_slot: true (Postgres 17+ primary) or leave it out")
		}
	}
	if v, ok := p.optional(s, "slot", DefaultSlot); ok {
		if !slotName.MatchString(v.text) {
			p.fail(v.line, s.keyOf("slot"), v.show()+" is not a valid replication slot name",
				"use 1 to 63 lower-case letters, digits and underscores, e.g. slot: "+DefaultSlot)
		}
		pg.Slot = v.text
	}
	if v, ok := p.optional(s, "publication", DefaultPublication); ok {
		switch {
		case len(v.text) > 63:
			p.fail(v.line, s.keyOf("publication"), fmt.Sprintf("%s is %d bytes long; Postgres names hold at most 63", v.show(), len(v.text)),
				"choose a shorter name, e.g. publication: "+DefaultPublication)
		case strings.IndexByte(v.text, 0) >= 0:
			p.fail(v.line, s.keyOf("publication"), "contains a NUL character", "choose a plain name, e.g. publication: "+DefaultPublication)
		}
		pg.Publication = v.text
	}
	return pg
}

var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// checkPostgresURL validates the connection string lightly: pgx parses it
// for real when connecting. The result never contains the string, nor the
// parser's error, which quotes pieces of it.
func checkPostgresURL(s string) problem {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		u, err := url.Parse(s)
		if err != nil || u.Fragment != "" {
			// libpq URLs have no #fragment: a # there is an unencoded
			// character in the password that cut the URL short.
			return problem{"is not a valid URL (value not shown: it may hold a password)",
				"percent-encode special characters in the user name and password (@ as %40, : as %3A, / as %2F, # as %23, ? as %3F, % as %25)"}
		}
		return problem{}
	}
	if strings.Contains(s, "://") {
		return problem{"has an unsupported scheme (value not shown: it may hold a password)", "start the URL with postgres:// or postgresql://"}
	}
	if !strings.Contains(s, "=") {
		return problem{"is neither a libpq URL nor a key=value string (value not shown: it may hold a password)",
			"write postgres://user:password@host:5432/dbname or host=... dbname=... user=..."}
	}
	return problem{}
}
