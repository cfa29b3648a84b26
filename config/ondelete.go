package config

import (
	"encoding/json"

	"gopkg.in/yaml.v3"

	"github.com/pgpilot/pgpilot/mapping"
)

// onDelete reads companies.on_delete and companies.on_delete_metadata (or
// users'; delete is then DELETE /v1/users).
func (p *parser) onDelete(s section, c *mapping.Companies) {
	c.OnDelete = mapping.OnDeleteIgnore
	if v, ok := p.value(s, "on_delete"); ok {
		switch v.text {
		case mapping.OnDeleteIgnore, mapping.OnDeleteMark, mapping.OnDeleteDelete:
			c.OnDelete = v.text
		default:
			p.fail(v.line, s.keyOf("on_delete"), v.show()+" is not a policy",
				"write ignore (log it, the default), mark (send on_delete_metadata) or delete (Userpilot's delete API, a GDPR erasure)")
		}
	}
	md, ok := p.section(s, "on_delete_metadata", nil, false, "")
	if !ok {
		if c.OnDelete == mapping.OnDeleteMark {
			c.OnDeleteMetadata = map[string]any{"deleted": true}
		}
		return
	}
	if c.OnDelete != mapping.OnDeleteMark {
		p.fail(md.line, md.path, "is used only with on_delete: mark", "remove it, or write on_delete: mark")
	}
	c.OnDeleteMetadata = map[string]any{}
	for name, e := range md.entries {
		key := md.keyOf(name)
		if p.reserved(e.key, key) {
			continue
		}
		if e.value.Kind != yaml.ScalarNode {
			p.fail(e.key.Line, key, "must be a string, number, boolean or null (Userpilot takes only primitives), not "+kindName(e.value), "")
			continue
		}
		if e.value.Tag == "!!null" {
			c.OnDeleteMetadata[name] = nil // clears the key in Userpilot
			continue
		}
		v, ok := p.scalarOf(e, key, "write e.g. deleted: true")
		if !ok {
			continue
		}
		switch e.value.Tag {
		case "!!bool":
			c.OnDeleteMetadata[name] = v.text == "true" || v.text == "True" || v.text == "TRUE"
		case "!!int", "!!float":
			c.OnDeleteMetadata[name] = json.Number(v.text)
		default:
			c.OnDeleteMetadata[name] = v.text
		}
	}
}
