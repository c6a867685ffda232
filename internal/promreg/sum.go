package promreg

import "github.com/prometheus/client_golang/prometheus"

// Sum adds up the series of the metric name that g gathers whose labels
// include every pair of labels (nil: every series): counters' and gauges'
// values, histograms' and summaries' sample counts. It is 0 when there is
// no such series. Tests read metrics with it.
func Sum(g prometheus.Gatherer, name string, labels map[string]string) (float64, error) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Histogram != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			case m.Summary != nil:
				sum += float64(m.GetSummary().GetSampleCount())
			}
		}
	}
	return sum, nil
}
