package delivery

import "time"

// bulkShare decides how many of the ready companies go to a bulk job so the
// last one reaches Userpilot soonest. The real-time path clears n companies
// in n/rt seconds; a bulk job of k takes overhead + k/bulk seconds and runs
// alongside. Both finish together when
//
//	(n-k)/rt = overhead + k/bulk  ⇒  k = (n - rt·overhead) · bulk/(rt+bulk)
//
// Below minBulk a job is not worth its overhead. The result is capped at
// maxRecords (Userpilot's 10,000 per request).
func bulkShare(n int, rt, bulk float64, overhead time.Duration, minBulk, maxRecords int) int {
	if rt <= 0 || bulk <= 0 {
		return 0
	}
	k := int((float64(n) - rt*overhead.Seconds()) * bulk / (rt + bulk))
	if k < minBulk {
		return 0
	}
	return min(k, maxRecords)
}
