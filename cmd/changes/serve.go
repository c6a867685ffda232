package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/changes-dev/changes/codecs"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/changes-dev/changes/internal/outage"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/history"
	"github.com/changes-dev/changes/views/server"
)

// serveGCPercent is the Go garbage collector's GOGC in `changes serve`
// unless the environment sets GOGC. Most of a view's heap is goleveldb's
// write buffers, which hold no pointers and cost the collector next to
// nothing, while the default of 100 lets the heap grow to twice them: at
// 50 a 1,000,000-entity bootstrap peaks at about 190 MiB resident instead
// of 270, for no measurable CPU (the collector took under 1 % of it).
const serveGCPercent = 50

// runServe runs a view per served type and the query server until ctx is
// cancelled. Kafka away, at the start or later, stops none of it: the views
// wait for it and answer from their local copies meanwhile, and the history
// reader is opened once Kafka answers (/v1/history answers 503 until then).
func runServe(ctx context.Context, e *env) error {
	topo, log, reg := e.topo, e.log, e.reg
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(serveGCPercent)
	}
	cfg := topo.Config()
	vs := map[string]*views.View{}
	for _, typ := range cfg.ServedTypes() {
		v, err := views.New(topo, typ, views.WithLogger(log), views.WithRegisterer(reg),
			views.WithStorageDir(filepath.Join(cfg.Storage, "serve")))
		if err != nil {
			return err
		}
		vs[typ] = v
	}
	var hist atomic.Pointer[history.Reader]
	defer func() {
		if h := hist.Load(); h != nil {
			h.Close()
		}
	}()
	// The history index answers /v1/history?at= once it has read up to
	// the asked moment; it is opened with the history reader.
	var index atomic.Pointer[history.Index]
	tokens, err := cfg.Serve.LoadTokens()
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	// Requests get a context of their own, cancelled when a graceful
	// shutdown runs out of time (a history read can take long).
	reqCtx, cancelRequests := context.WithCancel(context.Background())
	defer cancelRequests()
	streamsEnd := make(chan struct{})
	srv, err := httpServer(cfg.Serve, server.Handler(server.Config{
		Shutdown:         streamsEnd,
		Views:            vs,
		HistoryLater:     hist.Load,
		HistoryIndex:     index.Load,
		Tokens:           tokens,
		Log:              log,
		Metrics:          promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
		Registerer:       reg,
		MaxInFlight:      cfg.Serve.MaxInFlight,
		MaxWaiting:       cfg.Serve.MaxWaiting,
		MaxWait:          cfg.Serve.MaxWait,
		HistoryScans:     cfg.Serve.HistoryScans,
		MaxSubscriptions: cfg.Serve.MaxSubscriptions,
		MaxResponseBytes: cfg.Serve.MaxResponseBytes,
		WriteTimeout:     cfg.Serve.WriteTimeout,
	}), log)
	if err != nil {
		return err
	}
	srv.BaseContext = func(net.Listener) context.Context { return reqCtx }
	srv.RegisterOnShutdown(func() { close(streamsEnd) }) // change streams never go idle
	ln, err := net.Listen("tcp", cfg.Serve.Listen)
	if err != nil {
		return fmt.Errorf("serve: listen on %s: %w", cfg.Serve.Listen, err)
	}
	for _, w := range serveWarnings(ln.Addr(), len(tokens) > 0, srv.TLSConfig != nil) {
		log.Warn("insecure query server setting", "warning", w)
	}
	// The views stop only after the server: a request never reads a view
	// whose storage is closing.
	viewCtx, stopViews := context.WithCancel(context.Background())
	defer stopViews()
	g, gctx := errgroup.WithContext(viewCtx)
	for _, v := range vs {
		g.Go(func() error { return v.Run(gctx) })
	}
	g.Go(func() error {
		state := outage.NewState(log.With("component", "history"), nil, "kafka")
		err := outage.Retry(gctx, state, func(context.Context) error {
			h, err := history.Open(topo, log)
			if err == nil {
				hist.Store(h)
			}
			return err
		})
		if gctx.Err() != nil {
			return nil
		}
		if err != nil || cfg.Serve.HistoryIndex.Disabled {
			return err
		}
		return runHistoryIndex(gctx, hist.Load(), &index, historyIndexDir(cfg, topo), cfg.Serve.HistoryIndex.CheckpointEvery, e)
	})
	g.Go(func() error {
		scheme := "http://"
		if srv.TLSConfig != nil {
			scheme = "https://"
		}
		log.Info("serving", "addr", scheme+ln.Addr().String(), "types", cfg.ServedTypes(), "tokens", len(tokens))
		if err := serveOn(srv, ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		select {
		case <-ctx.Done():
		case <-gctx.Done(): // a view failed
		}
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("requests still running after 5 s were cancelled", "err", err)
			cancelRequests()
			srv.Close()
		}
		stopViews()
		return nil
	})
	return g.Wait()
}

