package processors

import (
	"errors"
	"hash"
	"slices"
	"testing"

	"github.com/IBM/sarama"
	"github.com/lovoo/goka"
)

// fakeProducer hands out promises the test finishes.
type fakeProducer struct {
	finish []goka.PromiseFinisher
}

func (f *fakeProducer) Emit(topic, key string, value []byte) *goka.Promise {
	return f.EmitWithHeaders(topic, key, value, nil)
}

func (f *fakeProducer) EmitWithHeaders(string, string, []byte, goka.Headers) *goka.Promise {
	p, finish := goka.NewPromiseWithFinisher()
	f.finish = append(f.finish, finish)
	return p
}

func (f *fakeProducer) Close() error { return nil }

// TestInOrder checks that acknowledgements reach goka in the order the
// records were emitted, and that nothing after a failure counts as
// delivered: a record delivered after it, and a message's commit queued
// after it, fail too.
func TestInOrder(t *testing.T) {
	fake := &fakeProducer{}
	order := new(inOrder)
	p, err := order.producerBuilder(func([]string, string, func() hash.Hash32) (goka.Producer, error) { return fake, nil }, nil)(nil, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	record := func(name string) {
		p.Emit("t", name, nil).Then(func(err error) { got = append(got, name+"="+errText(err)) })
	}
	commit := func(name string) {
		order.complete(order.add(func(_ *sarama.ProducerMessage, err error) { got = append(got, name+"="+errText(err)) }), nil, nil)
	}

	record("a")
	commit("commit-a") // a message that emitted a
	if len(got) != 0 {
		t.Fatalf("a commit went through before the record emitted before it: %v", got)
	}
	fake.finish[0](nil, nil)
	if want := []string{"a=ok", "commit-a=ok"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	commit("commit-empty") // nothing pending: at once
	if got[len(got)-1] != "commit-empty=ok" {
		t.Fatalf("a commit with nothing pending waited: %v", got)
	}

	got = nil
	record("b")              // to a broker that is down
	record("c")              // to one that is up
	commit("commit-c")       // the message that emitted c
	commit("commit-d")       // a message that emitted nothing
	fake.finish[2](nil, nil) // c delivered first
	if len(got) != 0 {
		t.Fatalf("c was acknowledged while b was pending: %v", got)
	}
	fake.finish[1](nil, errors.New("run out of available brokers"))
	want := []string{"b=fail", "c=fail", "commit-c=fail", "commit-d=fail"}
	if !slices.Equal(got, want) {
		t.Fatalf("after b failed: got %v, want %v", got, want)
	}
	got = nil
	record("e")
	if want := []string{"e=fail"}; !slices.Equal(got, want) {
		t.Fatalf("a record after the failure: got %v, want %v", got, want)
	}
	if len(fake.finish) != 3 {
		t.Fatalf("a record emitted after the failure reached the producer (%d records there, want 3)", len(fake.finish))
	}
}

func errText(err error) string {
	if err != nil {
		return "fail"
	}
	return "ok"
}
