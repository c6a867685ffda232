package topology_test

import (
	"errors"
	"testing"

	"github.com/changes-dev/changes/topology"
)

func TestValidateClient(t *testing.T) {
	tests := []struct {
		name  string
		k     topology.KafkaConfig
		field string // "" for valid
	}{
		{"brokers only", topology.KafkaConfig{Brokers: []string{"kafka:9092"}}, ""},
		{"with a version", topology.KafkaConfig{Brokers: []string{"kafka:9092"}, Version: "3.7.0"}, ""},
		// A reader has no producer settings: their zero values are fine.
		{"no replication factor", topology.KafkaConfig{Brokers: []string{"kafka:9092"}, ReplicationFactor: 0, MaxRecordBytes: 0}, ""},
		{"no brokers", topology.KafkaConfig{}, "kafka.brokers"},
		{"a broker without a port", topology.KafkaConfig{Brokers: []string{"kafka:9092", "kafka"}}, "kafka.brokers[1]"},
		{"a bad version", topology.KafkaConfig{Brokers: []string{"kafka:9092"}, Version: "four"}, "kafka.version"},
		{"a missing CA file", topology.KafkaConfig{Brokers: []string{"kafka:9093"}, TLS: topology.KafkaTLSConfig{CAFile: "/nonexistent/ca.pem"}}, "kafka.tls.ca_file"},
		{"SASL without a password", topology.KafkaConfig{Brokers: []string{"kafka:9093"}, SASL: topology.KafkaSASLConfig{Mechanism: "scram-sha-512", Username: "reader"}}, "kafka.sasl.password_file"},
		{"SASL with a password in code", topology.KafkaConfig{Brokers: []string{"kafka:9093"}, SASL: topology.KafkaSASLConfig{Mechanism: "PLAIN", Username: "reader", Password: "secret"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.k.ValidateClient()
			var fe *topology.FieldError
			switch {
			case tt.field == "" && err != nil:
				t.Errorf("ValidateClient: %v, want nil", err)
			case tt.field != "" && (!errors.As(err, &fe) || fe.Field != tt.field):
				t.Errorf("ValidateClient: %v, want an error of field %s", err, tt.field)
			}
		})
	}
}
