package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/viewstest"
)

func TestHandler(t *testing.T) {
	tbl := viewstest.New(t, "account")
	accounts := &views.Typed[Account]{View: tbl.View}
	for i, a := range []struct {
		budget string
		active bool
	}{{"10.00", true}, {"300.50", true}, {"99999.99", false}, {"20.00", true}, {"300.49", true}} {
		id := int64(i + 1)
		tbl.PutRow(id, codecs.Row{
			"name":   json.RawMessage(`"acme ` + strconv.FormatInt(id, 10) + `"`),
			"budget": json.RawMessage(`"` + a.budget + `"`), "active": json.RawMessage(strconv.FormatBool(a.active)),
			"updated_at": json.RawMessage(`"2026-11-25T10:00:00Z"`),
		})
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
