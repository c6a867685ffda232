package outage

import (
	"fmt"
	"time"
)

// CloseTimeout bounds the I/O of closing a Kafka client, producer or
// consumer, or a database connection, at shutdown.
const CloseTimeout = 10 * time.Second

// CloseWithin calls close and waits at most d for it to return. sarama's
// Close waits for its brokers' answers, which a broker that stopped
// answering holds until the clients' network timeouts (30 s each, per
// broker and request); a shutdown must not wait for that. Past d it
// returns an error naming what (e.g. "kafka client") and leaves close to
// finish on its own: it returns once the timeouts expire, and the
// process, usually on its way out, does not wait for it.
func CloseWithin(d time.Duration, what string, close func() error) error {
	done := make(chan error, 1)
	go func() { done <- close() }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("close %s: %w", what, err)
		}
		return nil
	case <-t.C:
		return fmt.Errorf("close %s: %w within %s", what, ErrNoAnswer, d)
	}
}
