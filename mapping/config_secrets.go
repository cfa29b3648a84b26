package mapping

import (
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// ${VAR} expansion, and the secrets (postgres.url and its password,
// userpilot.api_key) that no message may show.

// minRedactLen keeps redaction from mangling messages around a secret so
// short that it is also an ordinary word; such values are still never echoed
// under their own keys.
const minRedactLen = 4

// secretKeys hold values that no message may show, not even in part.
var secretKeys = map[string]bool{"postgres.url": true, "userpilot.api_key": true}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// expand replaces each ${VAR} in s by the variable's value; $${ is a literal
// ${. It runs on parsed values, so substituted text can never change the
// YAML's structure or shift line numbers. Messages name variables, never
// their values; in a secret value (a password may contain ${), not even an
// invalid name is quoted.
func expand(s string, lookup func(string) (string, bool), secret bool) (out string, vars, problems []string) {
	if !strings.Contains(s, "${") {
		return s, nil, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		switch {
		case strings.HasPrefix(s[i:], "$${"):
			b.WriteString("${")
			i += 3
		case strings.HasPrefix(s[i:], "${"):
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				problems = append(problems, "${ without a closing }; fix: write ${NAME}, or $${ for a literal ${")
				return "", vars, problems
			}
			name := s[i+2 : i+2+end]
			i += 2 + end + 1
			if !envName.MatchString(name) {
				shown := strconv.Quote(name)
				if secret {
					shown = "a ${...} (value not shown: it may hold a password)"
				}
				problems = append(problems, fmt.Sprintf("%s is not an environment variable name; fix: write ${NAME} with letters, digits and underscores, or $${ for a literal ${", shown))
				continue
			}
			val, ok := lookup(name)
			if !ok {
				problems = append(problems, fmt.Sprintf("environment variable %s is not set; export it or write the value in the file", name))
				continue
			}
			b.WriteString(val)
			vars = append(vars, name)
		default:
			b.WriteByte(s[i])
			i++
		}
	}
	return b.String(), vars, problems
}

// urlPassword extracts the password from either connection-string form, so
// that it is redacted wherever it might be echoed.
func urlPassword(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		pw, _ := u.User.Password()
		return pw
	}
	for _, f := range strings.Fields(s) {
		if pw, ok := strings.CutPrefix(f, "password="); ok {
			return strings.Trim(pw, "'")
		}
	}
	return ""
}
