package monitor

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
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
	keyColumns := ent.KeyColumns()
	key, found, err := sampleKey(ctx, db, dbcheck.QuoteTable(ent.Table), keyColumns, rnd)
	if err != nil || !found {
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
		row, err := dbcheck.Row(ctx, db, ent.Table, keyColumns, key)
		if err != nil {
			return "", err
		}
		st, err := v.GetKey(ctx, key)
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
			m.log.Error("audit mismatch: the snapshot differs from PostgreSQL", "entity_type", typ, "entity_id", key.String(), "diff", diff,
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

// sampleKey picks the key of a random row of table; found is false when the
// table is empty. An integer key is drawn uniformly between the smallest and
// the largest id, and the first row at or after it is taken (two index
// lookups). Other keys have no such range: a block sample of about 100 rows
// (tablesample system, reading only the sampled pages) gives one, and a
// table too small or sparse for the sample to hit anything is small enough
// to order at random.
func sampleKey(ctx context.Context, db *pgx.Conn, table string, keyColumns []string, rnd *rand.Rand) (codecs.Key, bool, error) {
	cols := make([]string, len(keyColumns))
	for i, c := range keyColumns {
		// Names are quoted: a mixed-case table or column keeps its case.
		cols[i] = pgx.Identifier{c}.Sanitize()
	}
	list := strings.Join(cols, ", ")
	if len(cols) == 1 {
		var integer bool
		err := db.QueryRow(ctx, `select atttypid in ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
			from pg_attribute where attrelid = $1::regclass and attname = $2`, table, keyColumns[0]).Scan(&integer)
		if err != nil {
			return codecs.Key{}, false, err
		}
		if integer {
			idCol := cols[0]
			var lo, hi *int64
			if err := db.QueryRow(ctx, "select min("+idCol+")::bigint, max("+idCol+")::bigint from "+table).Scan(&lo, &hi); err != nil {
				return codecs.Key{}, false, err
			}
			if lo == nil {
				return codecs.Key{}, false, nil
			}
			span := uint64(*hi) - uint64(*lo) // no overflow in uint64
			pick := *lo + int64(rnd.Uint64())
			if span < math.MaxUint64 {
				pick = *lo + int64(rnd.Uint64N(span+1))
			}
			var id int64
			err := db.QueryRow(ctx, "select "+idCol+"::bigint from "+table+" where "+idCol+" >= $1 order by "+idCol+" limit 1", pick).Scan(&id)
			if err != nil {
				return codecs.Key{}, false, err
			}
			return codecs.IntKey(id), true, nil
		}
	}
	var estimate float64
	if err := db.QueryRow(ctx, "select greatest(reltuples, 0)::float8 from pg_class where oid = $1::regclass", table).Scan(&estimate); err != nil {
		return codecs.Key{}, false, err
	}
	percent := 100.0
	if estimate > 100 {
		percent = 100 * 100 / estimate
	}
	queries := []string{
		fmt.Sprintf("select %s from %s tablesample system (%g) repeatable (%d) limit 1", list, table, percent, rnd.Int32()),
		fmt.Sprintf("select %s from %s order by random() limit 1", list, table),
	}
	if estimate > 1_000_000 {
		queries[1] = fmt.Sprintf("select %s from %s limit 1", list, table) // never sort a big table
	}
	for _, q := range queries {
		rows, err := db.Query(ctx, q, pgx.QueryResultFormats{pgx.TextFormatCode})
		if err != nil {
			return codecs.Key{}, false, err
		}
		var key codecs.Key
		found := false
		if rows.Next() {
			oids := make([]uint32, len(cols))
			for i, f := range rows.FieldDescriptions() {
				oids[i] = f.DataTypeOID
			}
			key, err = codecs.ColumnKey(keyColumns, oids, rows.RawValues())
			found = err == nil
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
		if err != nil {
			return codecs.Key{}, false, err
		}
		if found {
			return key, true, nil
		}
	}
	return codecs.Key{}, false, nil
}
