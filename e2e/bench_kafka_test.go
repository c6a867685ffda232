package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/internal/procstat"
	"github.com/changes-dev/changes/topology"
)

// BenchmarkKafkaTransaction measures what one Kafka transaction of the
// capture's kind costs on the local stack's broker: a trickle of
// one-record transactions (a commit every 2 ms, as a capture at a few
// hundred changes a second commits), their commit latency as the capture's
// producer sees it, and the broker's CPU per transaction; next to it, a
// plain idempotent produce request of one record (sync, acks=all) and the
// broker's CPU per request. The broker's CPU is read from /proc for the
// pid in the stack's folder (CHANGES_STACK_DIR, default ../.stack); without
// it, only latencies are reported. A broker started moments before is
// still compiling its hot paths and spends several times as much (14.6 ms a
// transaction just after `make stack-up`, 3.8-4.5 later).
func BenchmarkKafkaTransaction(b *testing.B) {
	e := stack(b)
	k := topology.KafkaConfig{Brokers: strings.Split(e.brokers, ","), MaxRecordBytes: 1 << 20, ClientID: "bench-txn"}
	topic := uniqueName("bench_txn")
	admin, err := sarama.NewClusterAdmin(k.Brokers, sarama.NewConfig())
	if err != nil {
		b.Fatal(err)
	}
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1}, false); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { admin.DeleteTopic(topic); admin.Close() })
	const n = 1000

	b.Run("transaction", func(b *testing.B) {
		cfg, err := topology.TransactionalConfig(k, topic+".txn")
		if err != nil {
			b.Fatal(err)
		}
		p, err := sarama.NewAsyncProducer(k.Brokers, cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		go func() {
			for e := range p.Errors() {
				b.Error(e)
			}
		}()
		commits := make([]time.Duration, 0, n)
		cpu0 := brokerCPU(b)
		for range n {
			if err := p.BeginTxn(); err != nil {
				b.Fatal(err)
			}
			p.Input() <- &sarama.ProducerMessage{Topic: topic, Value: sarama.StringEncoder("x")}
			t0 := time.Now()
			if err := p.CommitTxn(); err != nil {
				b.Fatal(err)
			}
			commits = append(commits, time.Since(t0))
			time.Sleep(2 * time.Millisecond)
		}
		cpu := brokerCPU(b) - cpu0
		slices.Sort(commits)
		b.ReportMetric(ms(commits[n/2]), "commit-p50-ms")
		b.ReportMetric(ms(commits[n*99/100]), "commit-p99-ms")
		if cpu >= 0 {
			b.ReportMetric(ms(cpu)/n, "broker-cpu-ms/txn")
		}
		b.ReportMetric(0, "ns/op")
	})

	b.Run("produce", func(b *testing.B) {
		cfg, err := topology.SaramaConfig(k)
		if err != nil {
			b.Fatal(err)
		}
		p, err := sarama.NewSyncProducer(k.Brokers, cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		sends := make([]time.Duration, 0, 2*n)
		cpu0 := brokerCPU(b)
		for range 2 * n {
			t0 := time.Now()
			if _, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: topic, Value: sarama.StringEncoder("x")}); err != nil {
				b.Fatal(err)
			}
			sends = append(sends, time.Since(t0))
		}
		cpu := brokerCPU(b) - cpu0
		slices.Sort(sends)
		b.ReportMetric(ms(sends[n]), "send-p50-ms")
		if cpu >= 0 {
			b.ReportMetric(ms(cpu)/(2*n)*1000, "broker-cpu-us/request")
		}
		b.ReportMetric(0, "ns/op")
	})
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// brokerCPU is the local stack's broker's CPU time so far (user and
// system, from /proc), or -1 if its pid is not known here.
func brokerCPU(b testing.TB) time.Duration {
	dir := os.Getenv("CHANGES_STACK_DIR")
	if dir == "" {
		dir = filepath.Join("..", ".stack")
	}
	raw, err := os.ReadFile(filepath.Join(dir, "kafka", "kafka.pid"))
	if err != nil {
		return -1
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		return -1
	}
	st, err := procstat.Read(pid)
	if err != nil {
		return -1
	}
	return st.CPU
}
