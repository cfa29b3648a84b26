package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// logLines are the JSON log lines of out with msg.
func logLines(out, msg string) []map[string]any {
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l map[string]any
		if json.Unmarshal(sc.Bytes(), &l) == nil && l["msg"] == msg {
			lines = append(lines, l)
		}
	}
	return lines
}

// TestInitialSyncProgressCountsRowsAsTheyAreDelivered runs an initial sync
// of 3,000 rows on the real-time path at 300 rows/s (10 s; two chunks of
// 2,000 and 1,000 rows): the progress lines, `status` and `status --watch`
// count the rows as they are delivered, with a rate and an ETA, long
// before the first chunk is whole; status never says the initial sync is
// done while rows are owed; the end line counts every row.
func TestInitialSyncProgressCountsRowsAsTheyAreDelivered(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 3000))
	_, err := e.conn.Exec(ctx, `ANALYZE companies`)
	require.NoError(t, err)
	cfg := workload.Config(e.url, e.slot(), e.up.URL(), apiKey, e.stateDir, 300)
	e.writeConfig(strings.Replace(cfg, "  rate_limit: 300\n", "  rate_limit: 300\n  bulk_rate: 0\n", 1))

	p := e.run()
	watch := e.pgpilot("status", "--config", e.cfgPath, "--watch", "--interval", "200ms")

	// status, while the rows are owed: part of them delivered, never "done".
	delivered := regexp.MustCompile(`initial \(every row\): (\d+) of 3000 rows delivered, began [^,]+, (\d+) rows/s, ETA (\S+)`)
	var midway string
	require.Eventually(t, func() bool {
		code, out := e.cli("", "status", "--config", e.cfgPath)
		if code != 0 {
			return false
		}
		m := delivered.FindStringSubmatch(out)
		if m == nil {
			return false
		}
		rows, _ := strconv.Atoi(m[1])
		if rows > 0 && rows < 2000 {
			midway = out
			return true
		}
		return false
	}, 60*time.Second, 100*time.Millisecond, "status counts the rows delivered before the first chunk is whole")
	assert.Contains(t, midway, "(initial sync: in progress)")
	assert.NotContains(t, midway, "initial sync: done")

	e.converge(60 * time.Second)
	e.waitInitialSync()
	code, _ := p.stop(t)
	require.Equal(t, 0, code)
	watch.cmd.Process.Kill()
	<-watch.done

	// The progress lines: rows delivered as they are, a rate, an ETA.
	var counted bool
	for _, l := range logLines(p.out.String(), "snapshot progress") {
		rows, _ := l["rows_delivered"].(float64)
		if rows > 0 && rows < 2000 {
			counted = true
			assert.Greater(t, l["percent"], 0.0, "%v", l)
			assert.Greater(t, l["rows_per_second"], 0.0, "%v", l)
			assert.NotEmpty(t, l["eta"], "%v", l)
		}
	}
	assert.True(t, counted, "a progress line counts rows before the first chunk of 2,000 is whole:\n%s", p.out.String())
	end := logLines(p.out.String(), "snapshot complete: every row delivered")
	require.Len(t, end, 1)
	assert.Equal(t, 3000.0, end[0]["rows"])

	// status --watch: a line per look, counting as the rows go.
	var watched bool
	bar := regexp.MustCompile(`^initial \[[#.]{30}\] +\d+% (\d+) of 3000 rows delivered, \d+ rows/s, ETA `)
	for _, line := range strings.Split(watch.out.String(), "\n") {
		if m := bar.FindStringSubmatch(line); m != nil {
			if rows, _ := strconv.Atoi(m[1]); rows > 0 && rows < 3000 {
				watched = true
			}
		}
	}
	assert.True(t, watched, "status --watch shows the rows delivered:\n%s", watch.out.String())
}
