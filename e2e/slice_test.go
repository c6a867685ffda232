package e2e

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

// change is what the test expects in the history, in commit order.
type change struct {
	typ string
	id  int64
	op  codecs.Op
}

func (c change) String() string { return fmt.Sprintf("%s %d %s", c.typ, c.id, c.op) }

// TestSlice drives committed rows of two tables through the real capture,
// router, snapshot processors and views on PostgreSQL and Kafka, then checks
// that both views equal their tables value by value and that the history
// holds every change exactly once, in commit order.
func TestSlice(t *testing.T) {
	e := stack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	name := uniqueName("slice")
	users, orders := name+"_users", name+"_orders"
	cfg := testConfig(t, e, name, []topology.EntityConfig{
		{Type: "user", Table: "public." + users, IDColumn: "id", Partitions: 3},
		{Type: "order", Table: "public." + orders, IDColumn: "order_id", Partitions: 2},
	})
	topo := topology.New(cfg)
	cleanupStack(t, e, cfg, users, orders)

	db, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	execSQL(t, ctx, db, fmt.Sprintf(`
		create table %s (id bigint primary key, name text not null, score numeric(30,10), tags text[],
			profile jsonb, active boolean, seen timestamptz, blob text);
		create table %s (order_id integer primary key, user_id bigint, amount numeric, note varchar(50));
		alter table %s replica identity full`, users, orders, orders))

	log := testLogger(t)
	runCtx, stop := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(runCtx)
	t.Cleanup(func() {
		stop()
		if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("platform stopped with %v", err)
		}
	})
	if err := platform.EnsureTopics(topo); err != nil {
		t.Fatal(err)
	}
	g.Go(func() error { return platform.Run(gctx, topo, platform.All, log, nil, nil) })
	vs := map[string]*views.View{}
	for _, typ := range topo.EntityTypes() {
		v, err := views.New(topo, typ, views.WithLogger(log))
		if err != nil {
			t.Fatal(err)
		}
		vs[typ] = v
		g.Go(func() error { return v.Run(gctx) })
	}
	waitSlotActive(t, gctx, db, cfg.Postgres.Slot)

	// The workload: single statements, several per transaction, the same
	// entity changed several times in one transaction, a rolled-back
	// transaction, an id above 2^53, and an unchanged TOASTed value.
	const bigID = int64(1)<<53 + 1
	var want []change
	txn(t, ctx, db, []string{
		fmt.Sprintf(`insert into %s (id, name, score, tags, profile, active, seen) values
			(1, 'ada', 12345678901234567890.0123456789, '{a,"b c"}', '{"k": [1, 2.5, "x"]}', true, '2026-11-25 10:00:00.123456+00'),
			(2, 'bob', -0.5, '{}', 'null', false, null),
			(3, 'cy', null, null, null, null, null)`, users),
	}, &want, change{"user", 1, codecs.OpInsert}, change{"user", 2, codecs.OpInsert}, change{"user", 3, codecs.OpInsert})
	txn(t, ctx, db, []string{
		fmt.Sprintf(`insert into %s values (10, 1, 9.99, 'first'), (11, 2, 100, 'second')`, orders),
		fmt.Sprintf(`update %s set name = 'ada lovelace' where id = 1`, users),
	}, &want, change{"order", 10, codecs.OpInsert}, change{"order", 11, codecs.OpInsert}, change{"user", 1, codecs.OpUpdate})
	txn(t, ctx, db, []string{fmt.Sprintf(`update %s set active = true where id = 2`, users)},
		&want, change{"user", 2, codecs.OpUpdate})
	txn(t, ctx, db, []string{
		fmt.Sprintf(`delete from %s where order_id = 11`, orders),
		fmt.Sprintf(`update %s set amount = amount * 2, note = 'doubled' where order_id = 10`, orders),
		fmt.Sprintf(`delete from %s where id = 3`, users),
	}, &want, change{"order", 11, codecs.OpDelete}, change{"order", 10, codecs.OpUpdate}, change{"user", 3, codecs.OpDelete})
	txn(t, ctx, db, []string{
		fmt.Sprintf(`insert into %s (id, name) values (4, 'dee')`, users),
		fmt.Sprintf(`update %s set name = 'dee 2' where id = 4`, users),
		fmt.Sprintf(`delete from %s where id = 4`, users),
		fmt.Sprintf(`insert into %s (id, name) values (%d, 'big')`, users, bigID),
	}, &want, change{"user", 4, codecs.OpInsert}, change{"user", 4, codecs.OpUpdate}, change{"user", 4, codecs.OpDelete}, change{"user", bigID, codecs.OpInsert})
	rollback(t, ctx, db, fmt.Sprintf(`insert into %s (id, name) values (99, 'never')`, users))
	// A value stored out of line (TOAST), then an update that leaves it alone:
	// pgoutput does not send it, and the view must keep it.
	txn(t, ctx, db, []string{fmt.Sprintf(`update %s set blob = (select string_agg(md5(i::text), '') from generate_series(1, 2000) i) where id = 2`, users)},
		&want, change{"user", 2, codecs.OpUpdate})
	txn(t, ctx, db, []string{fmt.Sprintf(`update %s set name = name || '!' where id in (1, 2)`, users)},
		&want, change{"user", 1, codecs.OpUpdate}, change{"user", 2, codecs.OpUpdate})

	// A changed id is a delete of the old entity and an insert of the new one,
	// under REPLICA IDENTITY DEFAULT (users) and FULL (orders).
	txn(t, ctx, db, []string{fmt.Sprintf(`update %s set id = 6 where id = 1`, users)},
		&want, change{"user", 1, codecs.OpDelete}, change{"user", 6, codecs.OpInsert})
	txn(t, ctx, db, []string{fmt.Sprintf(`update %s set order_id = 12 where order_id = 10`, orders)},
		&want, change{"order", 10, codecs.OpDelete}, change{"order", 12, codecs.OpInsert})

	// TRUNCATE empties the type's table in every partition; what follows stays.
	txn(t, ctx, db, []string{fmt.Sprintf(`truncate %s`, orders), fmt.Sprintf(`insert into %s values (20, 6, 1.5, 'after')`, orders)},
		&want, change{"order", 0, codecs.OpTruncate}, change{"order", 20, codecs.OpInsert})

	waitViewsEqual(t, ctx, db, topo, vs)

	for _, id := range []int64{1, 3} {
		if st, err := vs["user"].Get(ctx, id); err != nil || st != nil {
			t.Errorf("user %d is gone from the table: Get = %v, %v; want nil", id, st != nil, err)
		}
	}
	if st, err := vs["user"].Get(ctx, bigID); err != nil || st == nil || st.EntityID != codecs.IntKey(bigID) {
		t.Errorf("user %d: Get = %v, %v; want its state", bigID, st != nil, err)
	}
	if st, _ := vs["user"].Get(ctx, 2); st == nil || len(st.Row["blob"]) < 64000 {
		t.Errorf("user 2 lost its unchanged TOASTed blob")
	}

	got := readHistory(t, ctx, cfg, topo.History(), len(want))
	checkHistory(t, got, want)
}