// historyIndexDir is where `changes serve` keeps the history index:
// beside the views' databases (<storage>/serve/<topic>.<partition>), named
// after the history topic, so deployments sharing a storage directory do
// not share an index.
func historyIndexDir(cfg *topology.Config, topo *topology.Topology) string {
	return filepath.Join(cfg.Storage, "serve", topo.History()+".index")
}

// runHistoryIndex opens the history index in dir, publishes it in index
// for the query server, and builds it until ctx is done. The index is
// closed only after the query server stopped: the views' context (ctx)
// ends after srv.Shutdown returned, and a request that is still reading it
// then was cancelled (cancelRequests). An index that cannot be opened or
// fails (its disk) is logged as an error, not fatal: /v1/history?at= then
// scans the history, as it does with the index disabled.
func runHistoryIndex(ctx context.Context, h *history.Reader, index *atomic.Pointer[history.Index], dir string, every int64, e *env) error {
	x, err := history.OpenIndex(h, history.IndexConfig{Dir: dir, CheckpointEvery: every, Registerer: e.reg, Log: e.log})
	if err != nil {
		e.log.Error("the history index cannot be opened; /v1/history?at= scans the history", "dir", dir, "err", err)
		return nil
	}
	index.Store(x)
	err = x.Run(ctx)
	index.Store(nil)
	if err != nil {
		e.log.Error("the history index failed; /v1/history?at= scans the history", "dir", dir, "err", err)
	}
	if err := x.Close(); err != nil {
		e.log.Warn("closing the history index", "dir", dir, "err", err)
	}
	return nil
}

// httpServer is the query server's http.Server around h: the timeouts of
// cfg (ReadHeaderTimeout 5s, or ReadTimeout if shorter), and its
// certificate when cfg.TLS is set (then serveOn serves HTTPS only, HTTP/2
// included).
func httpServer(cfg topology.ServeConfig, h http.Handler, log *slog.Logger) (*http.Server, error) {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: min(5*time.Second, cfg.ReadTimeout),
		ReadTimeout:       cfg.ReadTimeout,
		// The handler replaces it on /v1 answers with WriteTimeout from
		// their first byte; it bounds the others (/metrics) from the request.
		WriteTimeout: cfg.WriteTimeout,
		IdleTimeout:  cfg.IdleTimeout,
		// Our requests are a GET line and a token: 64 KiB is plenty, and
		// what a client may make the server hold per connection.
		MaxHeaderBytes: 64 << 10,
		// TLS handshake errors and the like: every scanner on the network
		// makes some, so they are not warnings.
		ErrorLog: slog.NewLogLogger(log.With("component", "http").Handler(), slog.LevelDebug),
	}
	if cfg.TLS.Enabled() {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("serve: serve.tls.cert_file %s and key_file %s: %w", cfg.TLS.CertFile, cfg.TLS.KeyFile, err)
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	return srv, nil
}

