package config

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

// referencePage is the configuration reference whose key table the loader
// is checked against.
const referencePage = "docs/configure.md"

// TestConfigureReferenceMatchesTheLoader: every key the loader accepts has
// a row in the reference's "Every key" table, and every row names a key the
// loader accepts. The loader's keys are found by asking it (see
// loaderKeys), so a key added to the loader without its documentation, or
// documented and never loaded, fails here by name.
func TestConfigureReferenceMatchesTheLoader(t *testing.T) {
	accepted := loaderKeys(t)
	require.Contains(t, accepted, "companies.metadata.<key>.column", "the probe finds nested keys")
	documented := referenceKeys(t)
	for _, k := range sortedKeys(accepted) {
		assert.True(t, documented[k], "%s: the loader accepts it, but %s does not document it: add a row `%s` (default, rule) to its table under \"Every key\"", k, referencePage, k)
	}
	for _, k := range sortedKeys(documented) {
		assert.True(t, accepted[k], "%s: %s documents it, but the loader refuses it as an unknown key: remove its row, or make the loader accept it", k, referencePage)
	}
}

// The probe's names: a key no configuration uses, and the name given to an
// entry of a mapping whose keys are the user's (companies.metadata).
const (
	probeKey   = "zz_probe"
	probeEntry = "zz_entry"
)

// A path to a mapping in the file: a key, "[]" for the first entry of the
// list the previous key holds, or "<key>" for an entry of a mapping whose
// keys are the user's own.
type keyPath []string

// String is the path as the reference writes it: companies.related[].table,
// companies.metadata.<key>.type.
func (p keyPath) String() string {
	var b strings.Builder
	for _, s := range p {
		if s != "[]" && b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(s)
	}
	return b.String()
}

// errorKey is the dotted key the loader's messages use for what lies at
// the path: companies.related[0].table, companies.metadata.zz_entry.type.
func (p keyPath) errorKey() string {
	var b strings.Builder
	for _, s := range p {
		switch s {
		case "[]":
			b.WriteString("[0]")
			continue
		case "<key>":
			s = probeEntry
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(s)
	}
	return b.String()
}

func (p keyPath) with(s string) keyPath { return append(append(keyPath{}, p...), s) }

// loaderKeys asks the loader which keys it accepts: a probe key written in
// a mapping draws `unknown key "zz_probe"; allowed: …`, which lists that
// mapping's keys; each is then tried as a mapping, as a list of mappings
// and as a mapping of the user's keys to mappings, to find the keys below.
func loaderKeys(t *testing.T) map[string]bool {
	t.Helper()
	keys := map[string]bool{}
	var walk func(p keyPath, depth int)
	walk = func(p keyPath, depth int) {
		allowed, ok := allowedAt(t, p)
		if !ok || depth > 8 {
			return
		}
		for _, k := range allowed {
			kp := p.with(k)
			keys[kp.String()] = true
			switch {
			case isSection(t, kp):
				walk(kp, depth+1)
			case isSection(t, kp.with("[]")):
				walk(kp.with("[]"), depth+1)
			case isSection(t, kp.with("<key>")):
				keys[kp.with("<key>").String()] = true
				walk(kp.with("<key>"), depth+1)
			}
		}
	}
	walk(nil, 0)
	return keys
}

func isSection(t *testing.T, p keyPath) bool {
	_, ok := allowedAt(t, p)
	return ok
}

var unknownProbe = regexp.MustCompile(`^unknown key "` + probeKey + `"; allowed: (.*)$`)

// allowedAt writes the probe key in the mapping at p of a valid file and
// returns the keys the loader says it allows there; ok is false when the
// loader does not check that mapping's keys (it is not a mapping, or its
// keys are the user's).
func allowedAt(t *testing.T, p keyPath) (allowed []string, ok bool) {
	t.Helper()
	doc := map[string]any{
		"postgres":  map[string]any{"url": "postgres://pgpilot@localhost/app"},
		"userpilot": map[string]any{"api_key": "key"},
		"companies": map[string]any{"table": "public.companies", "company_id": "id", "metadata": map[string]any{"name": "name"}},
	}
	set(doc, p, probeKey, 1)
	data, err := yaml.Marshal(doc)
	require.NoError(t, err)
	_, err = Parse("pgpilot.yaml", data, func(string) (string, bool) { return "", false })
	var problems mapping.ConfigErrors
	if !errors.As(err, &problems) {
		return nil, false
	}
	want := p.with(probeKey).errorKey()
	for _, e := range problems {
		if m := unknownProbe.FindStringSubmatch(e.Msg); m != nil && e.Key == want {
			return strings.Split(m[1], ", "), true
		}
	}
	return nil, false
}

// set writes key: value in the mapping at p, making the mappings and lists
// on the way (over whatever value was there).
func set(doc map[string]any, p keyPath, key string, value any) {
	m := doc
	for i, s := range p {
		if s == "[]" {
			continue // the list was made by the key before it
		}
		name := s
		if s == "<key>" {
			name = probeEntry
		}
		if i+1 < len(p) && p[i+1] == "[]" {
			list, ok := m[name].([]any)
			if !ok || len(list) == 0 {
				list = []any{map[string]any{}}
				m[name] = list
			}
			m = list[0].(map[string]any)
			continue
		}
		next, ok := m[name].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[name] = next
		}
		m = next
	}
	m[key] = value
}

var referenceRow = regexp.MustCompile("^\\| `([^`]+)` \\|")

// referenceKeys are the keys of the reference's "Every key" table.
func referenceKeys(t *testing.T) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", referencePage))
	require.NoError(t, err)
	keys := map[string]bool{}
	in := false
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "## ") {
			in = strings.TrimSpace(line) == "## Every key"
			continue
		}
		if m := referenceRow.FindStringSubmatch(line); in && m != nil {
			require.False(t, keys[m[1]], "%s lists %s twice", referencePage, m[1])
			keys[m[1]] = true
		}
	}
	require.NotEmpty(t, keys, "%s has a table of keys under \"## Every key\"", referencePage)
	return keys
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
