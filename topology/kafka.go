package topology

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
)

// SaramaConfig returns the client settings every part of the platform uses.
// goka's and sarama's defaults are unsafe here (acks=1, no idempotence, new
// groups skipping the existing history, a 100 ms flush per hop), so this sets:
//
//   - Version: k.Version, a ceiling; sarama negotiates request versions per broker.
//
//   - Producer: acks=all, idempotent, one request in flight (no reordering on
//     retry), retries with backoff, no compression, flushing as soon as the
//     previous request is answered unless k.Linger is set.
//
//   - Consumer: read_committed (the capture writes the history in Kafka
//     transactions: records of an aborted one are never seen); a new group
//     starts at the oldest offset; a committed offset that is out of range is
//     an error, never a silent reset; errors are returned.
//
//   - Net: TLS and SASL as k.TLS and k.SASL say; the files they name (CA,
//     client certificate, password, token) are read by each call, so a
//     renewed one is used by the next client made. Their errors name the
//     config field.
//
// Each call returns a new config, which the caller may change further.
func SaramaConfig(k KafkaConfig) (*sarama.Config, error) {
	c := sarama.NewConfig()
	c.Version = k.SaramaVersion()
	c.ClientID = k.ClientID

	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Idempotent = true
	c.Net.MaxOpenRequests = 1
	c.Producer.Retry.Max = 10
	c.Producer.Retry.Backoff = 100 * time.Millisecond
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	c.Producer.Compression = sarama.CompressionNone
	c.Producer.MaxMessageBytes = k.MaxRecordBytes
	c.Producer.Flush.Frequency = k.Linger
	c.Producer.Flush.Bytes = 0
	c.Producer.Flush.Messages = 0
	c.Producer.Flush.MaxMessages = 0
	c.Producer.Partitioner = sarama.NewHashPartitioner

	c.Consumer.Return.Errors = true
	c.Consumer.IsolationLevel = sarama.ReadCommitted
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	// A committed offset that retention has overtaken means changes were
	// skipped: fail loudly instead of silently restarting at the oldest.
	c.Consumer.Group.ResetInvalidOffsets = false
	c.Consumer.MaxProcessingTime = time.Second
	c.Consumer.MaxWaitTime = 100 * time.Millisecond
	if err := k.applySecurity(c); err != nil {
		return nil, err
	}
	return c, nil
}

// TransactionalConfig returns SaramaConfig with the producer writing in Kafka
// transactions under transactionalID. A new producer with the same id fences
// every older one (a zombie can no longer commit) and aborts the transaction
// it left open. Only records whose transaction committed are visible to
// read_committed readers, so a write that fails makes the whole transaction
// invisible: nothing written after it can be seen without it.
func TransactionalConfig(k KafkaConfig, transactionalID string) (*sarama.Config, error) {
	c, err := SaramaConfig(k)
	if err != nil {
		return nil, err
	}
	c.Producer.Transaction.ID = transactionalID
	// Commits flush the producer themselves; successes are not needed.
	c.Producer.Return.Successes = false
	c.Producer.Transaction.Timeout = time.Minute
	// A new transaction's AddPartitionsToTxn meets CONCURRENT_TRANSACTIONS
	// until the coordinator has written the previous one's markers, about
	// half a millisecond after the commit returns on an idle broker and tens
	// of milliseconds on a busy one: a fixed 100 ms backoff, or one that
	// doubles, would put more than that under every transaction's latency.
	// 1 ms for 200 tries, then doubling to 1 s (a coordinator moving to
	// another broker), about 40 s in all.
	c.Producer.Transaction.Retry.Max = 250
	c.Producer.Transaction.Retry.BackoffFunc = func(retries, _ int) time.Duration {
		if retries < 200 {
			return time.Millisecond // the previous markers: tens of ms under load
		}
		return min(time.Millisecond<<min(retries-200, 10), time.Second)
	}
	return c, nil
}

