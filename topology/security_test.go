package topology_test

import (
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/internal/testcert"
	"github.com/changes-dev/changes/topology"
)

const securityBase = "postgres: {url: \"postgres://db/x?sslmode=verify-full\"}\nentities: [{type: a, table: a}]\n"

func TestKafkaSecuritySettings(t *testing.T) {
	dir := t.TempDir()
	cert, key, _ := testcert.SelfSigned(t, dir)
	pwFile := filepath.Join(dir, "password")
	if err := os.WriteFile(pwFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("tok-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	unsetEnv(t)
	yaml := "kafka:\n  brokers: [\"k:9093\"]\n  tls: {ca_file: " + cert + ", cert_file: " + cert + ", key_file: " + key + ", server_name: kafka.internal}\n" +
		"  sasl: {mechanism: scram-sha-512, username: capture, password_file: " + pwFile + "}\n" + securityBase
	cfg, err := topology.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	c, err := topology.SaramaConfig(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Net.TLS.Enable || c.Net.TLS.Config == nil || c.Net.TLS.Config.ServerName != "kafka.internal" ||
		c.Net.TLS.Config.InsecureSkipVerify || len(c.Net.TLS.Config.Certificates) != 1 || c.Net.TLS.Config.RootCAs == nil ||
		c.Net.TLS.Config.MinVersion != tls.VersionTLS12 {
		t.Errorf("TLS = %v %+v; want enabled, verifying with the CA, the client certificate and the server name", c.Net.TLS.Enable, c.Net.TLS.Config)
	}
	if !c.Net.SASL.Enable || c.Net.SASL.Mechanism != sarama.SASLTypeSCRAMSHA512 || c.Net.SASL.User != "capture" ||
		c.Net.SASL.Password != "s3cret" || c.Net.SASL.SCRAMClientGeneratorFunc == nil {
		t.Errorf("SASL = %+v; want SCRAM-SHA-512 as capture with the file's password", c.Net.SASL)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("sarama rejects the config: %v", err)
	}
	if w := cfg.SecurityWarnings(); len(w) != 0 {
		t.Errorf("SecurityWarnings = %q; want none", w)
	}

	// The environment gives the secrets and wins over the file.
	unsetEnv(t)
	t.Setenv("CHANGES_KAFKA_SASL_MECHANISM", "OAUTHBEARER")
	t.Setenv("CHANGES_KAFKA_SASL_TOKEN_FILE", tokenFile)
	t.Setenv("CHANGES_KAFKA_TLS_ENABLED", "true")
	cfg, err = topology.Parse([]byte("kafka: {brokers: [\"k:9093\"]}\n" + securityBase))
	if err != nil {
		t.Fatal(err)
	}
	c, err = topology.SaramaConfig(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Net.TLS.Enable || c.Net.TLS.Config.RootCAs != nil || c.Net.SASL.Mechanism != sarama.SASLTypeOAuth || c.Net.SASL.TokenProvider == nil {
		t.Fatalf("TLS %v (roots %v), SASL %+v; want TLS with the system roots and OAUTHBEARER", c.Net.TLS.Enable, c.Net.TLS.Config.RootCAs, c.Net.SASL)
	}
	// The token file is read at every authentication: a renewed token is used.
	if err := os.WriteFile(tokenFile, []byte("tok-2"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := c.Net.SASL.TokenProvider.Token(); err != nil || tok.Token != "tok-2" {
		t.Errorf("Token() = %+v, %v; want the renewed tok-2", tok, err)
	}
}

func TestKafkaSecurityInvalid(t *testing.T) {
	dir := t.TempDir()
	cert, key, _ := testcert.SelfSigned(t, dir)
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name, kafka string
		env         map[string]string
		field       string
	}{
		{"password in the file", "sasl: {mechanism: PLAIN, username: u, password: p}", nil, "kafka.sasl.password"},
		{"token in the file", "sasl: {mechanism: OAUTHBEARER, token: t}", nil, "kafka.sasl.token"},
		{"unknown mechanism", "sasl: {mechanism: GSSAPI, username: u}", nil, "kafka.sasl.mechanism"},
		{"no username", "sasl: {mechanism: SCRAM-SHA-256}", map[string]string{"CHANGES_KAFKA_SASL_PASSWORD": "p"}, "kafka.sasl.username"},
		{"no password", "sasl: {mechanism: PLAIN, username: u}", nil, "kafka.sasl.password_file"},
		{"two passwords", "sasl: {mechanism: PLAIN, username: u, password_file: " + notPEM + "}", map[string]string{"CHANGES_KAFKA_SASL_PASSWORD": "p"}, "kafka.sasl.password_file"},
		{"password file missing", "sasl: {mechanism: PLAIN, username: u, password_file: " + missing + "}", nil, "kafka.sasl.password_file"},
		{"no token", "sasl: {mechanism: OAUTHBEARER}", nil, "kafka.sasl.token_file"},
		{"username without mechanism", "sasl: {username: u}", nil, "kafka.sasl.username"},
		{"CA not PEM", "tls: {ca_file: " + notPEM + "}", nil, "kafka.tls.ca_file"},
		{"CA missing", "tls: {ca_file: " + missing + "}", nil, "kafka.tls.ca_file"},
		{"cert without key", "tls: {cert_file: " + cert + "}", nil, "kafka.tls.key_file"},
		{"key without cert", "tls: {key_file: " + key + "}", nil, "kafka.tls.cert_file"},
		{"cert and key do not match", "tls: {cert_file: " + cert + ", key_file: " + notPEM + "}", nil, "kafka.tls.cert_file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unsetEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			_, err := topology.Parse([]byte("kafka:\n  brokers: [\"k:9093\"]\n  " + tt.kafka + "\n" + securityBase))
			var fe *topology.FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Errorf("Parse error = %v; want a FieldError of %s", err, tt.field)
			}
		})
	}
	unsetEnv(t)
	t.Setenv("CHANGES_KAFKA_TLS_ENABLED", "maybe")
	if _, err := topology.Parse([]byte("kafka: {brokers: [\"k:9093\"]}\n" + securityBase)); err == nil || !strings.Contains(err.Error(), "CHANGES_KAFKA_TLS_ENABLED") {
		t.Errorf("Parse with CHANGES_KAFKA_TLS_ENABLED=maybe: %v; want an error naming it", err)
	}
}

func TestSecurityWarnings(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string // substrings, one per warning
	}{
		{"verified", "kafka: {brokers: [\"k:1\"], tls: {enabled: true}, sasl: {mechanism: PLAIN, username: u, password_file: PW}}\npostgres: {url: \"postgres://db/x?sslmode=verify-full&sslrootcert=ca.pem\"}\n", nil},
		{"unix socket", "kafka: {brokers: [\"k:1\"]}\npostgres: {url: \"host=/var/run/postgresql dbname=x\"}\n", nil},
		{"insecure kafka", "kafka: {brokers: [\"k:1\"], tls: {insecure_skip_verify: true}}\npostgres: {url: \"postgres://db/x?sslmode=verify-full\"}\n", []string{"insecure_skip_verify"}},
		{"password in clear", "kafka: {brokers: [\"k:1\"], sasl: {mechanism: PLAIN, username: u, password_file: PW}}\npostgres: {url: \"postgres://db/x?sslmode=verify-full\"}\n", []string{"in clear"}},
		{"postgres default sslmode", "kafka: {brokers: [\"k:1\"]}\npostgres: {url: \"postgres://db.internal/x\"}\n", []string{"sslmode=prefer (the default): the server db.internal is not verified"}},
		{"postgres require", "kafka: {brokers: [\"k:1\"]}\npostgres: {url: \"host=db dbname=x sslmode=require\"}\n", []string{"sslmode=require"}},
		{"postgres verify-ca", "kafka: {brokers: [\"k:1\"]}\npostgres: {url: \"postgres://db/x?sslmode=verify-ca\"}\n", []string{"verify-ca"}},
	}
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("p"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unsetEnv(t)
			cfg, err := topology.Parse([]byte(strings.ReplaceAll(tt.yaml, "PW", pw) + "entities: [{type: a, table: a}]\n"))
			if err != nil {
				t.Fatal(err)
			}
			got := cfg.SecurityWarnings()
			if len(got) != len(tt.want) {
				t.Fatalf("SecurityWarnings = %q; want %d warnings", got, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("warning %q does not say %q", got[i], w)
				}
			}
		})
	}
}

func TestExplainKafkaError(t *testing.T) {
	k := topology.KafkaConfig{Brokers: []string{"b1:9093", "b2:9093"}, TLS: topology.KafkaTLSConfig{Enabled: true},
		SASL: topology.KafkaSASLConfig{Mechanism: topology.SASLScramSHA512, Username: "view"}}
	err := topology.ExplainKafkaError(k, sarama.ErrSASLAuthenticationFailed)
	for _, want := range []string{"b1:9093,b2:9093", "TLS", "SCRAM-SHA-512", `"view"`, "refused the credentials"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}
	if !errors.Is(err, sarama.ErrSASLAuthenticationFailed) {
		t.Errorf("%v does not wrap sarama.ErrSASLAuthenticationFailed", err)
	}
	if topology.ExplainKafkaError(k, nil) != nil {
		t.Error("ExplainKafkaError(nil) is not nil")
	}
}
