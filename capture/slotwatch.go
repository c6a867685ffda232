package capture

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// slotWatchInterval is how often the capture reads its slot's state.
const slotWatchInterval = 5 * time.Second

// watchSlot reports the slot's lag (changes_capture_slot_lag_bytes: WAL the
// server keeps for the slot, pg_current_wal_lsn() - confirmed_flush_lsn) and
// stops the stream loudly if PostgreSQL invalidates the slot while it runs.
// Errors reading the state are logged, not fatal: the stream itself is fine.
func (s *stream) watchSlot(ctx context.Context) {
	cfg := s.cfg.Postgres
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	t := time.NewTicker(slotWatchInterval)
	defer t.Stop()
	for {
		if conn == nil {
			c, err := pgx.Connect(ctx, cfg.URL)
			if err != nil && ctx.Err() == nil {
				s.log.Warn("cannot read the slot's state", "slot", cfg.Slot, "err", err)
			}
			conn = c
		}
		if conn != nil {
			var lag int64
			var walStatus string
			err := conn.QueryRow(ctx, `select coalesce((pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, 0), coalesce(wal_status, '')
				from pg_replication_slots where slot_name = $1`, cfg.Slot).Scan(&lag, &walStatus)
			switch {
			case err != nil && ctx.Err() == nil:
				s.log.Warn("cannot read the slot's state", "slot", cfg.Slot, "err", err)
				conn.Close(context.Background())
				conn = nil
			case walStatus == "lost":
				s.fail(fmt.Errorf("%w: slot %s was invalidated while streaming (max_slot_wal_keep_size exceeded?); the capture stops rather than skip the gap", ErrSlotLost, cfg.Slot))
				return
			case err == nil:
				s.metrics.slotLag.Set(float64(lag))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.failed:
			return
		case <-t.C:
		}
	}
}
