package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/internal/syncbuf"
	"github.com/changes-dev/changes/internal/testcert"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views/server"
)

// serveConfig is a ServeConfig with the defaults applied, changed by mutate.
func serveConfig(t *testing.T, mutate func(*topology.ServeConfig)) topology.ServeConfig {
	t.Helper()
	t.Setenv("CHANGES_SERVE_TOKEN", "")
	cfg, err := topology.Parse([]byte("kafka: {brokers: [\"127.0.0.1:1\"]}\npostgres: {url: x}\nentities: [{type: a, table: t}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Serve
	if mutate != nil {
		mutate(&s)
	}
	return s
}

// startHTTP serves h with the http.Server runServe builds from cfg, on a
// loopback port, until the test ends; it returns the address.
func startHTTP(t *testing.T, cfg topology.ServeConfig, h http.Handler) string {
	t.Helper()
	srv, err := httpServer(cfg, h, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serveOn(srv, ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

func TestServeTLS(t *testing.T) {
	certFile, keyFile, pool := testcert.SelfSigned(t, t.TempDir())
	cfg := serveConfig(t, func(s *topology.ServeConfig) { s.TLS = topology.ServeTLSConfig{CertFile: certFile, KeyFile: keyFile} })
	addr := startHTTP(t, cfg, server.Handler(server.Config{}))

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	resp, err := client.Get("https://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("GET https://%s/healthz: %d, TLS %v, headers %v", addr, resp.StatusCode, resp.TLS != nil, resp.Header)
	}
	if resp.ProtoMajor != 2 {
		t.Errorf("served %s, want HTTP/2 over TLS", resp.Proto)
	}
	// Plain HTTP on the TLS port is refused: no answer of the API, only
	// net/http's 400.
	resp, err = http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), "HTTP request to an HTTPS server") {
		t.Errorf("plain HTTP to the TLS port: %d %s", resp.StatusCode, body)
	}
	// A client that does not trust the certificate does not get through.
	if _, err := http.Get("https://" + addr + "/healthz"); err == nil {
		t.Error("a client without the certificate's CA connected")
	}
}

func TestServeTLSBadFiles(t *testing.T) {
	dir := t.TempDir()
	certFile, _, _ := testcert.SelfSigned(t, dir)
	_, keyFile, _ := testcert.SelfSigned(t, t.TempDir()) // the key of another certificate
	for _, c := range []struct {
		name       string
		cert, key  string
		errPartial string
	}{
		{"missing key", certFile, filepath.Join(dir, "absent.pem"), "absent.pem"},
		{"key of another certificate", certFile, keyFile, "serve.tls.cert_file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := serveConfig(t, func(s *topology.ServeConfig) { s.TLS = topology.ServeTLSConfig{CertFile: c.cert, KeyFile: c.key} })
			_, err := httpServer(cfg, http.NotFoundHandler(), slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), c.errPartial) {
				t.Errorf("httpServer = %v; want an error containing %q", err, c.errPartial)
			}
		})
	}
}

// TestServeTimeouts: a keep-alive connection left idle and a request whose
// headers never end are both closed by the server, with short settings.
// Each waits for less than the defaults, which would close them too.
func TestServeTimeouts(t *testing.T) {
	closedWithin := func(conn net.Conn, r *bufio.Reader, within time.Duration) error {
		conn.SetReadDeadline(time.Now().Add(within))
		_, err := r.ReadByte()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("still open after %s", within)
		}
		if err == nil {
			return errors.New("the server sent more")
		}
		return nil // EOF or reset: closed
	}

	t.Run("idle keep-alive connection", func(t *testing.T) {
		// Without an idle timeout, net/http would use the read timeout.
		cfg := serveConfig(t, func(s *topology.ServeConfig) { s.IdleTimeout, s.ReadTimeout = 200*time.Millisecond, time.Minute })
		conn, err := net.Dial("tcp", startHTTP(t, cfg, server.Handler(server.Config{})))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		// Two requests on the connection: it is kept alive between them.
		for range 2 {
			fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(r, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.Close {
				t.Fatalf("%d, close %v", resp.StatusCode, resp.Close)
			}
		}
		if err := closedWithin(conn, r, 20*time.Second); err != nil {
			t.Errorf("idle connection with idle_timeout 200ms: %v", err)
		}
	})
	t.Run("headers that never end", func(t *testing.T) {
		// The headers alone get 5 s, or the read timeout if shorter.
		cfg := serveConfig(t, func(s *topology.ServeConfig) { s.ReadTimeout = 300 * time.Millisecond })
		conn, err := net.Dial("tcp", startHTTP(t, cfg, server.Handler(server.Config{})))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
		r := bufio.NewReader(conn)
		if err := closedWithin(conn, r, 3*time.Second); err != nil {
			t.Errorf("unfinished headers with read_timeout 300ms: %v", err)
		}
	})
}

func TestServeWarnings(t *testing.T) {
	tcp := func(s string) net.Addr { a, _ := net.ResolveTCPAddr("tcp", s); return a }
	for _, c := range []struct {
		name        string
		addr        net.Addr
		tokens, tls bool
		want        []string
	}{
		{"loopback, open", tcp("127.0.0.1:8080"), false, false, nil},
		{"loopback v6, token in clear", tcp("[::1]:8080"), true, false, nil},
		{"every interface, open", tcp("[::]:8080"), false, false, []string{"without a token"}},
		{"every interface, open over TLS", tcp("0.0.0.0:8080"), false, true, []string{"without a token"}},
		{"an interface, token in clear", tcp("10.1.2.3:8080"), true, false, []string{"without TLS"}},
		{"an interface, token over TLS", tcp("10.1.2.3:8080"), true, true, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := serveWarnings(c.addr, c.tokens, c.tls)
			if len(got) != len(c.want) {
				t.Fatalf("warnings %q, want %d", got, len(c.want))
			}
			for i, w := range c.want {
				if !strings.Contains(got[i], w) || !strings.Contains(got[i], c.addr.String()) {
					t.Errorf("warning %q, want it to say %q and the address", got[i], w)
				}
			}
		})
	}
}

