package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/tester"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

func TestHandler(t *testing.T) {
	cfg, err := topology.Parse([]byte(`
kafka: {brokers: ["127.0.0.1:1"]}
postgres: {url: "postgres://unused"}
entities: [{type: account, table: accounts, partitions: 1}]
`))
	if err != nil {
		t.Fatal(err)
	}
	topo := topology.New(cfg)
	tt := tester.New(t)
	accounts, err := views.NewTyped[Account](topo, "account", views.WithInMemory(), views.WithGokaOptions(goka.WithViewTester(tt)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- accounts.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if err := accounts.WaitRecovered(ctx); err != nil {
		t.Fatal(err)
	}
	for i, a := range []struct {
		budget string
		active bool
	}{{"10.00", true}, {"300.50", true}, {"99999.99", false}, {"20.00", true}, {"300.49", true}} {
		id := int64(i + 1)
		row := codecs.Row{
			"id": json.RawMessage(strconv.FormatInt(id, 10)), "name": json.RawMessage(`"acme ` + strconv.FormatInt(id, 10) + `"`),
			"budget": json.RawMessage(`"` + a.budget + `"`), "active": json.RawMessage(strconv.FormatBool(a.active)),
			"updated_at": json.RawMessage(`"2026-11-25T10:00:00Z"`),
		}
		b, err := (codecs.StateCodec{}).Encode(&codecs.State{EntityType: "account", EntityID: id, Row: row,
			Position: codecs.Position{CommitLSN: codecs.LSN(id)}, CommitTime: time.Unix(1700000000, 0).UTC()})
		if err != nil {
			t.Fatal(err)
		}
		tt.Consume(string(topo.Snapshot("account")), strconv.FormatInt(id, 10), b)
	}
	srv := httptest.NewServer(Handler(accounts))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	if code, body := get("/accounts/2"); code != 200 || !strings.Contains(body, `"budget":"300.50"`) {
		t.Errorf("/accounts/2: %d %s", code, body)
	}
	if code, _ := get("/accounts/9"); code != 404 {
		t.Errorf("/accounts/9: %d, want 404", code)
	}
	code, body := get("/top?n=2")
	var top []Account
	if code != 200 || json.Unmarshal([]byte(body), &top) != nil || len(top) != 2 || top[0].ID != 2 || top[1].ID != 5 {
		t.Errorf("/top?n=2: %d %s; want accounts 2 and 5 (3 is inactive)", code, body)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Errorf("/readyz: %d %s", code, body)
	}
}
