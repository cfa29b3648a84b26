package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/pgpilot/pgpilot/mapping"

	"gopkg.in/yaml.v3"
)

// parser walks the YAML node tree itself, rather than decoding into structs,
// so that every problem carries its line and dotted key.
type parser struct {
	literalSecrets []string
	file           string
	lookupEnv      func(string) (string, bool)
	problems       []*mapping.ConfigError
	secrets        []string // values that must not appear in any message
}

// fail records a problem at line under key: msg says what is wrong, fix
// what to do about it ("" when msg says it all). A problem found twice
// (a value read by two checks) is recorded once, and an unset variable
// once: its other uses are named in the first report.
func (p *parser) fail(line int, key, msg, fix string) {
	for _, e := range p.problems {
		if e.Line == line && e.Key == key && e.Msg == msg {
			return
		}
	}
	if m := unsetVariable.FindStringSubmatch(msg); m != nil {
		for _, e := range p.problems {
			if n := unsetVariable.FindStringSubmatch(e.Msg); n != nil && n[1] == m[1] {
				also := fmt.Sprintf(" (also used by %s at line %d)", key, line)
				if i := strings.IndexByte(e.Msg, ';'); i >= 0 {
					e.Msg = e.Msg[:i] + also + e.Msg[i:]
				} else {
					e.Msg += also
				}
				return
			}
		}
	}
	p.problems = append(p.problems, &mapping.ConfigError{File: p.file, Line: line, Key: key, Msg: msg, Fix: fix})
}

// unsetVariable matches expand's report of an unset variable.
var unsetVariable = regexp.MustCompile(`^environment variable (\w+) is not set`)

// problem is what is wrong with a value and what to do about it, before the
// parser adds the file, line and key; the zero problem is none.
type problem struct{ msg, fix string }

// err returns the problems in file order, with any secret that reached a
// message blanked out.
func (p *parser) err() error {
	sort.SliceStable(p.problems, func(i, j int) bool { return p.problems[i].Line < p.problems[j].Line })
	for _, e := range p.problems {
		e.Msg, e.Fix = p.redact(e.Msg), p.redact(e.Fix)
	}
	return mapping.ConfigErrors(p.problems)
}

// section is a YAML mapping whose keys have been checked.
type section struct {
	node    *yaml.Node
	path    string // dotted key of the mapping, "" for the top level
	line    int    // line of the key that opened it, for "missing" messages
	entries map[string]entry
}

type entry struct {
	key, value *yaml.Node
}

func (s section) keyOf(name string) string {
	if s.path == "" {
		return name
	}
	return s.path + "." + name
}

// scalar is one value after ${VAR} replacement.
type scalar struct {
	text    string
	line    int
	null    bool     // written as nothing, ~ or null
	fromEnv []string // variables whose values are in text
}

// show quotes the value for a message, unless part of it came from the
// environment: environment values are where secrets live, so they are named,
// never echoed.
func (s scalar) show() string {
	if len(s.fromEnv) > 0 {
		var names []string
		for _, v := range s.fromEnv {
			if !contains(names, "${"+v+"}") {
				names = append(names, "${"+v+"}")
			}
		}
		return "the value from " + strings.Join(names, " and ")
	}
	return strconv.Quote(s.text)
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// document parses data and returns its root mapping node, or nil after
// reporting why there is none.
func (p *parser) document(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.fail(1, "", "the file is empty", "start from mapping.example.yaml")
			return nil
		}
		p.yamlError(err)
		return nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		p.yamlError(err)
		return nil
	default:
		p.fail(extra.Line, "", "the file holds a second YAML document (after ---)", "keep one document per file")
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			p.fail(1, "", "the file is empty", "start from mapping.example.yaml")
			return nil
		}
		root = root.Content[0]
	}
	root = resolve(root)
	if root.Kind != yaml.MappingNode {
		if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
			p.fail(1, "", "the file is empty", "start from mapping.example.yaml")
			return nil
		}
		p.fail(root.Line, "", fmt.Sprintf("the file must be a mapping of sections (postgres:, userpilot:, state:, companies:), not %s", kindName(root)),
			"start from mapping.example.yaml")
		return nil
	}
	return root
}

func (p *parser) yamlError(err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 1
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	p.fail(line, "", "the file is not valid YAML: "+msg, `check indentation and quoting near this line (quote values that start with " or contain ": ")`)
}

// resolve follows an alias to the node it names.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return "a single value"
	}
}

