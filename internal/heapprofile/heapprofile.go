// Package heapprofile, in a binary built with -tags heapprofile, writes a
// heap profile each time the live heap reaches a new peak, so that a
// benchmark can see what pgpilot holds at its largest (BenchmarkOverlap,
// PGPILOT_BENCH_HEAPPROFILE). Release builds do none of this: without the
// tag the package holds only EnvVar.
package heapprofile

// EnvVar names the profiles' path prefix: PREFIX-N.pprof, N counting the
// peaks, written at the peak, and PREFIX-N-next.pprof after the next
// collection (a heap profile lags one behind: the -next one holds the
// peak's heap).
const EnvVar = "PGPILOT_HEAPPROFILE"
