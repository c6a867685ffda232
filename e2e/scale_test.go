package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

// TestThreeInstancesOneKilled runs the processors as three `changes process`
// instances sharing the groups' partitions, kills one with SIGKILL under
// load, and checks that its partitions move to the others and that the
// table still equals the database. It reports how long the group took to
// become stable again.
func TestThreeInstancesOneKilled(t *testing.T) {
	stack(t)
	if testing.Short() {
		t.Skip("waits for a consumer group session timeout")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f := newCaptureFixture(t, ctx, "scale", "id bigint primary key, n integer not null")
	f.cfg.Entities[0].Partitions = 6
	f.topo = topology.New(f.cfg)
	// The fixture created the topics with one partition: make them anew.
	deleteTopics(t, f.cfg)
	waitTopicsGone(t, ctx, f.cfg)
	if err := platform.EnsureTopics(f.topo); err != nil {
		t.Fatal(err)
	}
	configFile := writeConfig(t, f.cfg)
	stopCapture := f.start(t, ctx)
	defer stopCapture()
	waitSlotActive(t, ctx, f.db, f.cfg.Postgres.Slot)

	var instances []*exec.Cmd
	for range 3 {
		cmd, _, _ := command(ctx, t, map[string]string{
			"CHANGES_KAFKA_BROKERS": "", "CHANGES_POSTGRES_URL": "",
			"CHANGES_STORAGE_DIR": t.TempDir(), // each instance its own goleveldb files
		}, "process", "--config", configFile)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		instances = append(instances, cmd)
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	group := f.topo.SnapshotGroup("item")
	waitMembers(t, ctx, f.cfg, group, 3)

	wdb, err := pgx.Connect(ctx, f.e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer wdb.Close(context.Background())
	var stop atomic.Bool
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		rnd, next := rand.New(rand.NewPCG(9, 10)), int64(0)
		for !stop.Load() {
			var sql string
			if next < 20 || rnd.IntN(2) == 0 {
				next++
				sql = fmt.Sprintf("insert into %s values (%d, 0)", f.table, next)
			} else {
				sql = fmt.Sprintf("update %s set n = n + 1 where id = %d", f.table, 1+rnd.Int64N(next))
			}
			if _, err := wdb.Exec(ctx, sql); err != nil {
				werr = err
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()

	time.Sleep(2 * time.Second)
	killed := time.Now()
	instances[0].Process.Kill()
	instances[0].Wait()
	rebalance := waitMembers(t, ctx, f.cfg, group, 2)
	t.Logf("after SIGKILL of one of three instances the group was stable with 2 members in %s", rebalance.Sub(killed).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	stop.Store(true)
	wg.Wait()
	if werr != nil {
		t.Fatal(werr)
	}

	v := runView(t, ctx, f.topo, "item")
	waitViewsEqual(t, ctx, f.db, f.topo, map[string]*views.View{"item": v})
}

// waitMembers waits until group is Stable with n members and returns when.
func waitMembers(t testing.TB, ctx context.Context, cfg *topology.Config, group string, n int) time.Time {
	t.Helper()
	admin, err := topology.NewClusterAdmin(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for {
		descs, err := admin.DescribeConsumerGroups([]string{group})
		if err != nil {
			t.Fatal(err)
		}
		if len(descs) == 1 && descs[0].State == "Stable" && len(descs[0].Members) == n {
			return time.Now()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("group %s never stable with %d members", group, n)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitTopicsGone waits until the deleted topics of cfg are gone.
func waitTopicsGone(t testing.TB, ctx context.Context, cfg *topology.Config) {
	t.Helper()
	admin, err := topology.NewClusterAdmin(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for {
		topics, err := admin.ListTopics()
		if err != nil {
			t.Fatal(err)
		}
		left := 0
		for _, spec := range topology.New(cfg).Topics() {
			if _, ok := topics[spec.Name]; ok {
				left++
			}
		}
		if left == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal("topics not deleted")
		case <-time.After(100 * time.Millisecond):
		}
	}
}
