package monitor

import (
	"context"
	"math"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/dbcheck"
	"github.com/changes-dev/changes/views"
)

// audit compares sampled entities with PostgreSQL at monitor.audit_rate per
// second, round robin over the entity types.
//
// For each sample it reads L = pg_current_wal_insert_lsn(), then the row:
// a change the row does not show has its commit record after L (or was not
// visible yet although its commit record was written: waiting for a
// synchronous standby). It compares the row with the view, and reads both
// again until they agree or monitor.stale_after has passed: a view state
// committed after L that differs is a change in flight (not conclusive),
// anything else that still differs at the end is a mismatch. Re-reading
// the row also settles deletes and truncates that happened meanwhile.
func (m *Monitor) audit(ctx context.Context) error {
	// Every view is built before any runs: a view that cannot be built
	// returns before a goroutine is started, none is left behind.
	vs := map[string]*views.View{}
	for _, typ := range m.topo.EntityTypes() {
		v, err := views.New(m.topo, typ, views.WithStorageDir(m.storageDir), views.WithLogger(m.log))
		if err != nil {
			return err
		}
		vs[typ] = v
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, v := range vs {
		g.Go(func() error { return v.Run(gctx) })
	}
	g.Go(func() error {
		for _, v := range vs {
			if err := v.WaitRecovered(gctx); err != nil {
				return err
			}
		}
		// The connection is replaced when PostgreSQL drops it; the one
		// open at the end is closed (a deferred db.Close would close only
		// the first). While PostgreSQL is away the audit pauses and retries
		// on each tick: a database restart must not stop the monitor.
		var db *pgx.Conn
		defer func() { closeDB(db) }()
		every := time.Duration(float64(time.Second) / m.cfg.Monitor.AuditRate)
		t := time.NewTicker(every)
		defer t.Stop()
		rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
		types := m.topo.EntityTypes()
		down := false
		for i := 0; ; i++ {
			select {
			case <-gctx.Done():
				return gctx.Err()
			case <-t.C:
			}
			if db == nil || db.IsClosed() {
				closeDB(db)
				db = nil
				conn, err := pgx.Connect(gctx, m.cfg.Postgres.URL)
				if err != nil {
					if gctx.Err() != nil {
						return gctx.Err()
					}
					if !down {
						m.log.Warn("audit paused: cannot connect to postgres; retrying", "err", err)
						down = true
					}
					continue
				}
				if down {
					m.log.Info("audit resumed: connected to postgres")
					down = false
				}
				db = conn
			}
			typ := types[i%len(types)]
			result, err := m.auditOne(gctx, db, vs[typ], typ, rnd)
			if err != nil {
				if gctx.Err() != nil {
					return gctx.Err()
				}
				m.log.Warn("audit", "entity_type", typ, "err", err)
				continue
			}
			if result != "" {
				m.metrics.audits.WithLabelValues(typ, result).Inc()
			}
		}
	})
	return g.Wait()
}

// auditOne samples one entity of typ and compares it; "" when the table is
// empty.
func (m *Monitor) auditOne(ctx context.Context, db *pgx.Conn, v *views.View, typ string, rnd *rand.Rand) (string, error) {
	ent, _ := m.cfg.Entity(typ)
	// Names are quoted: a mixed-case table or column keeps its case.
	idCol := pgx.Identifier{ent.IDColumn}.Sanitize()
	table := dbcheck.QuoteTable(ent.Table)
	var lo, hi *int64
	if err := db.QueryRow(ctx, "select min("+idCol+")::bigint, max("+idCol+")::bigint from "+table).Scan(&lo, &hi); err != nil {
		return "", err
	}
	if lo == nil {
		return "", nil
	}
	span := uint64(*hi) - uint64(*lo) // no overflow in uint64
	pick := *lo + int64(rnd.Uint64())
	if span < math.MaxUint64 {
		pick = *lo + int64(rnd.Uint64N(span+1))
	}
	var id int64
	err := db.QueryRow(ctx, "select "+idCol+"::bigint from "+table+" where "+idCol+" >= $1 order by "+idCol+" limit 1", pick).Scan(&id)
	if err != nil {
		return "", err
	}
	deadline := time.Now().Add(m.cfg.Monitor.StaleAfter)
	for {
		var lsnText string
		if err := db.QueryRow(ctx, "select pg_current_wal_insert_lsn()::text").Scan(&lsnText); err != nil {
			return "", err
		}
		var lsn codecs.LSN
		if err := lsn.UnmarshalText([]byte(lsnText)); err != nil {
			return "", err
		}
		row, err := dbcheck.Row(ctx, db, ent.Table, ent.IDColumn, id)
		if err != nil {
			return "", err
		}
		st, err := v.Get(ctx, id)
		if err != nil {
			return "", err
		}
		var diff string
		switch {
		case row == nil && st == nil:
		case row == nil:
			diff = "deleted in the database, present in the snapshot"
		case st == nil:
			diff = "in the database, not in the snapshot"
		default:
			diff = dbcheck.DiffRow(row, st.Row)
		}
		if diff == "" {
			return "match", nil
		}
		inFlight := st != nil && st.Position.CommitLSN > lsn
		if time.Now().After(deadline) {
			if inFlight {
				return "in_flight", nil
			}
			m.log.Error("audit mismatch: the snapshot differs from PostgreSQL", "entity_type", typ, "entity_id", id, "diff", diff,
				"database_lsn", lsnText, "snapshot_position", positionOf(st))
			return "mismatch", nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func positionOf(st *codecs.State) string {
	if st == nil {
		return "none"
	}
	return st.Position.String()
}
