package deploy

import (
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/pgpilot/pgpilot/metrics"
)

const (
	alertsFile     = "prometheus/alerts.yaml"
	alertTestsFile = "prometheus/alerts_test.yaml"
)

type alertRule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func readAlerts(t *testing.T) []alertRule {
	t.Helper()
	data, err := os.ReadFile(alertsFile)
	require.NoError(t, err)
	var file struct {
		Groups []struct {
			Name  string      `json:"name"`
			Rules []alertRule `json:"rules"`
		} `json:"groups"`
	}
	require.NoError(t, yaml.UnmarshalStrict(data, &file))
	var rules []alertRule
	for _, g := range file.Groups {
		rules = append(rules, g.Rules...)
	}
	return rules
}

// TestPromtoolChecksAndTestsTheAlertRules: the rules are valid, and each
// fires in its case and stays quiet in the case beside it
// (prometheus/alerts_test.yaml).
func TestPromtoolChecksAndTestsTheAlertRules(t *testing.T) {
	promtool := tool(t, "promtool", "promtool, from Debian's prometheus package")
	out, err := exec.Command(promtool, "check", "rules", alertsFile).CombinedOutput()
	require.NoError(t, err, "promtool check rules:\n%s", out)
	t.Logf("promtool check rules %s:\n%s", alertsFile, out)
	out, err = exec.Command(promtool, "test", "rules", alertTestsFile).CombinedOutput()
	require.NoError(t, err, "promtool test rules:\n%s", out)
	t.Logf("promtool test rules %s:\n%s", alertTestsFile, out)
}

// TestEveryAlertIsTestedFiringAndNotFiring keeps alerts_test.yaml whole:
// each alert has a case that expects it and a case that expects nothing.
func TestEveryAlertIsTestedFiringAndNotFiring(t *testing.T) {
	data, err := os.ReadFile(alertTestsFile)
	require.NoError(t, err)
	var tests struct {
		Tests []struct {
			Name  string `json:"name"`
			Cases []struct {
				Alert  string `json:"alertname"`
				Alerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	require.NoError(t, yaml.Unmarshal(data, &tests))
	firing, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, c := range tc.Cases {
			if len(c.Alerts) > 0 {
				firing[c.Alert] = true
			} else {
				quiet[c.Alert] = true
			}
		}
	}
	rules := readAlerts(t)
	require.Len(t, rules, 9, "not streaming, nothing delivered, retained WAL, dead letters, backlog, initial sync, stalled, standing by, fault")
	for _, r := range rules {
		assert.True(t, firing[r.Alert], "%s has no case where it fires", r.Alert)
		assert.True(t, quiet[r.Alert], "%s has no case where it must not fire", r.Alert)
	}
}

// TestAlertsUseRealMetricsAndCiteTheirRunbook: every metric an expression
// names is one pgpilot exports (a typo would make an alert that never
// fires), and every summary names its runbook step, an anchor of a heading
// of docs/operate.md.
func TestAlertsUseRealMetricsAndCiteTheirRunbook(t *testing.T) {
	m := metrics.New(metrics.Options{})
	// Measured figures appear once measured.
	m.Checkpointed(1)
	m.ServerPosition(2)
	m.RetainedWAL(3)
	families, err := m.Registry().Gather()
	require.NoError(t, err)
	exported := map[string]bool{}
	for _, f := range families {
		exported[f.GetName()] = true
	}
	anchors := docAnchors(t, "docs/operate.md")
	name := regexp.MustCompile(`pgpilot_[a-z_]+`)
	runbook := regexp.MustCompile(`runbook: docs/operate\.md#([a-z0-9-]+)`)
	for _, r := range readAlerts(t) {
		for _, n := range name.FindAllString(r.Expr, -1) {
			assert.True(t, exported[n], "%s uses %s, which a fresh pgpilot does not export (exported: %s)", r.Alert, n, keys(exported))
		}
		assert.Contains(t, []string{"critical", "warning"}, r.Labels["severity"], "%s severity", r.Alert)
		m := runbook.FindStringSubmatch(r.Annotations["summary"])
		require.NotNil(t, m, "%s: the summary names its runbook step (runbook: docs/operate.md#anchor): %q", r.Alert, r.Annotations["summary"])
		assert.Equal(t, strings.ToLower(r.Alert), m[1], "%s's runbook anchor is its name", r.Alert)
		assert.True(t, anchors[m[1]], "docs/operate.md has a heading for #%s", m[1])
		assert.NotEmpty(t, r.Annotations["description"], "%s description", r.Alert)
	}
}

func keys(m map[string]bool) string {
	var ks []string
	for k := range m {
		if strings.HasPrefix(k, "pgpilot_") {
			ks = append(ks, k)
		}
	}
	sort.Strings(ks)
	return strings.Join(ks, " ")
}