// serveOn serves srv on ln, with TLS when srv has a TLSConfig.
func serveOn(srv *http.Server, ln net.Listener) error {
	if srv.TLSConfig != nil {
		return srv.ServeTLS(ln, "", "")
	}
	return srv.Serve(ln)
}

// serveWarnings says what is unsafe in serving on addr, with or without
// tokens and TLS: beyond loopback, a server without a token serves every
// entity to anyone who reaches it, and a token without TLS crosses the
// network in clear.
func serveWarnings(addr net.Addr, tokens, tls bool) []string {
	if tcp, ok := addr.(*net.TCPAddr); ok && tcp.IP.IsLoopback() {
		return nil
	}
	var out []string
	if !tokens {
		out = append(out, fmt.Sprintf("the query server listens on %s, beyond loopback, without a token: anyone who reaches it reads every served entity and the history; set CHANGES_SERVE_TOKEN or serve.token_file", addr))
	}
	if tokens && !tls {
		out = append(out, fmt.Sprintf("the query server listens on %s, beyond loopback, without TLS: the bearer tokens cross the network in clear; set serve.tls.cert_file and key_file", addr))
	}
	return out
}

// asofFlags are the flags of `changes asof`.
type asofFlags struct {
	at, typ string
	id      codecs.Key
	hasID   bool
}

func (f *asofFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.at, "at", "", "the moment: an RFC 3339 time (2026-11-25T10:05:00Z) or a history offset (required)")
	fs.StringVar(&f.typ, "type", "", "entity type (required)")
	fs.Func("id", "entity key, as its events' \"id\" writes it (42, a uuid, a text, [\"a\",\"1\"]); without it, every entity of the type", func(s string) error {
		id, err := keyText(s)
		if err != nil {
			return err
		}
		f.id, f.hasID = id, true
		return nil
	})
}

// keyText is the key whose text is s, of whatever kind: the history matches
// an entity's changes by the text of its key, and a type's keys are all of
// one kind.
func keyText(s string) (codecs.Key, error) {
	if k, err := codecs.ParseKey(codecs.KeyInteger, s); err == nil {
		return k, nil
	}
	return codecs.ParseKey(codecs.KeyText, s)
}

// runAsOf prints the state of one entity, or of every entity of a type, at
// a past time or history offset, rebuilt from the history: one JSON object
// per line on stdout, progress on the log. The command requires --at and
// --type.
func runAsOf(ctx context.Context, topo *topology.Topology, f asofFlags, log *slog.Logger, stdout io.Writer) error {
	if _, ok := topo.Config().Entity(f.typ); !ok {
		return fmt.Errorf("asof: entity type %q is not declared", f.typ)
	}
	h, err := history.Open(topo, log)
	if err != nil {
		return err
	}
	defer h.Close()
	end, err := server.EndOffset(ctx, h, f.at)
	if err != nil {
		return fmt.Errorf("asof: %w", err)
	}
	enc := json.NewEncoder(stdout)
	if f.hasID {
		st, err := h.EntityAt(ctx, f.typ, f.id, end, nil)
		if err != nil {
			return fmt.Errorf("asof: %w", err)
		}
		return enc.Encode(history.StateAtOf(f.typ, f.id, f.at, end, st))
	}
	start := time.Now()
	// A line per entity, as enc.Encode(history.EntityOf(st)) writes it,
	// without encoding/json's reflection or a write per line.
	out := bufio.NewWriterSize(stdout, 64<<10)
	entities := 0
	err = h.TypeJSONAt(ctx, f.typ, end, func(done, total int64) {
		log.Info("replaying the history", "records", done, "of", total, "records_per_second", int64(float64(done)/time.Since(start).Seconds()))
	}, func(entity []byte) error {
		entities++
		if _, err := out.Write(entity); err != nil {
			return err
		}
		return out.WriteByte('\n')
	})
	if ferr := out.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		return fmt.Errorf("asof: %w", err)
	}
	log.Info("rebuilt", "type", f.typ, "entities", entities, "history_offset", end, "seconds", time.Since(start).Seconds())
	return nil
}
