package mapping

// On-delete policies (docs/design.md, "Deletes and truncates").
const (
	// OnDeleteIgnore logs and counts a deleted row; the profile stays.
	OnDeleteIgnore = "ignore"
	// OnDeleteMark sends an identify with OnDeleteMetadata.
	OnDeleteMark = "mark"
	// OnDeleteDelete calls Userpilot's delete API (a GDPR erasure).
	OnDeleteDelete = "delete"
)