// mappingEntries checks a mapping's keys: each a plain value, none repeated
// and, when allowed is not nil, each one of allowed.
func (p *parser) mappingEntries(n *yaml.Node, path string, line int, allowed []string) section {
	s := section{node: n, path: path, line: line, entries: map[string]entry{}}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			p.fail(k.Line, path, "a key must be a plain name, not "+kindName(k), "write name: value")
			continue
		}
		key := s.keyOf(k.Value)
		if prev, dup := s.entries[k.Value]; dup {
			p.fail(k.Line, key, fmt.Sprintf("duplicate key (first at line %d)", prev.key.Line), "keep one of them")
			continue
		}
		if allowed != nil && !contains(allowed, k.Value) {
			p.fail(k.Line, key, fmt.Sprintf("unknown key %q; allowed: %s", k.Value, strings.Join(allowed, ", ")), "")
			continue
		}
		s.entries[k.Value] = entry{key: k, value: v}
	}
	return s
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// section returns the mapping under name in parent. A missing or empty
// optional section is returned empty; a missing required one is reported.
func (p *parser) section(parent section, name string, allowed []string, required bool, fix string) (section, bool) {
	key := parent.keyOf(name)
	e, ok := parent.entries[name]
	if !ok || (e.value.Kind == yaml.ScalarNode && e.value.Tag == "!!null") {
		if !required {
			return section{path: key, line: parent.line, entries: map[string]entry{}}, ok
		}
		line := parent.line
		if ok {
			line = e.key.Line
		}
		p.fail(line, key, "missing", fix)
		return section{}, false
	}
	if e.value.Kind != yaml.MappingNode {
		p.fail(e.key.Line, key, "must be a mapping of keys, not "+kindName(e.value), "indent its keys under "+name+":")
		return section{}, false
	}
	return p.mappingEntries(e.value, key, e.key.Line, allowed), true
}

// value returns the scalar under name in s with ${VAR} replaced. present is
// false when the key is absent or written without a value; problems with the
// value itself are reported and also yield present == false.
func (p *parser) value(s section, name string) (v scalar, present bool) {
	key := s.keyOf(name)
	e, ok := s.entries[name]
	if !ok {
		return scalar{line: s.line}, false
	}
	return p.scalarOf(e, key, "write "+name+": value")
}

func (p *parser) scalarOf(e entry, key, fix string) (scalar, bool) {
	n := e.value
	if n.Kind != yaml.ScalarNode {
		p.fail(e.key.Line, key, "must be a single value, not "+kindName(n), fix)
		return scalar{line: e.key.Line}, false
	}
	if n.Tag == "!!null" && n.Style == 0 {
		return scalar{line: e.key.Line, null: true}, false
	}
	text, vars, problems := expand(n.Value, p.lookupEnv, secretKeys[key])
	for _, pr := range problems {
		p.fail(n.Line, key, pr.msg, pr.fix)
	}
	if len(problems) > 0 {
		return scalar{line: n.Line}, false
	}
	return scalar{text: text, line: n.Line, fromEnv: vars}, true
}

// required returns the non-empty value under name, reporting it when it is
// missing or empty. No message shows the value: url and api_key are secrets.
func (p *parser) required(s section, name, fix string) (scalar, bool) {
	v, ok := p.value(s, name)
	if !ok {
		if _, written := s.entries[name]; !written || v.null {
			p.fail(v.line, s.keyOf(name), "missing", fix)
		}
		return v, false
	}
	return v, p.nonEmpty(v, s.keyOf(name), fix)
}

// optional returns the value under name, or def when it is absent or empty
// (an environment variable set to "" selects the default).
func (p *parser) optional(s section, name, def string) (scalar, bool) {
	v, ok := p.value(s, name)
	if !ok || v.text == "" {
		if _, written := s.entries[name]; written && !ok && !v.null {
			return v, false // already reported
		}
		return scalar{text: def, line: v.line}, true
	}
	return v, true
}

// nonEmpty reports an empty value of a key that needs one.
func (p *parser) nonEmpty(v scalar, key, fix string) bool {
	switch {
	case v.text != "":
		return true
	case len(v.fromEnv) > 0:
		p.fail(v.line, key, "environment variable "+strings.Join(v.fromEnv, ", ")+" is set but empty", "export it with a value")
	default:
		p.fail(v.line, key, "is empty", fix)
	}
	return false
}
