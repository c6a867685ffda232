package outage

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/topology"
)

func TestRetryable(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{errors.New("dial tcp 127.0.0.1:9092: connect: connection refused"), true},
		{fmt.Errorf("kafka admin: %w", sarama.ErrOutOfBrokers), true},
		{fmt.Errorf("%w: x has 3 partitions", topology.ErrTopicMismatch), false},
		{sarama.ConfigurationError("bad"), false},
		{fmt.Errorf("create: %w", sarama.ErrTopicAuthorizationFailed), false},
		{fmt.Errorf("brokers: %w", sarama.ErrSASLAuthenticationFailed), false},
		{fmt.Errorf("init producer id: %w", sarama.ErrTransactionalIDAuthorizationFailed), false},
		{fmt.Errorf("dial: %w", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}), false},
		{fmt.Errorf("dial: %w", x509.HostnameError{Host: "kafka"}), false},
		{fmt.Errorf("dial: %w", tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}), false},
		{nil, false},
	}
	for _, c := range cases {
		if got := Retryable(c.err); got != c.want {
			t.Errorf("Retryable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// TestStateLogsOncePerChange: an outage of many failed tries is one line
// when it starts and one when it ends.
func TestStateLogsOncePerChange(t *testing.T) {
	var buf bytes.Buffer
	s := NewState(slog.New(slog.NewTextHandler(&buf, nil)), nil, "kafka")
	s.Up() // the first connection: nothing to say
	for range 10 {
		s.Down(errors.New("connection refused"))
	}
	if s.Connected() {
		t.Error("connected after Down")
	}
	s.Up()
	s.Up()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "kafka unreachable") || !strings.Contains(lines[1], "kafka reachable again") {
		t.Fatalf("logged %d lines, want one when lost and one when back:\n%s", len(lines), buf.String())
	}
}

func TestBackoff(t *testing.T) {
	var b Backoff
	var got []time.Duration
	for range 7 {
		got = append(got, b.Duration())
	}
	want := []time.Duration{1, 2, 4, 5, 5, 5, 5}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("waits %v, want 1 s doubling to 5 s", got)
		}
	}
	b.Reset()
	if d := b.Duration(); d != time.Second {
		t.Errorf("after Reset: %v", d)
	}
}

func TestBounded(t *testing.T) {
	var b Bounded[int]
	release := make(chan struct{})
	calls := 0
	slow := func() (int, error) { calls++; <-release; return 7, nil }
	if _, err := b.Run(10*time.Millisecond, slow); err == nil {
		t.Fatal("a call that hangs answered")
	}
	close(release)
	if v, err := b.Run(time.Second, slow); err != nil || v != 7 || calls != 1 {
		t.Fatalf("got %d, %v after %d calls; want the pending call's answer, not a second call", v, err, calls)
	}
}
