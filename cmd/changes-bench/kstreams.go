package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
)

// kstreamsConfig is printed with the results: what the Kafka Streams app
// runs with beyond its defaults (stack/kstreams/kstreams.sh says why).
const kstreamsConfig = "Kafka Streams 4.1.1 (stack/kstreams/kstreams.sh): a KTable per Debezium topic in the default RocksDB store, interactive queries over HTTP; defaults, plus num.stream.threads=2, at_least_once (the default, chosen), commit.interval.ms=1000, replication.factor=1, -Xmx1g"

// kstreams runs the Kafka Streams application of stack/kstreams (a KTable
// per Debezium topic, served by interactive queries) through
// stack/kstreams/kstreams.sh.
type kstreams struct {
	name   string
	types  []string // in the order of topics
	topics []string // Debezium's, one per type
	dir    string   // CHANGES_STACK_DIR of the script
	port   int
	stamps string // the file the app appends "seq nanos" lines to
	http   *http.Client
}

func newKStreams(name string, types, topics []string, dir string) (*kstreams, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	return &kstreams{name: name, types: types, topics: topics, dir: dir, port: port,
		stamps: filepath.Join(dir, name+".stamps"), http: &http.Client{Timeout: 5 * time.Second}}, nil
}

// freePort is a TCP port on 127.0.0.1 that nothing listens on now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (k *kstreams) script(ctx context.Context, args ...string) error {
	var pairs []string
	for i, t := range k.types {
		pairs = append(pairs, t+"="+k.topics[i])
	}
	cmd := exec.CommandContext(ctx, "bash", append([]string{"stack/kstreams/kstreams.sh"}, args...)...)
	cmd.Env = append(os.Environ(),
		"KS_TOPICS="+strings.Join(pairs, ","),
		"KS_PORT="+strconv.Itoa(k.port),
		"KS_STAMPS="+k.stamps,
		"CHANGES_STACK_DIR="+k.dir,
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("kstreams.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// start starts the JVM in the background and returns.
func (k *kstreams) start(ctx context.Context) error { return k.script(ctx, "start", k.name) }

func (k *kstreams) stop(ctx context.Context) error { return k.script(ctx, "stop", k.name) }

// deleteState deletes the app's internal (changelog) topics and its stores,
// and keeps its logs.
func (k *kstreams) deleteState(client sarama.Client) {
	if admin, err := sarama.NewClusterAdminFromClient(client); err == nil {
		if topics, err := admin.ListTopics(); err == nil {
			for t := range topics {
				if strings.HasPrefix(t, k.name+"-") {
					admin.DeleteTopic(t)
				}
			}
		}
	}
	os.RemoveAll(filepath.Join(k.dir, "kstreams", k.name, "stores"))
}

func (k *kstreams) component() component {
	return component{name: "kafka streams (jvm)", pids: pidFile(filepath.Join(k.dir, "kstreams", k.name, "pid"))}
}

// ksStatus is the app's GET /status.
type ksStatus struct {
	State  string             `json:"state"`
	Tables map[string]ksTable `json:"tables"`
}

type ksTable struct {
	Topic      string `json:"topic"`
	Applied    int64  `json:"applied"`     // records applied to the store since the app started
	NextOffset int64  `json:"next_offset"` // the offset after the last applied record
	Entries    *int64 `json:"entries"`     // RocksDB's estimate; null while the store is not queryable
}

func parseStatus(raw []byte) (ksStatus, error) {
	var s ksStatus
	if err := json.Unmarshal(raw, &s); err != nil {
		return s, fmt.Errorf("kafka streams /status: %w", err)
	}
	if s.State == "" {
		return s, fmt.Errorf("kafka streams /status: no state in %.200s", raw)
	}
	return s, nil
}

// caughtUp reports whether the app is RUNNING and has applied every record
// up to ends (the end offset of each topic) to its stores.
func (s ksStatus) caughtUp(ends map[string]int64) bool {
	if s.State != "RUNNING" {
		return false
	}
	next := map[string]int64{}
	for _, t := range s.Tables {
		next[t.Topic] = t.NextOffset
	}
	for topic, end := range ends {
		if next[topic] < end {
			return false
		}
	}
	return true
}

// applied sums the records applied over every table.
func (s ksStatus) applied() int64 {
	var n int64
	for _, t := range s.Tables {
		n += t.Applied
	}
	return n
}

func (k *kstreams) url(path string) string {
	return "http://127.0.0.1:" + strconv.Itoa(k.port) + path
}

// status asks the app; an error while the JVM starts.
func (k *kstreams) status(ctx context.Context) (ksStatus, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", k.url("/status"), nil)
	if err != nil {
		return ksStatus{}, err
	}
	resp, err := k.http.Do(req)
	if err != nil {
		return ksStatus{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return ksStatus{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return ksStatus{}, fmt.Errorf("kafka streams /status: %s: %.200s", resp.Status, raw)
	}
	return parseStatus(raw)
}

// get is an interactive query: the row of key in typ's table, nil if none.
func (k *kstreams) get(ctx context.Context, typ, key string) (map[string]json.RawMessage, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", k.url("/"+typ+"/"+pathEscape(key)), nil)
	if err != nil {
		return nil, err
	}
	resp, err := k.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusNotFound:
		return nil, nil
	case http.StatusOK:
		var row map[string]json.RawMessage
		return row, json.Unmarshal(raw, &row)
	}
	return nil, fmt.Errorf("kafka streams /%s/%s: %s: %.200s", typ, key, resp.Status, raw)
}

// pathEscape percent-encodes every byte but unreserved ones, so a key's '/'
// stays in one path segment.
func pathEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// stamping turns the app's stamps on or off.
func (k *kstreams) stamping(ctx context.Context, on bool) error {
	q := "0"
	if on {
		q = "1"
	}
	req, err := http.NewRequestWithContext(ctx, "POST", k.url("/stamps?on="+q), nil)
	if err != nil {
		return err
	}
	resp, err := k.http.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("kafka streams /stamps: %s", resp.Status)
	}
	return nil
}

// tailStamps reads the stamps file into a as the app appends to it, until
// ctx is done.
func (k *kstreams) tailStamps(ctx context.Context, a *arrivals) {
	var off int64
	var pending []byte
	buf := make([]byte, 1<<20)
	for ctx.Err() == nil {
		f, err := os.Open(k.stamps)
		if err == nil {
			for {
				n, rerr := f.ReadAt(buf, off)
				off += int64(n)
				pending = append(pending, buf[:n]...)
				stamps, used := parseStamps(pending)
				for _, s := range stamps {
					a.add(s.seq, s.at)
				}
				pending = append(pending[:0], pending[used:]...)
				if rerr != nil || n == 0 {
					break
				}
			}
			f.Close()
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// parseStamps reads the complete "seq unix-nanos" lines at the start of
// raw: the stamps, and how many bytes they took (a partial last line is
// left for the next read). A malformed line is skipped.
func parseStamps(raw []byte) (out []commit, used int) {
	for {
		nl := bytes.IndexByte(raw[used:], '\n')
		if nl < 0 {
			return out, used
		}
		line := raw[used : used+nl]
		used += nl + 1
		sp := bytes.IndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		seq, err1 := strconv.ParseInt(string(line[:sp]), 10, 64)
		at, err2 := strconv.ParseInt(string(line[sp+1:]), 10, 64)
		if err1 != nil || err2 != nil || seq <= 0 {
			continue
		}
		out = append(out, commit{seq: seq, at: at})
	}
}

// topicEnds are the end offsets of single-partition topics, by topic.
func topicEnds(client sarama.Client, topics []string) (map[string]int64, error) {
	out := map[string]int64{}
	for _, t := range topics {
		end, err := endOffsets(client, t)
		if err != nil {
			return nil, err
		}
		out[t] = end
	}
	return out, nil
}
