package outage

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCloseWithin(t *testing.T) {
	if err := CloseWithin(time.Second, "client", func() error { return nil }); err != nil {
		t.Errorf("a quick close: %v", err)
	}
	boom := errors.New("boom")
	if err := CloseWithin(time.Second, "client", func() error { return boom }); !errors.Is(err, boom) || !strings.Contains(err.Error(), "close client") {
		t.Errorf("a failed close: %v, want boom, naming the client", err)
	}
	release := make(chan struct{})
	defer close(release)
	start := time.Now()
	err := CloseWithin(50*time.Millisecond, "kafka client", func() error { <-release; return nil })
	if !errors.Is(err, ErrNoAnswer) || !strings.Contains(err.Error(), "kafka client") {
		t.Errorf("a close that hangs: %v, want ErrNoAnswer naming the client", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("CloseWithin waited %s for a close that hangs, past its 50ms", took)
	}
}
