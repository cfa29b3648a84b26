package chatwoot

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgpilot/pgpilot/internal/workload"
)

// Mapping is the companies section an operator of Chatwoot writes: every
// derived form (keys inside custom_attributes, labels of the integer
// enums, an SQL expression, on_null: keep) and aggregates over
// account_users and conversations. Deleted accounts are marked.
const Mapping = `companies:
  table: public.accounts
  company_id: id
  on_delete: mark
  metadata:
    name: name
    plan: {column: custom_attributes, path: plan_name}
    mrr: {column: custom_attributes, path: mrr, type: number}
    size: {column: custom_attributes, path: company.size, type: number}
    seats_raw: {column: custom_attributes, path: [subscribed.quantity]}
    features: {column: custom_attributes, path: features, type: string}
    status: {column: status, values: {0: active, 1: suspended}, default: unknown}
    locale: {column: locale, values: {0: en, 1: ar, 2: nl}, default: other}
    tier: {sql: "` + TierSQL + `", type: string}
    notes: {column: notes, on_null: keep}
  related:
    - table: public.account_users
      company_id: account_id
      aggregate:
        members: count(*)
    - table: public.conversations
      company_id: account_id
      aggregate:
        open_conversations: count(*) filter (where status = 0)
`

// MappingBefore is Mapping as it was before a change, for tests of the
// backfill that follows: status sent as its number (Mapping labels it),
// no size (added), and legacy_plan (removed: cleared).
var MappingBefore = strings.NewReplacer(
	"    status: {column: status, values: {0: active, 1: suspended}, default: unknown}\n", "    status: status\n",
	"    size: {column: custom_attributes, path: company.size, type: number}\n", "",
	"    name: name\n", "    name: name\n    legacy_plan: {column: custom_attributes, path: plan_name, type: string}\n",
).Replace(Mapping)

// TierSQL is Mapping's expression on the account's row.
const TierSQL = `case when (limits->>'agents')::int > 100 then 'large' else 'small' end`

// Config is a whole config file for Mapping.
func Config(dbURL, slot, endpoint, apiKey, stateDir string) string {
	return fmt.Sprintf(`postgres:
  url: %q
  slot: %s
  publication: %s
userpilot:
  api_key: %q
  endpoint: %q
  rate_limit: 2000
state:
  dir: %q
delivery:
  snapshot_chunk_rows: 100
`, dbURL, slot, slot, apiKey, endpoint, stateDir) + Mapping
}

// Expected computes, in SQL, what Userpilot should hold for each account
// under Mapping: keys whose value is null are absent. on_null: keep's
// notes is expected only while the column holds a value (Step never sets
// it back to NULL).
func Expected(ctx context.Context, conn *pgx.Conn) (map[string]map[string]any, error) {
	rows, err := conn.Query(ctx, `
		SELECT a.id::text, a.name,
		       jsonb_typeof(p.plan), p.plan #>> '{}',
		       jsonb_typeof(p.mrr), p.mrr #>> '{}',
		       jsonb_typeof(p.size), p.size #>> '{}',
		       jsonb_typeof(p.seats), p.seats #>> '{}',
		       jsonb_typeof(p.features), p.features #>> '{}', p.features::text,
		       CASE WHEN a.status IS NULL THEN NULL WHEN a.status = 0 THEN 'active' WHEN a.status = 1 THEN 'suspended' ELSE 'unknown' END,
		       CASE WHEN a.locale IS NULL THEN NULL WHEN a.locale = 0 THEN 'en' WHEN a.locale = 1 THEN 'ar' WHEN a.locale = 2 THEN 'nl' ELSE 'other' END,
		       `+strings.ReplaceAll(TierSQL, "limits", "a.limits")+`,
		       a.notes,
		       (SELECT count(*) FROM account_users u WHERE u.account_id = a.id)::text,
		       (SELECT count(*) FILTER (WHERE status = 0) FROM conversations c WHERE c.account_id = a.id)::text
		FROM accounts a
		CROSS JOIN LATERAL (SELECT
		       CASE WHEN jsonb_typeof(a.custom_attributes) = 'object' THEN a.custom_attributes->'plan_name' END AS plan,
		       CASE WHEN jsonb_typeof(a.custom_attributes) = 'object' THEN a.custom_attributes->'mrr' END AS mrr,
		       CASE WHEN jsonb_typeof(a.custom_attributes) = 'object' AND jsonb_typeof(a.custom_attributes->'company') = 'object'
		            THEN a.custom_attributes->'company'->'size' END AS size,
		       CASE WHEN jsonb_typeof(a.custom_attributes) = 'object' THEN a.custom_attributes->'subscribed.quantity' END AS seats,
		       CASE WHEN jsonb_typeof(a.custom_attributes) = 'object' THEN a.custom_attributes->'features' END AS features) p`)
	if err != nil {
		return nil, fmt.Errorf("read the expected accounts: %w", err)
	}
	defer rows.Close()
	out := map[string]map[string]any{}
	for rows.Next() {
		var id, name string
		var planT, plan, mrrT, mrr, sizeT, size, seatsT, seats, featT, feat, featJSON, status, locale, tier, notes, members, open *string
		if err := rows.Scan(&id, &name, &planT, &plan, &mrrT, &mrr, &sizeT, &size, &seatsT, &seats, &featT, &feat, &featJSON,
			&status, &locale, &tier, &notes, &members, &open); err != nil {
			return nil, err
		}
		m := map[string]any{"name": name}
		var errs []error
		put := func(k string, conv func(kind, text *string) (any, error), kind, text *string) {
			v, err := conv(kind, text)
			if err != nil {
				errs = append(errs, fmt.Errorf("account %s: %s: %w", id, k, err))
			} else if v != nil {
				m[k] = v
			}
		}
		put("plan", auto, planT, plan)
		put("mrr", number, mrrT, mrr)
		put("size", number, sizeT, size)
		put("seats_raw", auto, seatsT, seats)
		switch {
		case featT == nil || *featT == "null":
		case *featT == "object" || *featT == "array":
			m["features"] = *featJSON
		default:
			m["features"] = *feat
		}
		for k, v := range map[string]*string{"status": status, "locale": locale, "tier": tier, "notes": notes} {
			if v != nil {
				m[k] = *v
			}
		}
		m["members"] = json.Number(*members)
		m["open_conversations"] = json.Number(*open)
		if len(errs) > 0 {
			return nil, errs[0]
		}
		out[id] = m
	}
	return out, rows.Err()
}

