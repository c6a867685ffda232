package topology

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/IBM/sarama"
	"github.com/xdg-go/scram"
)

// KafkaTLSConfig is how every client of the platform talks TLS to Kafka.
// The broker's certificate is verified by default, against CAFile or the
// system's roots.
type KafkaTLSConfig struct {
	// Enabled turns TLS on; setting any other field of kafka.tls turns it
	// on too. Environment: CHANGES_KAFKA_TLS_ENABLED (true or false).
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM file of the certificate authorities that sign the
	// brokers' certificates. Default: the system's roots.
	// Environment: CHANGES_KAFKA_TLS_CA_FILE.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are the client's PEM certificate and key, for
	// brokers that authenticate clients by certificate (ssl.client.auth).
	// Both or neither. Environment: CHANGES_KAFKA_TLS_CERT_FILE,
	// CHANGES_KAFKA_TLS_KEY_FILE.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name the brokers' certificates must carry, when it
	// differs from the host of the broker address.
	// Environment: CHANGES_KAFKA_TLS_SERVER_NAME.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any broker certificate: anyone between
	// the platform and Kafka can read and forge every record. For tests
	// only; every command warns at start while it is set.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// on reports whether TLS is enabled, explicitly or by any of its settings.
func (t KafkaTLSConfig) on() bool {
	return t.Enabled || t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "" || t.InsecureSkipVerify
}

// SASL mechanisms the platform's Kafka clients support.
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
	SASLOAuthBearer = "OAUTHBEARER"
)

// KafkaSASLConfig is how every client of the platform authenticates to
// Kafka. Secrets never live in the config file: the password and the token
// come from the environment or from a file of their own (a mounted secret).
type KafkaSASLConfig struct {
	// Mechanism is PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER;
	// empty: no SASL. Environment: CHANGES_KAFKA_SASL_MECHANISM.
	Mechanism string `yaml:"mechanism"`
	// Username for PLAIN and SCRAM. Environment: CHANGES_KAFKA_SASL_USERNAME.
	Username string `yaml:"username"`
	// Password for PLAIN and SCRAM. Never in the config file (Parse refuses
	// it there): set CHANGES_KAFKA_SASL_PASSWORD, or PasswordFile. A
	// service that builds its Config in code may set it directly.
	Password string `yaml:"password"`
	// PasswordFile holds the password (one line; a trailing newline is
	// ignored), read whenever a client is made.
	// Environment: CHANGES_KAFKA_SASL_PASSWORD_FILE.
	PasswordFile string `yaml:"password_file"`
	// Token is the OAUTHBEARER token. Never in the config file: set
	// CHANGES_KAFKA_SASL_TOKEN, or TokenFile.
	Token string `yaml:"token"`
	// TokenFile holds the OAUTHBEARER token; it is read again at every
	// authentication, so a sidecar can renew it in place.
	// Environment: CHANGES_KAFKA_SASL_TOKEN_FILE.
	TokenFile string `yaml:"token_file"`
}

func (k *KafkaConfig) applySecurityEnv(lookup func(string) (string, bool)) error {
	str := func(name string, dst *string) {
		if v, ok := lookup(name); ok && v != "" {
			*dst = v
		}
	}
	if v, ok := lookup("CHANGES_KAFKA_TLS_ENABLED"); ok && v != "" {
		switch strings.ToLower(v) {
		case "true", "1", "yes":
			k.TLS.Enabled = true
		case "false", "0", "no":
			k.TLS.Enabled = false
		default:
			return fmt.Errorf("CHANGES_KAFKA_TLS_ENABLED: %q is not true or false", v)
		}
	}
	str("CHANGES_KAFKA_TLS_CA_FILE", &k.TLS.CAFile)
	str("CHANGES_KAFKA_TLS_CERT_FILE", &k.TLS.CertFile)
	str("CHANGES_KAFKA_TLS_KEY_FILE", &k.TLS.KeyFile)
	str("CHANGES_KAFKA_TLS_SERVER_NAME", &k.TLS.ServerName)
	str("CHANGES_KAFKA_SASL_MECHANISM", &k.SASL.Mechanism)
	str("CHANGES_KAFKA_SASL_USERNAME", &k.SASL.Username)
	str("CHANGES_KAFKA_SASL_PASSWORD", &k.SASL.Password)
	str("CHANGES_KAFKA_SASL_PASSWORD_FILE", &k.SASL.PasswordFile)
	str("CHANGES_KAFKA_SASL_TOKEN", &k.SASL.Token)
	str("CHANGES_KAFKA_SASL_TOKEN_FILE", &k.SASL.TokenFile)
	return nil
}

