package mapping

// Columns names every column the mapping reads (company_id first, then the
// metadata columns in file order), each once. The snapshot and preview read
// only these (an sql: key reads what its expression names, in Postgres).
func (c Companies) Columns() []string {
	seen := map[string]bool{c.CompanyID: true}
	out := []string{c.CompanyID}
	for _, f := range c.Metadata {
		if f.SQL == "" && !seen[f.Column] {
			seen[f.Column] = true
			out = append(out, f.Column)
		}
	}
	return out
}
