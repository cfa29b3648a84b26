package config

import (
	"errors"
	"fmt"
	"github.com/pgpilot/pgpilot/mapping"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// ${VAR} expansion, and the secrets (postgres.url and its password,
// userpilot.api_key) that no message may show.

// redact blanks out, as a last line of defence, any secret that reached a
// message through a value echoed under another key (an API key pasted into
// slot:, say).
func (p *parser) redact(msg string) string {
	for _, s := range p.secrets {
		if len(s) >= minRedactLen {
			msg = strings.ReplaceAll(msg, s, "[redacted]")
		}
	}
	return msg
}

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
func expand(s string, lookup func(string) (string, bool), secret bool) (out string, vars []string, problems []problem) {
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
				problems = append(problems, problem{"${ without a closing }", "write ${NAME}, or $${ for a literal ${"})
				return "", vars, problems
			}
			name := s[i+2 : i+2+end]
			i += 2 + end + 1
			if !envName.MatchString(name) {
				shown := strconv.Quote(name)
				if secret {
					shown = "a ${...} (value not shown: it may hold a password)"
				}
				problems = append(problems, problem{shown + " is not an environment variable name", "write ${NAME} with letters, digits and underscores, or $${ for a literal ${"})
				continue
			}
			val, ok := lookup(name)
			if !ok {
				problems = append(problems, problem{"environment variable " + name + " is not set; export it or write the value in the file", ""})
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

// readAPIKeyFile reads userpilot.api_key_file, when it is set, into the
// config's API key.
func readAPIKeyFile(cfg *Config) *mapping.ConfigError {
	f := cfg.Userpilot.APIKeyFile
	if f == "" {
		return nil
	}
	key, err := os.ReadFile(f)
	switch {
	case err != nil:
		return &mapping.ConfigError{File: cfg.Path, Line: cfg.Userpilot.APIKeyFileLine, Key: "userpilot.api_key_file",
			Msg: fmt.Sprintf("cannot read %s (%v)", f, errors.Unwrap(err)), Fix: "point it at the file holding the key"}
	case strings.TrimSpace(string(key)) == "":
		return &mapping.ConfigError{File: cfg.Path, Line: cfg.Userpilot.APIKeyFileLine, Key: "userpilot.api_key_file",
			Msg: fmt.Sprintf("%s is empty", f), Fix: "put the Userpilot API key in it"}
	}
	// Secret files often end in a newline.
	cfg.Userpilot.APIKey = strings.TrimSpace(string(key))
	return nil
}

// warnLiteralSecrets warns when a file that every user on the machine may
// read holds a secret written in it rather than taken from the environment.
func warnLiteralSecrets(cfg *Config) {
	if fi, err := os.Stat(cfg.Path); err == nil && fi.Mode().Perm()&0o004 != 0 && len(cfg.literalSecrets) > 0 {
		cfg.Warnings = append(cfg.Warnings, fmt.Sprintf("%s is readable by every user on this machine and holds %s written in it; "+
			"fix: chmod 600 %s, or take the secret from an environment variable (${VAR}) or api_key_file",
			cfg.Path, strings.Join(cfg.literalSecrets, " and "), cfg.Path))
	}
}