// refuseFileSecrets is applied to what the config file says, before the
// environment: a password or token written in the file is refused.
func (k *KafkaConfig) refuseFileSecrets() error {
	if k.SASL.Password != "" {
		return fieldErr("kafka.sasl.password", "secrets do not belong in the config file: set CHANGES_KAFKA_SASL_PASSWORD or kafka.sasl.password_file")
	}
	if k.SASL.Token != "" {
		return fieldErr("kafka.sasl.token", "secrets do not belong in the config file: set CHANGES_KAFKA_SASL_TOKEN or kafka.sasl.token_file")
	}
	return nil
}

// validateSecurity checks kafka.tls and kafka.sasl, loading the files they
// name, so that a wrong path or a file that is not PEM is reported at start
// by its field.
func (k *KafkaConfig) validateSecurity() error {
	k.SASL.Mechanism = strings.ToUpper(strings.TrimSpace(k.SASL.Mechanism))
	if _, err := k.tlsConfig(); err != nil {
		return err
	}
	s := k.SASL
	switch s.Mechanism {
	case "":
		for f, v := range map[string]string{"username": s.Username, "password_file": s.PasswordFile, "token_file": s.TokenFile} {
			if v != "" {
				return fieldErr("kafka.sasl."+f, "is set but kafka.sasl.mechanism is not")
			}
		}
		return nil
	case SASLPlain, SASLScramSHA256, SASLScramSHA512:
		if s.Username == "" {
			return fieldErr("kafka.sasl.username", "is required for %s (or set CHANGES_KAFKA_SASL_USERNAME)", s.Mechanism)
		}
		if s.Password != "" && s.PasswordFile != "" {
			return fieldErr("kafka.sasl.password_file", "is set, and so is the password (CHANGES_KAFKA_SASL_PASSWORD): keep one")
		}
		if s.Password == "" && s.PasswordFile == "" {
			return fieldErr("kafka.sasl.password_file", "is required for %s unless CHANGES_KAFKA_SASL_PASSWORD is set", s.Mechanism)
		}
		if _, err := k.password(); err != nil {
			return err
		}
	case SASLOAuthBearer:
		if s.Token != "" && s.TokenFile != "" {
			return fieldErr("kafka.sasl.token_file", "is set, and so is the token (CHANGES_KAFKA_SASL_TOKEN): keep one")
		}
		if s.Token == "" && s.TokenFile == "" {
			return fieldErr("kafka.sasl.token_file", "is required for OAUTHBEARER unless CHANGES_KAFKA_SASL_TOKEN is set")
		}
		if _, err := k.token(); err != nil {
			return err
		}
	default:
		return fieldErr("kafka.sasl.mechanism", "must be PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER, got %q", s.Mechanism)
	}
	return nil
}

// tlsConfig is the TLS client configuration of kafka.tls, nil when TLS is
// off. It reads the files every time: a renewed certificate is used by the
// next client made.
func (k KafkaConfig) tlsConfig() (*tls.Config, error) {
	t := k.TLS
	if !t.on() {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fieldErr("kafka.tls.ca_file", "%v", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fieldErr("kafka.tls.ca_file", "%s holds no PEM certificate", t.CAFile)
		}
	}
	switch {
	case t.CertFile != "" && t.KeyFile != "":
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fieldErr("kafka.tls.cert_file", "with kafka.tls.key_file: %v", err)
		}
		c.Certificates = []tls.Certificate{cert}
	case t.CertFile != "":
		return nil, fieldErr("kafka.tls.key_file", "is required with kafka.tls.cert_file")
	case t.KeyFile != "":
		return nil, fieldErr("kafka.tls.cert_file", "is required with kafka.tls.key_file")
	}
	return c, nil
}

func (k KafkaConfig) password() (string, error) {
	if k.SASL.PasswordFile == "" {
		return k.SASL.Password, nil
	}
	b, err := os.ReadFile(k.SASL.PasswordFile)
	if err != nil {
		return "", fieldErr("kafka.sasl.password_file", "%v", err)
	}
	p := strings.TrimRight(string(b), "\r\n")
	if p == "" {
		return "", fieldErr("kafka.sasl.password_file", "%s is empty", k.SASL.PasswordFile)
	}
	return p, nil
}

func (k KafkaConfig) token() (string, error) {
	if k.SASL.TokenFile == "" {
		return k.SASL.Token, nil
	}
	b, err := os.ReadFile(k.SASL.TokenFile)
	if err != nil {
		return "", fieldErr("kafka.sasl.token_file", "%v", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fieldErr("kafka.sasl.token_file", "%s is empty", k.SASL.TokenFile)
	}
	return t, nil
}

// applySecurity sets c.Net.TLS and c.Net.SASL from k.
func (k KafkaConfig) applySecurity(c *sarama.Config) error {
	tc, err := k.tlsConfig()
	if err != nil {
		return err
	}
	if tc != nil {
		c.Net.TLS.Enable = true
		c.Net.TLS.Config = tc
	}
	if k.SASL.Mechanism == "" {
		return nil
	}
	c.Net.SASL.Enable = true
	c.Net.SASL.Handshake = true
	c.Net.SASL.Version = sarama.SASLHandshakeV1
	c.Net.SASL.Mechanism = sarama.SASLMechanism(strings.ToUpper(k.SASL.Mechanism))
	switch c.Net.SASL.Mechanism {
	case sarama.SASLTypeOAuth:
		c.Net.SASL.TokenProvider = tokenProvider{k}
		return nil
	case sarama.SASLTypeSCRAMSHA256:
		c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.HashGeneratorFcn(sha256.New)} }
	case sarama.SASLTypeSCRAMSHA512:
		c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.HashGeneratorFcn(sha512.New)} }
	}
	c.Net.SASL.User = k.SASL.Username
	if c.Net.SASL.Password, err = k.password(); err != nil {
		return err
	}
	return nil
}

