package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

// viewBenchType is the entity type of the view bootstrap.
const viewBenchType = "viewbench"

// viewResult is the view bootstrap: `changes serve` from an empty directory
// until /readyz, then restarted on it.
type viewResult struct {
	Entities       int     `json:"entities"`
	Seconds        float64 `json:"seconds"`
	RecordsPerSec  float64 `json:"records_per_sec"`
	RSSMiB         float64 `json:"rss_mib"`
	PeakMiB        float64 `json:"peak_rss_mib"`
	RestartSeconds float64 `json:"restart_seconds"`
	RestartRSSMiB  float64 `json:"restart_rss_mib"`
}

// viewBootstrap writes --view-entities states (~330 bytes, 8 partitions)
// straight to the view type's snapshot table, as the snapshot processor
// would, then measures `changes serve` bootstrapping a view of them.
func (b *bench) viewBootstrap(ctx context.Context) error {
	n := b.o.viewN
	if n <= 0 {
		return nil
	}
	if b.stopView != nil {
		b.stopView() // the bench's own views: not while serve bootstraps
	}
	b.say("view bootstrap: writing %d entities to %s", n, b.topo.Snapshot(viewBenchType))
	// `changes topics` just created the table: a busy broker can take
	// longer to know its partitions than the producer's retries last.
	err := waitFor(ctx, time.Minute, func() (bool, error) {
		topic := b.topo.Snapshot(viewBenchType)
		if b.client.RefreshMetadata(topic) != nil {
			return false, nil
		}
		parts, err := b.client.Partitions(topic)
		if err != nil || len(parts) == 0 {
			return false, nil
		}
		for _, p := range parts {
			if _, err := b.client.Leader(topic, p); err != nil {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("view bootstrap: the table's partitions: %w", err)
	}
	if err := b.writeStates(ctx, n); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	ln.Close()
	raw, err := os.ReadFile(b.config)
	if err != nil {
		return err
	}
	serveConfig := filepath.Join(b.o.workDir, "serve.yaml")
	text := string(raw) + fmt.Sprintf("serve: {listen: %q, types: [%s]}\n", addr, viewBenchType)
	if err := os.WriteFile(serveConfig, []byte(text), 0o600); err != nil {
		return err
	}
	run := func(name string) (time.Duration, usage, error) {
		start := time.Now()
		c, err := startChild(b.o.changes, b.o.workDir, name, nil, "serve", "--config", serveConfig)
		if err != nil {
			return 0, usage{}, err
		}
		defer c.stop()
		err = waitFor(ctx, 10*time.Minute, func() (bool, error) {
			resp, err := http.Get("http://" + addr + "/readyz")
			if err != nil {
				return false, nil
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK, nil
		})
		return time.Since(start), c.component().usage(), err
	}
	t, u, err := run("serve-bootstrap")
	if err != nil {
		return fmt.Errorf("view bootstrap: %w", err)
	}
	vr := &viewResult{Entities: n, Seconds: t.Seconds(), RecordsPerSec: float64(n) / t.Seconds(), RSSMiB: u.rssMiB, PeakMiB: u.peakMiB}
	b.say("  ready after %.1fs (%.0f records/s), RSS %.0f MiB, peak %.0f MiB", t.Seconds(), vr.RecordsPerSec, u.rssMiB, u.peakMiB)
	t, u, err = run("serve-restart")
	if err != nil {
		return fmt.Errorf("view restart: %w", err)
	}
	vr.RestartSeconds, vr.RestartRSSMiB = t.Seconds(), u.rssMiB
	b.say("  restarted on its directory: ready after %.2fs, RSS %.0f MiB", t.Seconds(), u.rssMiB)
	b.res.View = vr
	return nil
}

// writeStates writes n entity states to the view type's snapshot table.
func (b *bench) writeStates(ctx context.Context, n int) error {
	scfg, err := topology.SaramaConfig(b.topo.Config().Kafka)
	if err != nil {
		return err
	}
	scfg.Producer.Flush.Frequency = 5 * time.Millisecond // bulk load: batch
	scfg.Producer.Flush.Bytes = 1 << 20
	producer, err := sarama.NewAsyncProducer(b.topo.Config().Kafka.Brokers, scfg)
	if err != nil {
		return err
	}
	go func() {
		for range producer.Successes() {
		}
	}()
	// Errors are returned (SaramaConfig): unread, 256 of them would block
	// Input for good. The first one fails the phase.
	var failed atomic.Pointer[sarama.ProducerError]
	go func() {
		for e := range producer.Errors() {
			failed.CompareAndSwap(nil, e)
		}
	}()
	topic := b.topo.Snapshot(viewBenchType)
	now := time.Now().UTC()
	last := time.Now()
	for id := int64(1); id <= int64(n) && ctx.Err() == nil && failed.Load() == nil; id++ {
		row := codecs.Row{
			"id":         json.RawMessage(strconv.FormatInt(id, 10)),
			"seq":        json.RawMessage(strconv.FormatInt(id, 10)),
			"name":       json.RawMessage(`"entity number ` + strconv.FormatInt(id, 10) + `"`),
			"budget":     json.RawMessage(`"12345.67"`),
			"status":     json.RawMessage(`"active"`),
			"attrs":      json.RawMessage(`{"k": 1, "tags": ["a", "b"]}`),
			"updated_at": json.RawMessage(`"` + now.Format(time.RFC3339Nano) + `"`),
		}
		value, err := codecs.StateCodec{}.Encode(&codecs.State{EntityType: viewBenchType, EntityID: codecs.IntKey(id), Row: row,
			Position: codecs.Position{CommitLSN: codecs.LSN(1000 + id)}, CommitTime: now, AppliedTime: now})
		if err != nil {
			producer.Close()
			return err
		}
		producer.Input() <- &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(strconv.FormatInt(id, 10)), Value: sarama.ByteEncoder(value)}
		if time.Since(last) > 5*time.Second {
			b.say("  writing the table: %d of %d", id, n)
			last = time.Now()
		}
	}
	err = producer.Close()
	if e := failed.Load(); e != nil {
		return fmt.Errorf("write the view's table: %w", e)
	}
	return err
}
