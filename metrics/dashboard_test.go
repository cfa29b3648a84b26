package metrics

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestGrafanaDashboardUsesOnlyMetricsThatExist keeps grafana/pgpilot.json
// in step with the collector: a renamed metric would leave a panel empty.
func TestGrafanaDashboardUsesOnlyMetricsThatExist(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "grafana", "pgpilot.json"))
	require.NoError(t, err)
	var dash struct {
		Templating struct {
			List []struct{ Name, Type string }
		}
		Panels []struct {
			Title      string
			Type       string
			Datasource struct{ UID string }
			Targets    []struct {
				Expr       string
				Datasource struct{ UID string }
			}
		}
	}
	require.NoError(t, json.Unmarshal(data, &dash), "valid JSON")

	require.NotEmpty(t, dash.Templating.List)
	assert.Equal(t, "datasource", dash.Templating.List[0].Name)
	assert.Equal(t, "datasource", dash.Templating.List[0].Type, "the data source is a template variable")

	known := map[string]bool{}
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	for _, d := range append(append([]*prometheus.Desc{}, allDescs...), relatedDescs...) {
		m := fqName.FindStringSubmatch(d.String())
		require.NotNil(t, m, d.String())
		known[m[1]] = true
	}
	used := map[string]bool{}
	name := regexp.MustCompile(`pgpilot_[a-z_]+`)
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		assert.Equal(t, "${datasource}", p.Datasource.UID, "panel %q", p.Title)
		require.NotEmpty(t, p.Targets, "panel %q", p.Title)
		for _, tg := range p.Targets {
			assert.Equal(t, "${datasource}", tg.Datasource.UID, "panel %q", p.Title)
			for _, n := range name.FindAllString(tg.Expr, -1) {
				assert.True(t, known[n], "panel %q uses %s, which pgpilot does not export", p.Title, n)
				used[n] = true
			}
		}
	}
	for _, n := range []string{"pgpilot_replication_lag_bytes", "pgpilot_replication_lag_seconds", "pgpilot_retained_wal_bytes",
		"pgpilot_records_delivered_total", "pgpilot_changes_coalesced_total", "pgpilot_records_skipped_total",
		"pgpilot_records_dead_lettered_total", "pgpilot_userpilot_requests_total", "pgpilot_delivery_mode",
		"pgpilot_outbox_companies", "pgpilot_pending_companies"} {
		assert.True(t, used[n], "the dashboard shows %s", n)
	}
}
