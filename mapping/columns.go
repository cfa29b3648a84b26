package mapping

// Columns names every column the mapping reads (company_id first, then the
// metadata columns in file order), each once. The snapshot and preview read
// only these.
func (c Companies) Columns() []string {
	seen := map[string]bool{c.CompanyID: true}
	out := []string{c.CompanyID}
	for _, f := range c.Metadata {
		if !seen[f.Column] {
			seen[f.Column] = true
			out = append(out, f.Column)
		}
	}
	return out
}