// tokenProvider gives sarama the OAUTHBEARER token, read again at every
// authentication.
type tokenProvider struct{ k KafkaConfig }

func (p tokenProvider) Token() (*sarama.AccessToken, error) {
	t, err := p.k.token()
	if err != nil {
		return nil, err
	}
	return &sarama.AccessToken{Token: t}, nil
}

// scramClient is sarama's SCRAM conversation, by github.com/xdg-go/scram.
type scramClient struct {
	hash scram.HashGeneratorFcn
	conv *scram.ClientConversation
}

func (s *scramClient) Begin(user, password, authzID string) error {
	c, err := s.hash.NewClient(user, password, authzID)
	if err != nil {
		return err
	}
	s.conv = c.NewConversation()
	return nil
}

func (s *scramClient) Step(challenge string) (string, error) { return s.conv.Step(challenge) }
func (s *scramClient) Done() bool                            { return s.conv.Done() }

// SecurityWarnings lists what in c leaves the platform's connections open to
// eavesdropping or forgery, one sentence each, for the commands to log at
// start: Kafka's (see KafkaConfig.SecurityWarnings) and a PostgreSQL URL
// that does not verify the server.
func (c *Config) SecurityWarnings() []string {
	out := c.Kafka.SecurityWarnings()
	if w := c.Postgres.SecurityWarning(); w != "" {
		out = append(out, w)
	}
	return out
}

// SecurityWarning says why the URL does not verify the server's identity,
// or "" when it does (sslmode=verify-full, or a Unix socket).
func (p PostgresConfig) SecurityWarning() string {
	if p.URL == "" {
		return ""
	}
	return postgresTLSWarning(p.URL)
}

// SecurityWarnings lists what leaves the Kafka connections open to
// eavesdropping or forgery: a certificate not verified, a password or
// token sent without TLS.
func (k KafkaConfig) SecurityWarnings() []string {
	var out []string
	if k.TLS.InsecureSkipVerify {
		out = append(out, "kafka.tls.insecure_skip_verify is set: the brokers' certificates are not verified, so anyone on the network path can read and forge every record")
	}
	if !k.TLS.on() && (k.SASL.Mechanism == SASLPlain || k.SASL.Mechanism == SASLOAuthBearer) {
		out = append(out, fmt.Sprintf("kafka.sasl.mechanism %s without kafka.tls: the %s travels in clear", k.SASL.Mechanism, map[string]string{SASLPlain: "password", SASLOAuthBearer: "token"}[k.SASL.Mechanism]))
	}
	return out
}

// postgresTLSWarning says why a PostgreSQL URL does not verify the server,
// or "" when it does (sslmode verify-full, or a Unix socket).
func postgresTLSWarning(pgURL string) string {
	host, mode := pgTarget(pgURL)
	if host == "" || strings.HasPrefix(host, "/") {
		return "" // a Unix socket never leaves the host
	}
	switch mode {
	case "verify-full":
		return ""
	case "verify-ca":
		return fmt.Sprintf("postgres.url has sslmode=verify-ca: the certificate of %s is checked against the CA but not its name; use sslmode=verify-full", host)
	case "":
		mode = "prefer (the default)"
	}
	return fmt.Sprintf("postgres.url has sslmode=%s: the server %s is not verified, so the connection can be read or taken over on the network path; use sslmode=verify-full with sslrootcert", mode, host)
}

// pgTarget is the host and the sslmode a libpq URL or keyword/value string
// asks for; the sslmode is "" when it is left to the default (or to
// PGSSLMODE).
func pgTarget(pgURL string) (host, mode string) {
	if u, err := url.Parse(pgURL); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		host, mode = u.Hostname(), u.Query().Get("sslmode")
		if h := u.Query().Get("host"); h != "" {
			host = h
		}
	} else {
		for _, f := range strings.Fields(pgURL) {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "host":
				host = strings.Trim(v, "'")
			case "sslmode":
				mode = strings.Trim(v, "'")
			}
		}
	}
	if host == "" {
		host = os.Getenv("PGHOST")
	}
	if mode == "" {
		mode = os.Getenv("PGSSLMODE")
	}
	return host, mode
}
