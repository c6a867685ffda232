package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/changes-dev/changes/topology"
)

// TestSessionReleasesTheSlot: a session that cannot take the slot says
// so, and one that fails after taking it (Kafka unreachable) lets go of it,
// so the next session, here or in another capture, can take it.
func TestSessionReleasesTheSlot(t *testing.T) {
	url := testPostgresURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t.Setenv("CHANGES_KAFKA_BROKERS", "") // no Kafka at 127.0.0.1:1, whatever the stack runs
	slot := fmt.Sprintf("test_session_%d", time.Now().UnixNano())
	cfg, err := topology.Parse(fmt.Appendf(nil, "kafka: {brokers: [\"127.0.0.1:1\"]}\npostgres: {url: %q, slot: %s}\nentities: [{type: a, table: public.a}]\n", url, slot))
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(topology.New(cfg), WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}

	other, err := lockSlot(ctx, url, slot)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.newSession().run(ctx); !errors.Is(err, errSlotBusy) {
		t.Errorf("a session while another capture holds the slot: %v, want errSlotBusy", err)
	}
	other.Close(ctx)

	if err := c.newSession().run(ctx); err == nil || !strings.HasPrefix(err.Error(), "kafka client: ") {
		t.Fatalf("a session without Kafka: %v, want a kafka client error", err)
	}
	again, err := lockSlot(ctx, url, slot)
	if err != nil {
		t.Fatalf("the failed session kept the slot: %v", err)
	}
	again.Close(context.Background())
}

// TestCommitDue checks the Kafka transaction's cadence: every 5 ms (or four
// times the last commit) at a transaction boundary, every 100 ms (or ten
// times the last commit) while behind, and at once past the size and age
// limits whatever the boundary.
func TestCommitDue(t *testing.T) {
	tests := []struct {
		name       string
		age        time.Duration
		lastCommit time.Duration
		behind     bool
		inTxn      bool
		records    int
		want       bool
	}{
		{"fresh", time.Millisecond, 0, false, false, 1, false},
		{"5 ms", 6 * time.Millisecond, 0, false, false, 1, true},
		{"four times the last commit", 6 * time.Millisecond, 2 * time.Millisecond, false, false, 1, false},
		{"inside a transaction", 50 * time.Millisecond, 0, false, true, 1, false},
		{"behind, 6 ms", 6 * time.Millisecond, 0, true, false, 1, false},
		{"behind, 100 ms", 101 * time.Millisecond, 0, true, false, 1, true},
		{"behind, ten times the last commit", 101 * time.Millisecond, 20 * time.Millisecond, true, false, 1, false},
		{"too many records", time.Millisecond, 0, true, true, maxTxnRecords, true},
		{"too old", maxTxnAge + time.Millisecond, 0, true, true, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &stream{behind: tt.behind, lastCommitTook: tt.lastCommit}
			s.ktx = kafkaTxn{open: true, started: time.Now().Add(-tt.age), records: tt.records}
			if tt.inTxn {
				s.cur = &txn{}
			}
			if got := s.commitDue(); got != tt.want {
				t.Errorf("commitDue() = %v, want %v", got, tt.want)
			}
		})
	}
	if (&stream{}).commitDue() {
		t.Error("commitDue() with no open transaction")
	}
}

func TestWatermarkInterval(t *testing.T) {
	cfg := &topology.Config{Postgres: topology.PostgresConfig{WatermarkInterval: 100 * time.Millisecond}}
	for _, tt := range []struct {
		partitions []int
		want       time.Duration
	}{
		{[]int{8, 8}, 100 * time.Millisecond},
		{[]int{100}, 100 * time.Millisecond},
		{[]int{600, 600}, 1200 * time.Millisecond},
		{[]int{10000}, 10 * time.Second},
	} {
		cfg.Entities = nil
		for _, n := range tt.partitions {
			cfg.Entities = append(cfg.Entities, topology.EntityConfig{Partitions: n})
		}
		if got := watermarkInterval(cfg); got != tt.want {
			t.Errorf("partitions %v: interval %s, want %s", tt.partitions, got, tt.want)
		}
	}
}
