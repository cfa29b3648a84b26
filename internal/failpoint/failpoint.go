// Package failpoint marks the instants where a crash is most likely to lose
// data, so tests can kill pgpilot exactly there instead of hoping a random
// kill -9 lands in a window a few microseconds wide.
//
// In a normal build Hit does nothing and costs nothing (it is empty and
// inlined). Built with -tags failpoints, Hit kills the process with SIGKILL
// when it is the point named by the PGPILOT_FAILPOINT environment variable:
//
//	PGPILOT_FAILPOINT=point[@subject][:n]
//
// kills on the nth hit (default 1) of point, counting only hits about
// subject when one is given (e.g. atomic.after-rename@checkpoint.json:3).
// Just before the kill it prints a line starting with Marker to stderr, so a
// test can tell that the point fired.
//
//	PGPILOT_FAILPOINT=freeze/point[@subject][:n]
//
// freezes instead: the goroutine that makes the nth hit blocks for good
// (after a line starting with FreezeMarker), as a stuck part of pgpilot
// would, while the rest of the process goes on. Tests of the liveness
// check use it.
package failpoint

// The points pgpilot has, in the order a delivered change meets them.
const (
	// IdentifyAccepted is right after Userpilot accepted an identify
	// (subject: the company id), before anything records it.
	IdentifyAccepted = "identify.accepted"
	// IdentifyUserAccepted is IdentifyAccepted for a user (subject: the
	// user id).
	IdentifyUserAccepted = "identify.user.accepted"
	// CheckpointBeforeWrite is after delivery, before the checkpoint file
	// is written (subject: the checkpoint's initial_sync phase).
	CheckpointBeforeWrite = "checkpoint.before-write"
	// AtomicAfterRename is in WriteFileAtomic between the rename and the
	// directory fsync (subject: the file's name).
	AtomicAfterRename = "atomic.after-rename"
)

// EnvVar names the point to kill at, in builds with the failpoints tag.
const EnvVar = "PGPILOT_FAILPOINT"

// Marker starts the line printed to stderr just before a failpoint kills.
const Marker = "failpoint fired:"

// FreezeMarker starts the line printed to stderr when a failpoint freezes
// the goroutine that hit it.
const FreezeMarker = "failpoint froze:"

// freezePrefix marks a point that freezes instead of killing.
const freezePrefix = "freeze/"
