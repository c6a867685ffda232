// Package outage helps the long-running parts of the platform ride out
// outages of Kafka and PostgreSQL: a capped backoff, the classification of
// errors that retrying can fix, a state that logs one line per change
// between connected and disconnected and keeps a changes_*_connected gauge,
// and a Kafka probe with short timeouts.
package outage

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/topology"
)

// Backoff defaults of every retry loop: 1 s doubling to 5 s, back to 1 s
// after a run of StableAfter or more.
const (
	First       = time.Second
	Max         = 5 * time.Second
	StableAfter = time.Minute
)

// Backoff is a wait that doubles from First to Max. It also satisfies
// goka.Backoff. Not safe for concurrent use.
type Backoff struct {
	next time.Duration
}

// Duration returns the wait before the next try and doubles the one after.
func (b *Backoff) Duration() time.Duration {
	if b.next == 0 {
		b.next = First
	}
	d := b.next
	b.next = min(2*b.next, Max)
	return d
}

// Reset makes the next wait First again.
func (b *Backoff) Reset() { b.next = 0 }

// Retryable reports whether err can go away by itself: true for outages
// (refused or lost connections, timeouts, brokers without a leader, failed
// writes), false for what needs someone to act: a topic of the wrong shape
// (topology.ErrTopicMismatch), a client configuration sarama refuses,
// authentication or authorization refused, an unknown database.
func Retryable(err error) bool {
	if err == nil || errors.Is(err, topology.ErrTopicMismatch) {
		return false
	}
	var cfgErr sarama.ConfigurationError
	if errors.As(err, &cfgErr) {
		return false
	}
	// A certificate that does not verify, or TLS spoken to a plaintext
	// port: the configuration or the certificates need someone.
	var unknownAuthority x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	var recordHeader tls.RecordHeaderError
	if errors.As(err, &unknownAuthority) || errors.As(err, &hostname) || errors.As(err, &invalid) ||
		errors.As(err, &verify) || errors.As(err, &recordHeader) {
		return false
	}
	for _, k := range []sarama.KError{sarama.ErrTopicAuthorizationFailed, sarama.ErrGroupAuthorizationFailed,
		sarama.ErrClusterAuthorizationFailed, sarama.ErrSASLAuthenticationFailed, sarama.ErrInvalidConfig,
		sarama.ErrTransactionalIDAuthorizationFailed, sarama.ErrUnsupportedSASLMechanism} {
		if errors.Is(err, k) {
			return false
		}
	}
	// PostgreSQL's errors (pgconn.PgError) by their SQLSTATE, without
	// importing pgx: a service embedding a view does not need it.
	var pgErr interface{ SQLState() string }
	if errors.As(err, &pgErr) && len(pgErr.SQLState()) >= 2 {
		switch pgErr.SQLState()[:2] {
		case "28", "3D", "42": // authorization, unknown database, syntax or access rule
			return false
		}
	}
	return true
}

// State is whether a component reaches what it depends on. It logs one line
// when the connection is lost and one when it is back (never one per try),
// and sets its gauge to 1 or 0. A new State is disconnected until the first
// Up, without logging. Safe for concurrent use.
type State struct {
	log   *slog.Logger
	gauge prometheus.Gauge
	what  string

	mu        sync.Mutex
	up        bool
	everUp    bool
	since     time.Time // when the connection was lost
	lastError string
}

// NewState returns the state of the connection of log's component to what
// (such as "kafka"); gauge may be nil.
func NewState(log *slog.Logger, gauge prometheus.Gauge, what string) *State {
	if gauge != nil {
		gauge.Set(0)
	}
	return &State{log: log, gauge: gauge, what: what, since: time.Now()}
}

// Up records that the component reaches its dependency.
func (s *State) Up() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.up {
		return
	}
	if s.everUp || s.lastError != "" {
		s.log.Info(s.what+" reachable again", "down_seconds", roundSeconds(time.Since(s.since)))
	}
	s.up, s.everUp, s.lastError = true, true, ""
	if s.gauge != nil {
		s.gauge.Set(1)
	}
}

// Down records that the component cannot reach its dependency because of
// err; it logs only when the connection was up, or on the first failure.
func (s *State) Down(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	msg := "<nil>"
	if err != nil {
		msg = err.Error()
	}
	if s.up || s.lastError == "" {
		s.log.Warn(s.what+" unreachable; retrying until it is back", "err", msg)
		s.since = time.Now()
	} else {
		s.log.Debug(s.what+" still unreachable", "err", msg)
	}
	s.up, s.lastError = false, msg
	if s.gauge != nil {
		s.gauge.Set(0)
	}
}