// TopicSpec is the shape a topic must have.
type TopicSpec struct {
	Name       string
	Partitions int32
	// Configs are topic-level settings such as cleanup.policy.
	Configs map[string]string
}

// Topics lists every topic the deployment needs, in creation order. Tables
// (snapshots) are compacted; the history keeps HistoryRetention with exactly
// one partition, so every consumer sees the same order.
func (t *Topology) Topics() []TopicSpec {
	ms := func(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }
	// Every hop carries the same record (plus headers): each topic takes what
	// the history takes, or a large change would stop the router.
	maxBytes := strconv.Itoa(t.cfg.Kafka.MaxRecordBytes + 1024)
	specs := []TopicSpec{
		{Name: t.History(), Partitions: 1, Configs: map[string]string{
			"cleanup.policy":         "delete",
			"retention.ms":           ms(t.cfg.Topics.HistoryRetention),
			"retention.bytes":        "-1",
			"message.timestamp.type": "CreateTime",
			"max.message.bytes":      strconv.Itoa(t.cfg.Kafka.MaxRecordBytes + 1024),
		}},
		{Name: t.CaptureState(), Partitions: 1, Configs: map[string]string{
			"cleanup.policy": "compact",
		}},
		{Name: t.DeadLetter(), Partitions: 1, Configs: map[string]string{
			"cleanup.policy":    "delete",
			"retention.ms":      ms(t.cfg.Topics.HistoryRetention),
			"max.message.bytes": maxBytes,
		}},
	}
	for _, e := range t.cfg.Entities {
		specs = append(specs,
			TopicSpec{Name: t.Events(e.Type), Partitions: int32(e.Partitions), Configs: map[string]string{
				"cleanup.policy":    "delete",
				"retention.ms":      ms(t.cfg.Topics.EventsRetention),
				"max.message.bytes": maxBytes,
			}},
			TopicSpec{Name: t.Snapshot(e.Type), Partitions: int32(e.Partitions), Configs: map[string]string{
				"cleanup.policy":    "compact",
				"max.message.bytes": maxBytes,
			}},
		)
	}
	if n := t.cfg.Kafka.MinInsyncReplicas; n > 0 {
		for _, spec := range specs {
			spec.Configs["min.insync.replicas"] = strconv.Itoa(n)
		}
	}
	return specs
}

// ErrTopicMismatch is returned by EnsureTopics when a topic exists with a
// shape that would break the platform's guarantees (a history with several
// partitions, a table that is not compacted, a partition count that differs
// from the config). It is never repaired silently.
var ErrTopicMismatch = errors.New("topic exists with another shape")

// EnsureTopics creates the missing topics of specs and checks the existing
// ones: the partition count must match and cleanup.policy must be the one the
// spec asks for. Replication uses replicationFactor (-1: broker default).
func EnsureTopics(admin sarama.ClusterAdmin, specs []TopicSpec, replicationFactor int) error {
	existing, err := admin.ListTopics()
	if err != nil {
		return fmt.Errorf("list topics: %w", err)
	}
	for _, s := range specs {
		if d, ok := existing[s.Name]; ok {
			if err := checkTopic(admin, s, d); err != nil {
				return err
			}
			continue
		}
		entries := make(map[string]*string, len(s.Configs))
		for k, v := range s.Configs {
			entries[k] = &v
		}
		err := admin.CreateTopic(s.Name, &sarama.TopicDetail{
			NumPartitions:     s.Partitions,
			ReplicationFactor: int16(replicationFactor),
			ConfigEntries:     entries,
		}, false)
		switch {
		case errors.Is(err, sarama.ErrTopicAuthorizationFailed) || errors.Is(err, sarama.ErrClusterAuthorizationFailed):
			return fmt.Errorf("create topic %s: this principal may not create topics (or see this one): run `changes topics` as an administrator first, or grant Describe on it: %w", s.Name, err)
		case err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists):
			return fmt.Errorf("create topic %s: %w", s.Name, err)
		}
	}
	return nil
}

