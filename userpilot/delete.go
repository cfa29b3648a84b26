package userpilot

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// deleteEvery is Userpilot's limit on the delete endpoint, plus a margin:
// one request every 2 seconds, counted from the previous answer.
const deleteEvery = 2100 * time.Millisecond

// MaxDeleteIDs bounds one delete request (no cap is published; this keeps
// a request small).
const MaxDeleteIDs = 1000

// DeleteCompanies asks Userpilot to delete these companies: a GDPR erasure,
// run in Userpilot's daily batch (02:00 UTC), not at once. pgpilot calls it
// only when the mapping says on_delete: delete. Requests are spaced to
// Userpilot's one every 2 seconds; failures are handled as for identify
// (a *RejectedError means Userpilot refused the request).
func (c *Client) DeleteCompanies(ctx context.Context, ids []string) error {
	return c.delete(ctx, "companies", ids)
}

// DeleteUsers is DeleteCompanies for users (DELETE /v1/users): the same
// erasure, and the same one request every 2 seconds, shared with deletes
// of companies (a delete of either kind waits for the last of both).
func (c *Client) DeleteUsers(ctx context.Context, ids []string) error {
	return c.delete(ctx, "users", ids)
}

// delete sends DELETE /v1/{what} with {"{what}": ids}.
func (c *Client) delete(ctx context.Context, what string, ids []string) error {
	op := fmt.Sprintf("delete %d %s", len(ids), what)
	if len(ids) == 0 {
		return nil
	}
	if len(ids) > MaxDeleteIDs {
		return fmt.Errorf("%s: at most %d per request", op, MaxDeleteIDs)
	}
	body, err := encodeJSON(map[string][]string{what: ids})
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	resp, err := c.do(ctx, call{
		op:       op,
		logAttrs: []any{what, len(ids)},
		method:   http.MethodDelete,
		path:     "/v1/" + what,
		body:     body,
		spacing:  c.deletes,
	})
	if err != nil {
		return err
	}
	if !resp.ok() {
		return fmt.Errorf("%s: %w", op, rejected(resp))
	}
	return nil
}