// checkHistory compares the history with the expected changes: same changes,
// same order, nothing twice, positions strictly increasing, the commit time
// as the record timestamp and in the headers.
func checkHistory(t testing.TB, got []*sarama.ConsumerMessage, want []change) {
	t.Helper()
	var seen []change
	var last codecs.Position
	for _, m := range got {
		ev, err := codecs.EventCodec{}.Decode(m.Value)
		if err != nil {
			t.Fatalf("history offset %d: %v", m.Offset, err)
		}
		seen = append(seen, change{ev.EntityType, idOf(ev.EntityID), ev.Op})
		if ev.Position.Compare(last) <= 0 {
			t.Errorf("history offset %d: position %s does not follow %s", m.Offset, ev.Position, last)
		}
		last = ev.Position
		if !m.Timestamp.Equal(ev.CommitTime.Truncate(time.Millisecond)) {
			t.Errorf("history offset %d: record timestamp %s, commit time %s", m.Offset, m.Timestamp, ev.CommitTime)
		}
		headers := map[string]string{}
		for _, h := range m.Headers {
			headers[string(h.Key)] = string(h.Value)
		}
		if headers[codecs.HeaderPosition] != ev.Position.String() || headers[codecs.HeaderEntityType] != ev.EntityType ||
			headers[codecs.HeaderCommitTime] != ev.CommitTime.Format(time.RFC3339Nano) {
			t.Errorf("history offset %d: headers %v do not match the event", m.Offset, headers)
		}
		// Under REPLICA IDENTITY DEFAULT the old row is the key alone, never
		// the key plus nulls; under FULL it is the whole row.
		if ev.Op == codecs.OpDelete {
			if ev.EntityType == "user" && (len(ev.Before) != 1 || ev.Before["id"] == nil) {
				t.Errorf("history offset %d: user delete carries before %v, want the key alone", m.Offset, ev.Before)
			}
			if ev.EntityType == "order" && len(ev.Before) != 4 {
				t.Errorf("history offset %d: order delete under REPLICA IDENTITY FULL carries before %v, want the whole row", m.Offset, ev.Before)
			}
		}
		if wantKey := fmt.Sprintf("%s/%s", ev.EntityType, ev.EntityID); string(m.Key) != wantKey {
			t.Errorf("history offset %d: key %q, want %q", m.Offset, m.Key, wantKey)
		}
	}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("history holds\n  %v\nwant\n  %v", seen, want)
	}
}

// txn commits stmts in one transaction and appends the changes it makes to want.
func txn(t testing.TB, ctx context.Context, db *pgx.Conn, stmts []string, want *[]change, changes ...change) {
	t.Helper()
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	*want = append(*want, changes...)
}

func rollback(t testing.TB, ctx context.Context, db *pgx.Conn, sql string) {
	t.Helper()
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, sql); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
}