// auto is a JSON value as a key without type sends it.
func auto(kind, text *string) (any, error) {
	if kind == nil {
		return nil, nil
	}
	switch *kind {
	case "null":
		return nil, nil
	case "string":
		return *text, nil
	case "number":
		return json.Number(*text), nil
	case "boolean":
		return *text == "true", nil
	}
	return nil, fmt.Errorf("%s at the path, which a key without type: string does not send: the workload must not write it", *kind)
}

// number is a JSON value as type: number sends it: a number's digits, a
// string's characters.
func number(kind, text *string) (any, error) {
	if kind == nil || *kind == "null" {
		return nil, nil
	}
	if *kind == "number" || *kind == "string" {
		return json.Number(*text), nil
	}
	return nil, fmt.Errorf("%s at the path, which type: number does not send: the workload must not write it", *kind)
}

// Diff lists how got (Userpilot's profiles) differs from want: numbers must
// have the same digits (2178.00 is not 2178), and a key Userpilot holds as
// null is as good as absent. A profile not in want must be marked deleted
// (Mapping's on_delete: mark). Empty means equal.
func Diff(want, got map[string]map[string]any) []string {
	var d []string
	for id, w := range want {
		g, ok := got[id]
		if !ok {
			d = append(d, fmt.Sprintf("account %s missing", id))
			continue
		}
		for k, wv := range w {
			if gv, ok := g[k]; !ok || gv == nil {
				d = append(d, fmt.Sprintf("account %s: %s missing, want %v", id, k, wv))
			} else if gv != wv {
				d = append(d, fmt.Sprintf("account %s: %s = %#v, want %#v", id, k, gv, wv))
			}
		}
		for k, gv := range g {
			// notes is on_null: keep: a NULL leaves what Userpilot had.
			if _, ok := w[k]; !ok && gv != nil && k != "notes" {
				d = append(d, fmt.Sprintf("account %s: %s = %#v, want it absent (null)", id, k, gv))
			}
		}
	}
	for id, g := range got {
		if _, ok := want[id]; !ok && g["deleted"] != true {
			d = append(d, fmt.Sprintf("account %s is in Userpilot, not marked deleted, but not in the table", id))
		}
	}
	sort.Strings(d)
	return d
}

// WaitConverged polls until profiles() equals Expected, or returns the
// first differences once timeout passes.
func WaitConverged(ctx context.Context, conn *pgx.Conn, profiles func() map[string]map[string]any, timeout time.Duration) error {
	return workload.WaitNoDiff(ctx, timeout, "the accounts", 12, func() ([]string, error) {
		want, err := Expected(ctx, conn)
		if err != nil {
			return nil, err
		}
		return Diff(want, profiles()), nil
	})
}
