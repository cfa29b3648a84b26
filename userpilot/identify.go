package userpilot

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/pgpilot/pgpilot/internal/failpoint"
)

// IdentifyCompany sends co to Userpilot's real-time identify endpoint and
// returns nil once Userpilot accepted it (any 2xx). A *RejectedError means
// the record itself is invalid and must be set aside. Every other failure
// (network, 5xx, 429, a refused key) is retried until ctx ends; the error
// then wraps ctx.Err().
func (c *Client) IdentifyCompany(ctx context.Context, co Company) error {
	op := fmt.Sprintf("identify company %q", co.CompanyID)
	if co.CompanyID == "" {
		return fmt.Errorf("%s: %w", op, &RejectedError{Body: "company_id is empty"})
	}
	body := co.AppendJSON(make([]byte, 0, co.JSONSize()))
	resp, err := c.do(ctx, call{
		op:       op,
		logAttrs: []any{"company_id", co.CompanyID},
		method:   http.MethodPost,
		path:     "/v1/companies/identify",
		body:     body,
		realTime: true,
	})
	if err != nil {
		return err
	}
	if !resp.ok() {
		return fmt.Errorf("%s: %w", op, rejected(resp))
	}
	// A crash here, before the caller records the delivery, must cost no
	// more than sending it again.
	failpoint.Hit(failpoint.IdentifyAccepted, co.CompanyID)
	return nil
}

// IdentifyUser sends u to Userpilot's real-time identify endpoint
// (POST /v1/identify), with its company as {"company": {"id": …}}, or
// without one when u has none. It shares the account's real-time budget
// and 429 pause with IdentifyCompany, and fails as it does.
func (c *Client) IdentifyUser(ctx context.Context, u User) error {
	op := fmt.Sprintf("identify user %q", u.UserID)
	if u.UserID == "" {
		return fmt.Errorf("%s: %w", op, &RejectedError{Body: "user_id is empty"})
	}
	body := u.AppendJSON(make([]byte, 0, u.JSONSize()))
	resp, err := c.do(ctx, call{
		op:       op,
		logAttrs: []any{"user_id", u.UserID},
		method:   http.MethodPost,
		path:     "/v1/identify",
		body:     body,
		realTime: true,
	})
	if err != nil {
		return err
	}
	if !resp.ok() {
		return fmt.Errorf("%s: %w", op, rejected(resp))
	}
	failpoint.Hit(failpoint.IdentifyUserAccepted, u.UserID)
	return nil
}

// encodeJSON marshals v without HTML escaping, so names like "R&D <EU>"
// travel as written.
func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
