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
