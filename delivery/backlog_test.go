package delivery

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// The window holds the input back "for long" only while fewer changes than
// it holds go in: a window that turns over (pgpilot itself the limit, as in
// a catch-up) starts the count again, however long it stays full. What the
// window holds, at the pace measured of Userpilot, says at once how long
// it will hold the input back.
func TestTheBacklogCountsOnlyAWindowThatDoesNotTurnOver(t *testing.T) {
	t0 := time.Unix(1000, 0)
	type obs struct {
		at       time.Duration
		heldBack bool
		taken    int64
		drain    time.Duration // what the window takes to deliver at the measured pace
		want     time.Duration
	}
	for _, tt := range []struct {
		name string
		obs  []obs
	}{
		{"held back, little going in", []obs{{0, true, 0, 0, 0}, {5 * time.Second, true, 10, 0, 5 * time.Second}, {20 * time.Second, true, 90, 0, 20 * time.Second}}},
		{"a window's worth went in: counted again", []obs{{0, true, 0, 0, 0}, {5 * time.Second, true, 100, 0, 0}, {8 * time.Second, true, 150, 0, 3 * time.Second}}},
		{"not held back: nothing", []obs{{0, true, 0, 0, 0}, {5 * time.Second, false, 10, time.Minute, 0}, {6 * time.Second, true, 10, 0, 0}, {9 * time.Second, true, 20, 0, 3 * time.Second}}},
		{"a catch-up: full all along, turning over", []obs{{0, true, 0, 0, 0}, {time.Second, true, 100, 0, 0}, {2 * time.Second, true, 200, 0, 0}, {3 * time.Second, true, 300, 0, 0}}},
		{"the measured pace says it will be long: at once", []obs{{0, true, 0, 40 * time.Second, 40 * time.Second}, {time.Second, true, 10, 39 * time.Second, 39 * time.Second}}},
		{"the measured pace says it is quick: as observed", []obs{{0, true, 0, time.Second, time.Second}, {5 * time.Second, true, 10, time.Second, 5 * time.Second}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var b backlog
			for _, o := range tt.obs {
				assert.Equal(t, o.want, b.observe(t0.Add(o.at), o.heldBack, o.taken, 100, o.drain), "at %s", o.at)
			}
		})
	}
}
