package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

// TestSecuredPlatform runs the whole platform against a broker of the
// test's own whose only client listener is SASL_SSL (SCRAM-SHA-512, the
// stack's CA) with the standard authorizer and no ACL but those `changes
// acls --apply` creates, each part as its own principal:
//
//   - an administrator creates the topics and the ACLs;
//   - `changes capture` (principal capture), `changes process`
//     (processors) and `changes serve` (serve) carry rows from PostgreSQL to
//     the query server, and an embedded view reads its table as view;
//   - every connection to PostgreSQL is TLS with sslmode=verify-full, the
//     replication connection included;
//   - a wrong password ends `changes capture` at once with an error naming
//     the mechanism and the broker;
//   - a plaintext client is refused;
//   - the view principal cannot write to a table topic: the denial is
//     reported and nothing is written.
func TestSecuredPlatform(t *testing.T) {
	e := stack(t)
	if testing.Short() {
		t.Skip("starts a SASL_SSL broker of its own")
	}
	need := func(msg string) {
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	for _, tool := range []string{"java", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			need("TestSecuredPlatform starts a SASL_SSL broker with stack/stack.sh: it needs " + tool)
		}
	}
	if !strings.Contains(e.pgURL, "sslmode=verify-full") {
		need("TestSecuredPlatform needs the stack's PostgreSQL with TLS (a URL with sslmode=verify-full); a stack made before TLS keeps its plaintext URL: run `bash stack/stack.sh reset`")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	broker := newOutageBroker(t, e, "CHANGES_KAFKA_SECURITY=sasl_ssl")
	broker.up(t)
	ca := filepath.Join(broker.dir, "tls", "ca.pem")
	secret := func(user string) string { return filepath.Join(broker.dir, "kafka", "secrets", user+".password") }
	as := func(user string) map[string]string {
		return map[string]string{"CHANGES_KAFKA_BROKERS": "", "CHANGES_POSTGRES_URL": "",
			"CHANGES_KAFKA_TLS_CA_FILE": ca, "CHANGES_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
			"CHANGES_KAFKA_SASL_USERNAME": user, "CHANGES_KAFKA_SASL_PASSWORD_FILE": secret(user)}
	}
	kafkaAs := func(user string) topology.KafkaConfig {
		return topology.KafkaConfig{Brokers: []string{broker.addr}, Version: topology.DefaultKafkaVersion, ClientID: "e2e-" + user,
			MaxRecordBytes: topology.DefaultMaxRecordBytes, ReplicationFactor: 1,
			TLS:  topology.KafkaTLSConfig{CAFile: ca},
			SASL: topology.KafkaSASLConfig{Mechanism: topology.SASLScramSHA512, Username: user, PasswordFile: secret(user)}}
	}

	name := uniqueName("secure")
	table := name + "_item"
	cfg := testConfig(t, e, name, []topology.EntityConfig{{Type: "item", Table: "public." + table, IDColumn: "id", Partitions: 2}})
	cfg.Kafka = kafkaAs("admin") // the cleanup deletes the topics as the administrator
	cleanupStack(t, e, cfg, table)
	db, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	execSQL(t, ctx, db, "create table "+table+" (id bigint primary key, v text not null)")
	execSQL(t, ctx, db, "insert into "+table+" values (1, 'one')")
	configFile := writeConfig(t, cfg)

	for _, args := range [][]string{{"topics"}, {"acls", "--apply"}} {
		cmd, stdout, stderr := command(ctx, t, as("admin"), append(args, "--config", configFile)...)
		if err := cmd.Run(); err != nil {
			t.Fatalf("changes %s as admin: %v\n%s%s", args[0], err, stdout, stderr)
		}
	}

	// A wrong password ends the capture at once, saying what it tried.
	t.Run("wrong password", func(t *testing.T) {
		wrong := filepath.Join(t.TempDir(), "wrong")
		if err := os.WriteFile(wrong, []byte("not-the-password\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, part := range []string{"capture", "serve"} {
			env := as(part)
			env["CHANGES_KAFKA_SASL_PASSWORD_FILE"] = wrong
			env["CHANGES_SERVE_LISTEN"] = freeAddr(t)
			cctx, ccancel := context.WithTimeout(ctx, time.Minute)
			cmd, _, stderr := command(cctx, t, env, part, "--config", configFile)
			start := time.Now()
			err := cmd.Run()
			timedOut := cctx.Err() != nil
			ccancel()
			if err == nil || timedOut {
				t.Fatalf("changes %s with a wrong password: %v after %s; want it to stop with an error at once\n%s", part, err, time.Since(start).Round(time.Second), stderr)
			}
			for _, want := range []string{"SCRAM-SHA-512", broker.addr, `"` + part + `"`, "refused the credentials"} {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("changes %s: the error does not say %q:\n%s", part, want, stderr)
				}
			}
			t.Logf("changes %s with a wrong password: exit after %s: %s", part, time.Since(start).Round(100*time.Millisecond), lastLine(stderr.String()))
		}
		// An embedded view: goka reports its clients' errors flattened;
		// the view still recognises the refusal and does not retry it.
		vcfg := *cfg
		vcfg.Kafka = kafkaAs("view")
		vcfg.Kafka.SASL.PasswordFile = wrong
		_, err := views.New(topology.New(&vcfg), "item", views.WithStorageDir(t.TempDir()), views.WithLogger(testLogger(t)))
		if !errors.Is(err, sarama.ErrSASLAuthenticationFailed) || !strings.Contains(fmt.Sprint(err), "SCRAM-SHA-512") {
			t.Errorf("views.New with a wrong password: %v; want the refusal, naming the mechanism", err)
		}
	})

	t.Run("plaintext client refused", func(t *testing.T) {
		k := kafkaAs("admin")
		k.TLS, k.SASL = topology.KafkaTLSConfig{}, topology.KafkaSASLConfig{}
		client, err := topology.NewClient(k)
		if err == nil {
			client.Close()
			t.Fatal("a plaintext client connected to the SASL_SSL listener")
		}
		if !strings.Contains(err.Error(), "plaintext") || !strings.Contains(err.Error(), "set kafka.tls") {
			t.Errorf("error %q does not say the client spoke plaintext to a TLS listener", err)
		}
	})

	serveAddr := freeAddr(t)
	capEnv, procEnv, serveEnv := as("capture"), as("processors"), as("serve")
	serveEnv["CHANGES_SERVE_LISTEN"] = serveAddr
	procs := []*process{
		startProcess(ctx, t, capEnv, "capture", "--config", configFile),
		startProcess(ctx, t, procEnv, "process", "--config", configFile),
		startProcess(ctx, t, serveEnv, "serve", "--config", configFile),
	}
	waitUntil := func(what string, limit time.Duration, cond func() bool) {
		t.Helper()
		start := time.Now()
		for !cond() {
			if time.Since(start) > limit {
				for _, p := range procs {
					t.Logf("changes %s:\n%s", p.name, p.tail())
				}
				t.Fatalf("%s: not within %s", what, limit)
			}
			for _, p := range procs {
				p.mustRun(t)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	served := func(id int, v string) bool {
		code, _, body := httpGet(serveAddr, fmt.Sprintf("/v1/entities/item/%d", id))
		return code == 200 && strings.Contains(body, `"v":"`+v+`"`)
	}
	waitUntil("row 1 (the initial snapshot) served", 90*time.Second, func() bool { return served(1, "one") })
	execSQL(t, ctx, db, "insert into "+table+" values (2, 'two')")
	execSQL(t, ctx, db, "update "+table+" set v = 'uno' where id = 1")
	waitUntil("rows 2 and 1's update served", 30*time.Second, func() bool { return served(2, "two") && served(1, "uno") })

	t.Run("postgres over verified TLS", func(t *testing.T) {
		var plain, walsenders int
		err := db.QueryRow(ctx, `select count(*) filter (where not s.ssl),
			count(*) filter (where s.ssl and a.pid = (select active_pid from pg_replication_slots where slot_name = $1))
			from pg_stat_activity a join pg_stat_ssl s using (pid)
			where a.client_addr is not null and a.backend_type in ('client backend', 'walsender')`, cfg.Postgres.Slot).Scan(&plain, &walsenders)
		if err != nil {
			t.Fatal(err)
		}
		if plain != 0 || walsenders != 1 {
			t.Errorf("connections without TLS: %d, the slot's replication connection over TLS: %d; want 0 and 1", plain, walsenders)
		}
		for _, p := range procs {
			if strings.Contains(p.stderr.String(), "insecure connection setting") {
				t.Errorf("changes %s warned about an insecure setting:\n%s", p.name, p.tail())
			}
		}
	})

	t.Run("view principal reads its table only", func(t *testing.T) {
		vcfg := *cfg
		vcfg.Kafka = kafkaAs("view")
		topo := topology.New(&vcfg)
		v := runView(t, ctx, topo, "item")
		rctx, rcancel := context.WithTimeout(ctx, 60*time.Second)
		defer rcancel()
		if err := v.WaitRecovered(rctx); err != nil {
			t.Fatal(err)
		}
		if st, err := v.Get(ctx, 2); err != nil || st == nil {
			t.Errorf("view as the view principal: Get(2) = %v, %v", st, err)
		}

		tableTopic := topo.Snapshot("item")
		ends := func() int64 {
			client, err := topology.NewClient(kafkaAs("admin"))
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			var sum int64
			for p := range int32(2) {
				off, err := client.GetOffset(tableTopic, p, sarama.OffsetNewest)
				if err != nil {
					t.Fatal(err)
				}
				sum += off
			}
			return sum
		}
		before := ends()
		pcfg := saramaConfig(t, kafkaAs("view"))
		pcfg.Producer.Return.Successes = true
		var sendErr error
		if p, err := sarama.NewSyncProducer([]string{broker.addr}, pcfg); err != nil {
			sendErr = err
		} else {
			_, _, sendErr = p.SendMessage(&sarama.ProducerMessage{Topic: tableTopic, Key: sarama.StringEncoder("2"), Value: sarama.StringEncoder(`{"forged":true}`)})
			p.Close()
		}
		// An idempotent producer is refused at InitProducerId (cluster);
		// a plain one at the write (topic).
		if !errors.Is(sendErr, sarama.ErrClusterAuthorizationFailed) && !errors.Is(sendErr, sarama.ErrTopicAuthorizationFailed) {
			t.Errorf("write to %s as view: %v; want an authorization error", tableTopic, sendErr)
		} else {
			t.Logf("write to the table as view: refused: %v", sendErr)
		}
		time.Sleep(time.Second)
		if after := ends(); after != before {
			t.Errorf("the table's end moved from %d to %d: something was written", before, after)
		}
		if !served(2, "two") {
			t.Error("entity 2 is no longer served as it was")
		}
	})
}

// lastLine is the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
