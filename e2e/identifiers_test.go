package e2e

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/processors/monitor"
	"github.com/changes-dev/changes/topology"
)

// TestMixedCaseIdentifiers captures a table whose schema, name and id column
// are mixed case, through a mixed-case publication, to a view, and runs the
// monitor's database audit on it. Every name must be quoted where
// PostgreSQL reads it: unquoted, the publication in START_REPLICATION's
// publication_names was folded to lower case ("publication does not
// exist"), and the audit's queries read the table's lower-case twin, which
// this test creates with other rows so that a folded name shows as
// mismatches rather than as an error.
func TestMixedCaseIdentifiers(t *testing.T) {
	e := stack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	name := uniqueName("mixedcase")
	suffix := name[len(name)-8:]
	schema := "MixedCase_" + suffix
	cfg := testConfig(t, e, name, []topology.EntityConfig{{Type: "account", Table: schema + ".Accounts", IDColumn: "AccountID", Partitions: 2}})
	cfg.Postgres.Publication = "ChangesPub_" + suffix
	cfg.Monitor.StaleAfter = 3 * time.Second
	cfg.Monitor.AuditRate = 20
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	topo := topology.New(cfg)
	cleanupStack(t, e, cfg)
	twin := "mixedcase_" + suffix // what PostgreSQL folds the schema to
	onCleanup(t, e, func(ctx context.Context, conn *pgx.Conn) {
		for _, s := range []string{schema, twin} {
			if _, err := conn.Exec(ctx, "drop schema if exists "+pgx.Identifier{s}.Sanitize()+" cascade"); err != nil {
				t.Errorf("cleanup: drop schema %s: %v", s, err)
			}
		}
	})
	db, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })

	table := pgx.Identifier{schema, "Accounts"}.Sanitize()
	execSQL(t, ctx, db, "create schema "+pgx.Identifier{schema}.Sanitize())
	execSQL(t, ctx, db, "create table "+table+` ("AccountID" bigint primary key, "Name" text not null, n integer not null)`)
	execSQL(t, ctx, db, "create schema "+twin)
	execSQL(t, ctx, db, "create table "+twin+".accounts (accountid bigint primary key, name text not null, n integer not null)")
	execSQL(t, ctx, db, "insert into "+twin+".accounts select g, 'twin', -1 from generate_series(1, 60) g")
	// Rows for the initial snapshot.
	execSQL(t, ctx, db, "insert into "+table+` select g, 'Snap ' || g, g from generate_series(1, 20) g`)
	if err := platform.EnsureTopics(topo); err != nil {
		t.Fatal(err)
	}
	run := startPlatform(t, ctx, topo)
	waitSlotActive(t, ctx, db, cfg.Postgres.Slot)
	if err := platform.WaitGroupsStable(ctx, topo); err != nil {
		t.Fatal(err)
	}
	reg := runMonitor(t, ctx, topo)

	// The publication the capture made publishes the table by its exact name.
	rows, err := db.Query(ctx, "select schemaname || '.' || tablename from pg_publication_tables where pubname = $1", cfg.Postgres.Publication)
	if err != nil {
		t.Fatal(err)
	}
	published, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{schema + ".Accounts"}; !slices.Equal(published, want) {
		t.Errorf("publication %s publishes %v, want %v", cfg.Postgres.Publication, published, want)
	}

	// Streamed changes: 20 inserts, 40 updates, 5 deletes.
	execSQL(t, ctx, db, "insert into "+table+` select g, 'New ' || g, g from generate_series(21, 40) g`)
	execSQL(t, ctx, db, "update "+table+` set n = n + 1, "Name" = "Name" || '!'`)
	execSQL(t, ctx, db, "delete from "+table+` where "AccountID" % 7 = 0`)
	const streamed = 65
	waitViewsEqual(t, ctx, db, topo, run.views)
	waitMetric(t, ctx, reg, "changes_monitor_commit_to_snapshot_seconds", map[string]string{"entity_type": "account"}, streamed, 30*time.Second)
	took := waitMetric(t, ctx, reg, "changes_monitor_audit_checks_total", map[string]string{"entity_type": "account", "result": "match"}, 10, 60*time.Second)
	t.Logf("the database audit matched 10 entities after %s", took)
	for _, c := range []struct {
		metric string
		labels map[string]string
	}{
		{"changes_monitor_audit_checks_total", map[string]string{"result": "mismatch"}},
		{"changes_monitor_history_anomalies_total", nil},
		{"changes_monitor_inconsistent_total", nil},
		{"changes_monitor_stale_entities", nil},
		{"changes_monitor_forgotten_events_total", nil},
	} {
		if v := metricValue(t, reg, c.metric, c.labels); v != 0 {
			t.Errorf("%s%v = %v, want 0", c.metric, c.labels, v)
		}
	}
	// `changes audit` finds nothing either.
	res, err := monitor.Audit(ctx, topo, time.Hour, cfg.Monitor.StaleAfter)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Anomalies) != 0 || len(res.Stale) != 0 {
		t.Errorf("changes audit found %v and stale %v", res.Anomalies, res.Stale)
	}
	if want := 20 + streamed; res.HistoryRecords != want {
		t.Errorf("changes audit read %d history records, want %d", res.HistoryRecords, want)
	}
}
