// Package promreg registers collectors the way several parts of one process
// can share: a collector that is already registered is reused, not a panic.
// Every package of ours defines its metrics with a Factory (With), and its
// latency histograms with LatencyBuckets.
package promreg

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers c with r and returns the collector to use: c, or the
// equal collector registered before (two processors built with the same
// registry then count into the same series). A nil r registers nothing. Any
// other registration error, such as the same name with other labels, is
// returned.
func Register[C prometheus.Collector](r prometheus.Registerer, c C) (C, error) {
	if r == nil {
		return c, nil
	}
	if err := r.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