// TestServeCommand runs `changes serve` on loopback with TLS and a token
// file (Kafka unreachable: the views wait for it) and checks the wiring
// through real requests.
func TestServeCommand(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := testcert.SelfSigned(t, dir)
	tokenFile := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokenFile, []byte("# old, until every client has the new one\nold-token\nnew-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CHANGES_SERVE_TOKEN", "")
	cfg, err := topology.Parse(fmt.Appendf(nil, `
kafka: {brokers: ["127.0.0.1:1"]}
postgres: {url: x}
storage: %q
serve:
  listen: 127.0.0.1:0
  token_file: %q
  tls: {cert_file: %q, key_file: %q}
  max_in_flight: 4
entities: [{type: account, table: accounts}]
`, dir, tokenFile, certFile, keyFile))
	if err != nil {
		t.Fatal(err)
	}
	var logs syncbuf.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- runServe(ctx, &env{topo: topology.New(cfg), log: log, reg: prometheus.NewRegistry()}) }()

	var addr string
	for addr == "" {
		select {
		case err := <-done:
			t.Fatalf("serve stopped: %v\n%s", err, logs.String())
		case <-time.After(10 * time.Millisecond):
		}
		for line := range strings.Lines(logs.String()) {
			var rec struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "serving" {
				addr = rec.Addr
			}
		}
	}
	if !strings.HasPrefix(addr, "https://127.0.0.1:") {
		t.Fatalf("serving at %q, want https on loopback", addr)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	status := func(path, token string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, addr+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := status("/healthz", ""); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	for _, c := range []struct {
		token string
		pass  bool
	}{{"old-token", true}, {"new-token", true}, {"", false}, {"# old, until every client has the new one", false}, {"other", false}} {
		// Kafka is away: a token that passes gets the view's answer (not
		// 401), whatever it is.
		if code := status("/v1/entities/account/1", c.token); (code != 401) != c.pass {
			t.Errorf("token %q: %d", c.token, code)
		}
	}
	if code := status("/metrics", ""); code != 200 {
		t.Errorf("/metrics: %d", code)
	}
	if strings.Contains(logs.String(), "insecure query server setting") {
		t.Errorf("warnings on loopback:\n%s", logs.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("serve: %v", err)
	}
}
