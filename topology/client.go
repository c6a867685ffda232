package topology

import (
	"fmt"
	"strings"

	"github.com/IBM/sarama"
)

// ValidateClient applies the client defaults to what k leaves empty
// (Version, ClientID) and checks what a Kafka client needs of k, and nothing
// a producer or the topics need: the brokers, the version and kafka.tls and
// kafka.sasl, loading the files they name. A library that only reads, such as a view, validates its
// KafkaConfig with it; Config.Validate checks these and the rest. It
// normalises SASL.Mechanism to upper case. Errors are *FieldError, named
// by the YAML path under kafka.
func (k *KafkaConfig) ValidateClient() error {
	setDefault(&k.Version, DefaultKafkaVersion)
	setDefault(&k.ClientID, DefaultClientID)
	if err := k.validateAddress(); err != nil {
		return err
	}
	return k.validateSecurity()
}

// validateAddress checks kafka.brokers and kafka.version.
func (k *KafkaConfig) validateAddress() error {
	if len(k.Brokers) == 0 {
		return fieldErr("kafka.brokers", "is required (or set CHANGES_KAFKA_BROKERS)")
	}
	for i, b := range k.Brokers {
		if _, port, ok := strings.Cut(b, ":"); !ok || port == "" {
			return fieldErr(fmt.Sprintf("kafka.brokers[%d]", i), "must be host:port, got %q", b)
		}
	}
	if k.Version == "" {
		return nil // SaramaVersion: DefaultKafkaVersion
	}
	if _, err := sarama.ParseKafkaVersion(k.Version); err != nil {
		return fieldErr("kafka.version", "%q is not a Kafka version like 4.0.0", k.Version)
	}
	return nil
}
