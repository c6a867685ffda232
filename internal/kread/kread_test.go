package kread_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/internal/kread"
	"github.com/changes-dev/changes/topology"
)

// brokers returns the test broker, or skips (fails under CI=true).
func brokers(t *testing.T) []string {
	t.Helper()
	b := os.Getenv("CHANGES_KAFKA_BROKERS")
	if b == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("CHANGES_KAFKA_BROKERS is not set (run `make test`, which starts the stack)")
		}
		t.Skip("no Kafka: set CHANGES_KAFKA_BROKERS or run `make test`")
	}
	return strings.Split(b, ",")
}

// TestRangeSkipsAbortedAndMarkers writes committed, aborted and open
// transactions and plain records, then checks that Range returns exactly the
// committed records and ends at End although the last offsets are markers.
func TestRangeSkipsAbortedAndMarkers(t *testing.T) {
	bs := brokers(t)
	kcfg := topology.KafkaConfig{Brokers: bs, Version: topology.DefaultKafkaVersion, ClientID: "kread-test", MaxRecordBytes: 1 << 20}
	topic := fmt.Sprintf("kread-test-%d", time.Now().UnixNano())
	admin, err := topology.NewClusterAdmin(kcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1}, false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.DeleteTopic(topic) })

	pcfg, err := topology.TransactionalConfig(kcfg, topic)
	if err != nil {
		t.Fatal(err)
	}
	p, err := sarama.NewAsyncProducer(bs, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	send := func(values ...string) {
		for _, v := range values {
			p.Input() <- &sarama.ProducerMessage{Topic: topic, Value: sarama.StringEncoder(v)}
		}
	}
	txn := func(commit bool, values ...string) {
		t.Helper()
		if err := p.BeginTxn(); err != nil {
			t.Fatal(err)
		}
		send(values...)
		finish := p.AbortTxn
		if commit {
			finish = p.CommitTxn
		}
		if err := finish(); err != nil {
			t.Fatal(err)
		}
	}
	txn(true, "a", "b")
	txn(false, "x1", "x2", "x3")
	txn(true, "c")
	txn(false, "y")
	txn(true, "d", "e")
	txn(false, "z") // the log ends with an abort marker

	client, err := topology.NewClient(kcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	end, err := kread.End(client, topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(2 + 1 + 3 + 1 + 1 + 1 + 1 + 1 + 2 + 1 + 1 + 1); end != want {
		t.Fatalf("End = %d, want %d (records and markers)", end, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	read := func(from, to int64) []string {
		t.Helper()
		var got []string
		err := kread.Range(ctx, client, topic, 0, from, to, func(r *kread.Record) (bool, error) {
			got = append(got, string(r.Value))
			return true, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := strings.Join(read(0, end), ","); got != "a,b,c,d,e" {
		t.Errorf("Range(0, end) = %s, want a,b,c,d,e", got)
	}
	// From the middle of an aborted transaction.
	if got := strings.Join(read(4, end), ","); got != "c,d,e" {
		t.Errorf("Range(4, end) = %s, want c,d,e", got)
	}

	// An open transaction holds the last stable offset back.
	if err := p.BeginTxn(); err != nil {
		t.Fatal(err)
	}
	send("open")
	time.Sleep(500 * time.Millisecond) // sent, not committed
	if lso, err := kread.End(client, topic, 0); err != nil || lso != end {
		t.Errorf("End with an open transaction = %d, %v; want %d", lso, err, end)
	}
	if err := p.CommitTxn(); err != nil {
		t.Fatal(err)
	}
	// The coordinator writes the markers after the commit returns: the last
	// stable offset moves soon after.
	var end2 int64
	for end2 <= end && ctx.Err() == nil {
		if end2, err = kread.End(client, topic, 0); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := strings.Join(read(end, end2), ","); got != "open" {
		t.Errorf("after the commit: %s, want open", got)
	}

	// Lag counts records, not offsets: a consumer past "open" is done,
	// though the commit marker after it takes the end's last offset.
	for _, c := range []struct{ next, want int64 }{{0, 6}, {4, 4}, {end, 1}, {end + 1, 0}, {end2, 0}} {
		if lag, err := kread.Lag(ctx, client, topic, 0, c.next); err != nil || lag != c.want {
			t.Errorf("Lag from %d = %d, %v; want %d", c.next, lag, err, c.want)
		}
	}

	// Follow sees the committed records, then what commits while it waits,
	// and ends with its context.
	var followed []string
	fctx, fcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- kread.Follow(fctx, client, topic, 0, 0, nil, func(r *kread.Record) error {
			followed = append(followed, string(r.Value))
			if len(followed) == 7 {
				fcancel()
			}
			return nil
		})
	}()
	time.Sleep(300 * time.Millisecond) // following, at the end
	txn(false, "never")
	txn(true, "late")
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Follow ended with %v, want context.Canceled", err)
	}
	if got := strings.Join(followed, ","); got != "a,b,c,d,e,open,late" {
		t.Errorf("Follow = %s, want a,b,c,d,e,open,late", got)
	}
}
