package processors

import (
	"log/slog"
	"maps"
	"slices"

	"github.com/lovoo/goka"
)

// logAssignment is a goka rebalance callback that logs which partitions of
// group this instance owns after each rebalance, so that an operator
// running several instances sees how they shared the work (an empty list:
// the others own them all).
func logAssignment(log *slog.Logger, group string) func(goka.Assignment) {
	return func(a goka.Assignment) {
		log.Info("partitions assigned", "group", group, "partitions", slices.Sorted(maps.Keys(a)))
	}
}