func checkTopic(admin sarama.ClusterAdmin, s TopicSpec, d sarama.TopicDetail) error {
	if d.NumPartitions != s.Partitions {
		return fmt.Errorf("%w: %s has %d partitions, the config asks for %d (partitions cannot be changed in place: recreate the topic or fix the config)",
			ErrTopicMismatch, s.Name, d.NumPartitions, s.Partitions)
	}
	want, ok := s.Configs["cleanup.policy"]
	if !ok {
		return nil
	}
	entries, err := admin.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: s.Name, ConfigNames: []string{"cleanup.policy"}})
	if err != nil {
		return fmt.Errorf("describe topic %s: %w", s.Name, err)
	}
	for _, e := range entries {
		if e.Name == "cleanup.policy" && e.Value != want {
			return fmt.Errorf("%w: %s has cleanup.policy=%s, it must be %s", ErrTopicMismatch, s.Name, e.Value, want)
		}
	}
	return nil
}

// NewClient is sarama.NewClient on k.Brokers with SaramaConfig(k); its
// errors say which brokers, TLS and SASL mechanism it tried (see
// ExplainKafkaError).
func NewClient(k KafkaConfig) (sarama.Client, error) {
	c, err := SaramaConfig(k)
	if err != nil {
		return nil, err
	}
	client, err := sarama.NewClient(k.Brokers, c)
	if err != nil {
		return nil, ExplainKafkaError(k, err)
	}
	return client, nil
}

// NewClusterAdmin is sarama.NewClusterAdmin on k.Brokers with
// SaramaConfig(k), its errors explained like NewClient's.
func NewClusterAdmin(k KafkaConfig) (sarama.ClusterAdmin, error) {
	c, err := SaramaConfig(k)
	if err != nil {
		return nil, err
	}
	admin, err := sarama.NewClusterAdmin(k.Brokers, c)
	if err != nil {
		return nil, ExplainKafkaError(k, err)
	}
	return admin, nil
}

// ExplainKafkaError adds to a failed connection's error what the platform
// tried: the brokers, TLS or not, and the SASL mechanism and user. sarama's
// own message ("client has run out of available brokers to talk to") names
// neither. A refused authentication or a certificate that does not verify
// stays recognisable with errors.Is and errors.As.
func ExplainKafkaError(k KafkaConfig, err error) error {
	if err == nil {
		return nil
	}
	how := "plaintext"
	if k.TLS.on() {
		how = "TLS"
	}
	if k.SASL.Mechanism != "" {
		who := k.SASL.Username
		if k.SASL.Mechanism == SASLOAuthBearer {
			who = "a token"
		}
		how += fmt.Sprintf(", SASL %s as %q", k.SASL.Mechanism, who)
	}
	var hint string
	switch {
	case errors.Is(err, sarama.ErrSASLAuthenticationFailed):
		hint = ": the brokers refused the credentials (check kafka.sasl.username and the password or token)"
	case errors.Is(err, sarama.ErrUnsupportedSASLMechanism):
		hint = fmt.Sprintf(": the brokers do not enable SASL mechanism %s (sasl.enabled.mechanisms)", k.SASL.Mechanism)
	case isCertificateError(err):
		hint = ": the broker's certificate does not verify (check kafka.tls.ca_file and kafka.tls.server_name)"
	case isTLSRecordHeaderError(err):
		hint = ": the broker does not speak TLS on this port (remove kafka.tls, or use its TLS listener)"
	case !k.TLS.on() && errors.Is(err, io.ErrUnexpectedEOF):
		hint = ": the broker closed the connection at once, as a TLS listener does with a plaintext client (set kafka.tls if its listener is SSL or SASL_SSL)"
	}
	return fmt.Errorf("kafka brokers %s (%s)%s: %w", strings.Join(k.Brokers, ","), how, hint, err)
}

func isCertificateError(err error) bool {
	var unknownAuthority x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	return errors.As(err, &unknownAuthority) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &verify)
}

func isTLSRecordHeaderError(err error) bool {
	var rh tls.RecordHeaderError
	return errors.As(err, &rh)
}