// Connected reports whether the last report was Up.
func (s *State) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.up
}

func roundSeconds(d time.Duration) float64 { return d.Round(100 * time.Millisecond).Seconds() }

// Retry calls try until it returns nil (then Retry reports Up and returns
// nil), an error that is not Retryable (returned), or ctx is done (ctx's
// error), waiting with a Backoff between tries and reporting each failure to
// s.
func Retry(ctx context.Context, s *State, try func(context.Context) error) error {
	var b Backoff
	for {
		err := try(ctx)
		if err == nil {
			s.Up()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !Retryable(err) {
			return err
		}
		s.Down(err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(b.Duration()):
		}
	}
}

// ProbeTimeout bounds each network step of a Probe, so a broker that
// stopped answering (paused, or cut off) is noticed within seconds rather
// than after sarama's 30 s defaults.
const ProbeTimeout = 5 * time.Second

// ProbeConfig is topology.SaramaConfig(k) with ProbeTimeout on dial, read
// and write, and one metadata retry: for clients that check reachability.
func ProbeConfig(k topology.KafkaConfig) (*sarama.Config, error) {
	c, err := topology.SaramaConfig(k)
	if err != nil {
		return nil, err
	}
	c.Net.DialTimeout = ProbeTimeout
	c.Net.ReadTimeout = ProbeTimeout
	c.Net.WriteTimeout = ProbeTimeout
	c.Metadata.Retry.Max = 1
	c.Metadata.Retry.Backoff = 250 * time.Millisecond
	return c, nil
}

// Probe checks that Kafka answers for a topic: its metadata and the end
// offset of its partition 0 (which needs the partition's leader). Not safe
// for concurrent use.
type Probe struct {
	k      topology.KafkaConfig
	topic  string
	client sarama.Client
	within Bounded[struct{}]
}

// NewProbe returns a probe of topic; it connects on the first Check.
func NewProbe(k topology.KafkaConfig, topic string) *Probe { return &Probe{k: k, topic: topic} }

// Check asks Kafka once; nil means it answered within ProbeTimeout (sarama
// tries every known broker and retries, so one question can take many times
// its network timeouts).
func (p *Probe) Check() error {
	_, err := p.within.Run(ProbeTimeout, func() (struct{}, error) { return struct{}{}, p.check() })
	return err
}

func (p *Probe) check() error {
	if p.client == nil {
		cfg, err := ProbeConfig(p.k)
		if err != nil {
			return err
		}
		c, err := sarama.NewClient(p.k.Brokers, cfg)
		if err != nil {
			return topology.ExplainKafkaError(p.k, err)
		}
		p.client = c
	}
	if err := p.client.RefreshMetadata(p.topic); err != nil {
		return fmt.Errorf("kafka metadata of %s: %w", p.topic, err)
	}
	if _, err := p.client.GetOffset(p.topic, 0, sarama.OffsetNewest); err != nil {
		return fmt.Errorf("kafka end offset of %s: %w", p.topic, err)
	}
	return nil
}

// Close closes the probe's client.
func (p *Probe) Close() {
	p.within.Wait()
	if p.client != nil {
		p.client.Close()
		p.client = nil
	}
}

// ErrNoAnswer is returned by Bounded.Run when the call did not return in
// time: whatever it asked (a paused or cut-off broker) did not answer.
var ErrNoAnswer = errors.New("no answer")

// Bounded runs a call in the background and waits for it at most a given
// time; a call still running when the next Run comes is waited for again
// instead of starting another. Run is for one goroutine at a time.
type Bounded[T any] struct {
	pending chan result[T]
}

type result[T any] struct {
	v   T
	err error
}

// Run returns fn's result, or an error if it takes longer than d.
func (b *Bounded[T]) Run(d time.Duration, fn func() (T, error)) (T, error) {
	if b.pending == nil {
		ch := make(chan result[T], 1)
		b.pending = ch
		go func() {
			v, err := fn()
			ch <- result[T]{v, err}
		}()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-b.pending:
		b.pending = nil
		return r.v, r.err
	case <-t.C:
		var zero T
		return zero, fmt.Errorf("%w within %s", ErrNoAnswer, d)
	}
}

// Wait waits for a call still running.
func (b *Bounded[T]) Wait() {
	if b.pending != nil {
		<-b.pending
		b.pending = nil
	}
}
