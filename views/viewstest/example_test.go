package viewstest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/views/viewstest"
)

// A handler test feeds the table and reads through the view, as production
// code does; no Kafka is involved.
func TestAccountNames(t *testing.T) {
	tbl := viewstest.New(t, "account")
	tbl.PutRow(1, codecs.Row{"name": json.RawMessage(`"acme"`)})
	tbl.PutRow(2, codecs.Row{"name": json.RawMessage(`"globex"`)})
	tbl.PutRow(1, codecs.Row{"name": json.RawMessage(`"acme corp"`)})
	tbl.Delete(2)

	ctx := context.Background()
	var names []string
	for st, err := range tbl.View.All(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		var row struct{ Name string }
		if err := st.Row.Decode(&row); err != nil {
			t.Fatal(err)
		}
		names = append(names, fmt.Sprintf("%s=%s", st.EntityID, row.Name))
	}
	if fmt.Sprint(names) != "[1=acme corp]" {
		t.Errorf("view holds %v, want [1=acme corp]", names)
	}
	if n, err := tbl.View.Len(); err != nil || n != 1 {
		t.Errorf("Len = %d, %v; want 1", n, err)
	}
}
