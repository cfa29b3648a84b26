//go:build !failpoints

package failpoint

// Enabled reports whether this binary was built with failpoints.
const Enabled = false

// Hit is a failpoint; without the failpoints build tag it does nothing.
func Hit(point, subject string) {}
