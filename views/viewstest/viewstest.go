// Package viewstest runs a views.View without Kafka, for the tests of code
// built on views: a Table feeds an in-memory view through goka's tester, as
// the snapshot processor would feed its table.
//
//	tbl := viewstest.New(t, "account")
//	tbl.PutRow(42, codecs.Row{"name": json.RawMessage(`"acme"`)})
//	st, _ := tbl.View.Get(ctx, 42)
package viewstest

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/tester"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

// Table is a snapshot table of one entity type, and a running view of it.
type Table struct {
	// View is the view under test; it has recovered when New returns and
	// stops when the test ends.
	View  *views.View
	t     TB
	tt    *tester.Tester
	topic string
	typ   string
	lsn   codecs.LSN
}

// TB is what a Table needs of its test: a *testing.T, *testing.B or any
// testing.TB has it. A failure calls Fatal; Cleanup stops the view.
type TB interface {
	Helper()
	Cleanup(func())
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// New starts an in-memory view of entityType (one partition, as goka's
// tester has) with opts, and stops it at the end of the test.
func New(t TB, entityType string, opts ...views.Option) *Table {
	t.Helper()
	cfg, err := topology.Parse([]byte(`
kafka: {brokers: ["127.0.0.1:1"]}
postgres: {url: "postgres://viewstest"}
entities: [{type: ` + entityType + `, table: viewstest, partitions: 1}]
`))
	if err != nil {
		t.Fatal(err)
	}
	topo := topology.New(cfg)
	tt := tester.New(t)
	opts = append([]views.Option{views.WithInMemory()}, opts...)
	v, err := views.New(topo, entityType, append(opts, views.WithGokaOptions(goka.WithViewTester(tt)))...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("viewstest: view stopped with %v", err)
		}
	})
	if err := v.WaitRecovered(ctx); err != nil {
		t.Fatal(err)
	}
	return &Table{View: v, t: t, tt: tt, topic: topo.Snapshot(entityType), typ: entityType}
}

// Put writes st under its entity id, as the snapshot processor does.
func (tb *Table) Put(st *codecs.State) {
	tb.t.Helper()
	b, err := (codecs.StateCodec{}).Encode(st)
	if err != nil {
		tb.t.Fatal(err)
	}
	tb.tt.Consume(tb.topic, st.EntityID.String(), b)
}

// PutRow writes row as the entity's new state, at a position after every
// earlier one and committed now. The row gets the id column "id" unless it
// has one.
func (tb *Table) PutRow(id int64, row codecs.Row) {
	tb.t.Helper()
	if _, ok := row["id"]; !ok {
		row["id"] = json.RawMessage(strconv.FormatInt(id, 10))
	}
	tb.Put(&codecs.State{EntityType: tb.typ, EntityID: codecs.IntKey(id), Row: row, Position: tb.next(), CommitTime: time.Now().UTC()})
}

// PutKeyRow writes row as the new state of the entity with key k, of any
// kind, at a position after every earlier one and committed now. The row
// is written as it is: give it the key columns.
func (tb *Table) PutKeyRow(k codecs.Key, row codecs.Row) {
	tb.t.Helper()
	tb.Put(&codecs.State{EntityType: tb.typ, EntityID: k, Row: row, Position: tb.next(), CommitTime: time.Now().UTC()})
}

// Delete writes the deleted state of the entity, as a delete does.
func (tb *Table) Delete(id int64) {
	tb.t.Helper()
	tb.DeleteKey(codecs.IntKey(id))
}

// DeleteKey writes the deleted state of the entity with key k.
func (tb *Table) DeleteKey(k codecs.Key) {
	tb.t.Helper()
	tb.Put(&codecs.State{EntityType: tb.typ, EntityID: k, Deleted: true, Position: tb.next(), CommitTime: time.Now().UTC()})
}

func (tb *Table) next() codecs.Position {
	tb.lsn++
	return codecs.Position{CommitLSN: tb.lsn}
}

// Watermark writes a progress watermark at lsn, as the snapshot processor
// does for each the capture appends: the view has applied every change
// committed before lsn (views.View.AppliedThrough). The positions of the
// rows Put writes next are after it.
func (tb *Table) Watermark(lsn codecs.LSN) {
	tb.t.Helper()
	b, err := (codecs.StateCodec{}).Encode(&codecs.State{EntityType: tb.typ, Watermark: true, Position: codecs.Position{CommitLSN: lsn}, CommitTime: time.Now().UTC()})
	if err != nil {
		tb.t.Fatal(err)
	}
	tb.tt.Consume(tb.topic, topology.WatermarkKeys(1)[0], b)
	tb.lsn = max(tb.lsn, lsn)
}
