package server_test

import (
	"encoding/json"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/server"
	"github.com/changes-dev/changes/views/viewstest"
)

// BenchmarkListPage: a page of 1000 entities, by row size, through the
// handler without a network.
func BenchmarkListPage(b *testing.B) {
	for _, size := range []int{200, 4000} {
		b.Run("row="+strconv.Itoa(size), func(b *testing.B) {
			tbl := viewstest.New(b, "account")
			for id := int64(1); id <= 1000; id++ {
				tbl.Put(&codecs.State{EntityType: "account", EntityID: codecs.IntKey(id),
					Row:      codecs.Row{"id": json.RawMessage(strconv.FormatInt(id, 10)), "name": json.RawMessage(`"` + strings.Repeat("x", size) + `"`)},
					Position: codecs.Position{CommitLSN: codecs.LSN(id)}, CommitTime: time.Unix(1700000000, 0).UTC()})
			}
			h := server.Handler(server.Config{Views: map[string]*views.View{"account": tbl.View}})
			b.ReportAllocs()
			var n int
			for b.Loop() {
				w := httptest.NewRecorder()
				h.ServeHTTP(w, httptest.NewRequest("GET", "/v1/entities/account?limit=1000", nil))
				if w.Code != 200 {
					b.Fatal(w.Code)
				}
				n = w.Body.Len()
			}
			b.SetBytes(int64(n))
		})
	}
}
