package metrics

import "github.com/prometheus/client_golang/prometheus"

// RelatedCounts are the related stage's re-reads (companies.related), since
// the process started.
type RelatedCounts struct {
	Reads     int64   // batches read, each in one snapshot
	Queries   int64   // related queries run (one per related entry and batch)
	Companies int64   // companies re-read
	Rows      int64   // related rows those queries covered
	Seconds   float64 // time spent reading
}

var (
	relatedReadsDesc = desc("related_reads_total",
		"Batches of companies whose related values (companies.related) were re-read, each in one snapshot.")
	relatedQueriesDesc = desc("related_queries_total",
		"Queries run to re-read related values: one per related entry and batch, whatever the number of companies.")
	relatedCompaniesDesc = desc("related_companies_total",
		"Companies whose related values were re-read.")
	relatedRowsDesc = desc("related_rows_total",
		"Rows of the related tables the re-reads covered (aggregated or looked up).")
	relatedSecondsDesc = desc("related_read_seconds_total",
		"Time spent re-reading related values; related_rows_total over it is the re-reads' rows per second.")
)

// SetRelated sets how the related stage's counters are read (called once,
// when companies.related is configured): the metrics exist only then.
func (m *Metrics) SetRelated(counts func() RelatedCounts) {
	if m == nil {
		return
	}
	m.reg.MustRegister(relatedCollector(counts))
}

type relatedCollector func() RelatedCounts

// relatedDescs are the related stage's metrics.
var relatedDescs = []*prometheus.Desc{relatedReadsDesc, relatedQueriesDesc, relatedCompaniesDesc, relatedRowsDesc, relatedSecondsDesc}

func (c relatedCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range relatedDescs {
		ch <- d
	}
}

func (c relatedCollector) Collect(ch chan<- prometheus.Metric) {
	n := c()
	for _, v := range []struct {
		d *prometheus.Desc
		v float64
	}{{relatedReadsDesc, float64(n.Reads)}, {relatedQueriesDesc, float64(n.Queries)}, {relatedCompaniesDesc, float64(n.Companies)},
		{relatedRowsDesc, float64(n.Rows)}, {relatedSecondsDesc, n.Seconds}} {
		ch <- prometheus.MustNewConstMetric(v.d, prometheus.CounterValue, v.v)
	}
}
