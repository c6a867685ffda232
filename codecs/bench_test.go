package codecs_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/changes-dev/changes/codecs"
)

// benchEvent is a typical ad-tech entity change: a dozen columns of mixed types.
func benchEvent() *codecs.Event {
	row := codecs.Row{}
	for k, v := range map[string]string{
		"id": `9007199254740993`, "account_id": `42`, "name": `"campaign 9007199254740993"`,
		"bid": `"1.2345"`, "budget": `"100000.00"`, "status": `"active"`, "active": `true`,
		"targeting": `{"geo":["US","DE"],"max_cpm":17}`, "created_at": `"2026-11-25 10:00:00.123456+00"`,
		"updated_at": `"2026-11-25 12:00:00.654321+00"`, "ctr": `0.0123`, "notes": `null`,
	} {
		row[k] = json.RawMessage(v)
	}
	lsn := codecs.LSN(0x16B374D848)
	return &codecs.Event{
		EntityType: "campaign", EntityID: codecs.IntKey(9007199254740993), Op: codecs.OpUpdate, After: row,
		TxID: 750, CommitLSN: lsn, Position: codecs.Position{CommitLSN: lsn, Index: 3},
		CommitTime:  time.Date(2026, 11, 25, 12, 0, 0, 654321000, time.UTC),
		CaptureTime: time.Date(2026, 11, 25, 12, 0, 0, 656000000, time.UTC),
	}
}

func BenchmarkEventCodec(b *testing.B) {
	ev := benchEvent()
	data, err := codecs.EventCodec{}.Encode(ev)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, err := (codecs.EventCodec{}).Encode(ev); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, err := (codecs.EventCodec{}).Decode(data); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
	// What the history's type replays do with each change.
	b.Run("decode-without-rows", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, _, err := (codecs.EventCodec{}).DecodeWithoutRows(data); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
}

func BenchmarkStateCodec(b *testing.B) {
	st, _ := codecs.Apply(nil, benchEvent())
	st.AppliedTime = time.Date(2026, 11, 25, 12, 0, 0, 700000000, time.UTC)
	data, err := codecs.StateCodec{}.Encode(st)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, err := (codecs.StateCodec{}).Encode(st); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "states/s")
	})
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, err := (codecs.StateCodec{}).Decode(data); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "states/s")
	})
}

func BenchmarkColumnValue(b *testing.B) {
	for _, c := range []struct {
		name string
		oid  uint32
		text string
	}{
		{"int8", 20, "9007199254740993"},
		{"numeric", 1700, "12345678901234567890.0123456789"},
		{"jsonb", 3802, `{"geo": ["US", "DE"], "max_cpm": 17}`},
		{"text", 25, "campaign 9007199254740993 \"quoted\""},
	} {
		b.Run(c.name, func(b *testing.B) {
			text := []byte(c.text)
			b.ReportAllocs()
			b.SetBytes(int64(len(text)))
			for b.Loop() {
				if _, err := codecs.ColumnValue(c.oid, text); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "values/s")
		})
	}
}

// BenchmarkSnapshotRow encodes a row of the e2e snapshot benchmark's table
// as an OpSnapshot event: through a Row (TextRow, then Encode), as the
// stream does, and straight from the text values (RowEncoder and
// AppendWithAfter), as the initial snapshot does.
func BenchmarkSnapshotRow(b *testing.B) {
	names := []string{"id", "name", "score", "at"}
	oids := []uint32{20, 25, 1700, 1184}
	values := [][]byte{[]byte("12345"), []byte("827ccb0eea8a706c4c34a16891f84e7b"), []byte("18517.5"), []byte("2026-12-01 19:20:48.661234+00")}
	lsn := codecs.LSN(0x16B374D848)
	ev := codecs.Event{EntityType: "item", EntityID: codecs.IntKey(12345), Op: codecs.OpSnapshot, CommitLSN: lsn,
		Position: codecs.Position{CommitLSN: lsn, Index: 3}, CommitTime: time.Now().UTC(), CaptureTime: time.Now().UTC()}
	b.Run("row", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			row, err := codecs.TextRow(names, oids, values)
			if err != nil {
				b.Fatal(err)
			}
			e := ev
			e.After = row
			if _, err := (codecs.EventCodec{}).Encode(&e); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	})
	b.Run("row-encoder", func(b *testing.B) {
		enc, err := codecs.NewRowEncoder(names, oids)
		if err != nil {
			b.Fatal(err)
		}
		var row, out []byte
		b.ReportAllocs()
		for b.Loop() {
			if row, err = enc.Append(row[:0], values); err != nil {
				b.Fatal(err)
			}
			if out, err = (codecs.EventCodec{}).AppendWithAfter(out[:0], &ev, row); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	})
}
