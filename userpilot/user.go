package userpilot

import "encoding/json"

// User is one identify-user payload: the user's id, its metadata and the
// company it belongs to. A user belongs to one company at a time:
// identifying it with another moves it. Userpilot has no documented way to
// take a user out of its company, so a user without one (CompanyID "") is
// sent without the company, never with a null one.
type User struct {
	UserID    string
	CompanyID string // "": no company (left out of the body)
	Metadata  Metadata
}

// AppendJSON appends u as Userpilot's identify body:
// {"user_id":"…","metadata":{…},"company":{"id":"…"}}, the metadata's keys
// sorted, an empty object where there is none, and no company when
// CompanyID is "". The company's key is id, as Userpilot's guide, its SDK
// and its destinations write it.
func (u User) AppendJSON(b []byte) []byte {
	b = append(b, `{"user_id":`...)
	b = appendString(b, u.UserID)
	b = append(b, `,"metadata":{`...)
	for k, v := range u.Metadata.sorted {
		b = appendKey(b, k, v)
	}
	b = append(b, '}')
	if u.CompanyID != "" {
		b = append(b, `,"company":{"id":`...)
		b = appendString(b, u.CompanyID)
		b = append(b, '}')
	}
	return append(b, '}')
}

// JSONSize is the exact length of u's AppendJSON, counted without writing
// it.
func (u User) JSONSize() int {
	n := len(`{"user_id":,"metadata":{}}`) + stringSize(u.UserID)
	if u.CompanyID != "" {
		n += len(`,"company":{"id":}`) + stringSize(u.CompanyID)
	}
	if len(u.Metadata) > 0 {
		n += len(u.Metadata) - 1 // commas
	}
	for k, v := range u.Metadata {
		n += stringSize(k) + 1 + len(v)
	}
	return n
}

// MarshalJSON writes u as AppendJSON does (a dead letter's payload, a
// preview line).
func (u User) MarshalJSON() ([]byte, error) { return u.AppendJSON(nil), nil }

// UnmarshalJSON reads what MarshalJSON wrote; a company written as
// {"company_id": …}, as Userpilot's OpenAPI document has it, is read too.
func (u *User) UnmarshalJSON(data []byte) error {
	var v struct {
		UserID   string   `json:"user_id"`
		Metadata Metadata `json:"metadata"`
		Company  *struct {
			ID        string `json:"id"`
			CompanyID string `json:"company_id"`
		} `json:"company"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	u.UserID, u.Metadata, u.CompanyID = v.UserID, v.Metadata, ""
	if v.Company != nil {
		u.CompanyID = v.Company.ID
		if u.CompanyID == "" {
			u.CompanyID = v.Company.CompanyID
		}
	}
	return nil
}
