package codecs_test

import (
	"encoding/json"
	"fmt"
	"log"
	"time"

	"github.com/changes-dev/changes/codecs"
)

func ExampleEventCodec() {
	lsn, _ := codecs.ParseLSN("0/1A2B3C4")
	commit := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
	ev := &codecs.Event{
		EntityType:  "account",
		EntityID:    codecs.IntKey(42),
		Op:          codecs.OpInsert,
		After:       codecs.Row{"id": json.RawMessage(`42`), "name": json.RawMessage(`"acme"`)},
		TxID:        750,
		CommitLSN:   lsn,
		Position:    codecs.Position{CommitLSN: lsn, Index: 0},
		CommitTime:  commit,
		CaptureTime: commit.Add(2 * time.Millisecond),
	}
	b, err := codecs.EventCodec{}.Encode(ev)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(b))

	back, err := codecs.EventCodec{}.Decode(b)
	if err != nil {
		log.Fatal(err)
	}
	var row struct {
		ID   int64  `json:"id"`
		Name string `json:"name"`
	}
	if err := back.After.Decode(&row); err != nil {
		log.Fatal(err)
	}
	fmt.Println(back.Op, back.EntityID, row.Name, back.Position)

	_, err = codecs.EventCodec{}.Decode([]byte(`{"type":"account","id":"42","op":"insert"}`))
	fmt.Println(err)
	// Output:
	// {"type":"account","id":"42","op":"insert","after":{"id":42,"name":"acme"},"xid":750,"commit_lsn":"0/1A2B3C4","position":"0000000001A2B3C4:00000000","commit_time":"2026-11-25T20:00:00Z","capture_time":"2026-11-25T20:00:00.002Z"}
	// insert 42 acme 0000000001A2B3C4:00000000
	// decode event: position is zero
}

func ExamplePosition_String() {
	a := codecs.Position{CommitLSN: 0xA, Index: 1}
	b := codecs.Position{CommitLSN: 0x10, Index: 0}
	fmt.Println(a, b, a.Compare(b), a.String() < b.String())
	// Output: 000000000000000A:00000001 0000000000000010:00000000 -1 true
}
