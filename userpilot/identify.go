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
