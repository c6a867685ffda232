package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5/pgconn"
)

func TestRetryable(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"kafka write failed", fmt.Errorf("kafka did not take the change: %w", sarama.ErrOutOfBrokers), true},
		{"postgres gone", fmt.Errorf("receive from postgres: %w", io.ErrUnexpectedEOF), true},
		{"not enough replicas", fmt.Errorf("commit: %w", sarama.ErrNotEnoughReplicas), true},
		{"timeout", context.DeadlineExceeded, true},
		{"slot lost", fmt.Errorf("%w: wal removed", ErrSlotLost), false},
		{"slot missing", fmt.Errorf("%w: dropped", ErrSlotMissing), false},
		{"setup", fmt.Errorf("%w: wal_level", ErrSetup), false},
		{"too large", fmt.Errorf("%w: 2 MB", ErrRecordTooLarge), false},
		{"broker refuses the size", fmt.Errorf("produce: %w", sarama.ErrMessageSizeTooLarge), false},
		{"transactional id not allowed", sarama.ErrTransactionalIDAuthorizationFailed, false},
		{"password", &pgconn.PgError{Code: "28P01"}, false},
		{"server shutting down", &pgconn.PgError{Code: "57P01"}, true},
		{"config", sarama.ConfigurationError("bad"), false},
	} {
		if got := Retryable(c.err); got != c.want {
			t.Errorf("%s: Retryable(%v) = %v, want %v", c.name, c.err, got, c.want)
		}
	}
	if Retryable(errors.New("x")) != true {
		t.Error("an unknown error is an outage until proven otherwise")
	}
}
