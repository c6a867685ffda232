package history_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views/history"
)

// A service that asks the history many point-in-time questions keeps an
// index of it beside its views: one entity at a moment then takes
// milliseconds instead of a read of the whole history. The index needs a
// running Kafka cluster with the platform's history topic, so this example
// is compiled but not run.
func ExampleIndex() {
	r, err := history.New(history.Config{
		Kafka: topology.KafkaConfig{Brokers: []string{"kafka-1:9092", "kafka-2:9092"}},
		Topic: "changes.history",
	}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	x, err := history.OpenIndex(r, history.IndexConfig{Dir: "/var/lib/my-service/history-index"})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- x.Run(ctx) }() // tails the history until ctx is done
	defer func() {
		cancel()
		if err := <-done; err != nil {
			log.Print(err)
		}
		x.Close()
	}()

	// Account 42 as it was yesterday at noon. The answer is the one
	// Reader.EntityAt gives; what the index has not read yet is read from
	// the history, so it is never stale, only slower while the index
	// catches up (x.Position()).
	at := time.Now().AddDate(0, 0, -1).Truncate(24 * time.Hour).Add(12 * time.Hour)
	end, err := r.OffsetAt(ctx, at)
	if err != nil {
		log.Fatal(err)
	}
	st, err := x.EntityAt(ctx, "account", codecs.IntKey(42), end, nil)
	switch {
	case errors.Is(err, history.ErrOlderThanHistory), errors.Is(err, history.ErrBeforeHistory):
		fmt.Println("the history no longer tells:", err)
	case err != nil:
		log.Fatal(err)
	case st == nil:
		fmt.Println("account 42 did not exist then")
	default:
		fmt.Printf("account 42 then: %s\n", st.Row["name"])
	}

	// Every account then: the index's last checkpoint before end, and at
	// most IndexConfig.CheckpointEvery records of the history after it.
	all, err := x.TypeAt(ctx, "account", end, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(all), "accounts then")
}

// Every account as it was at a history offset, printed a JSON object a
// line as `changes asof` prints them: TypeJSONAt hands on each entity's
// JSON, written from the bytes the index stores where the history after
// its checkpoint did not change the entity, without building the list of
// states or encoding them again. Compiled, not run: it needs Kafka.
func ExampleIndex_TypeJSONAt() {
	r, err := history.New(history.Config{
		Kafka: topology.KafkaConfig{Brokers: []string{"kafka-1:9092"}},
		Topic: "changes.history",
	}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	x, err := history.OpenIndex(r, history.IndexConfig{Dir: "/var/lib/my-service/history-index"})
	if err != nil {
		log.Fatal(err)
	}
	defer x.Close() // after Run has returned; see ExampleIndex

	ctx := context.Background()
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	err = x.TypeJSONAt(ctx, "account", 1_250_000, nil, func(entity []byte) error {
		// entity is the JSON of a history.Entity, valid until we return.
		out.Write(entity)
		return out.WriteByte('\n')
	})
	if err != nil {
		log.Fatal(err)
	}
}
