// Package workload is the engine of the PostgreSQL write workloads that the
// demo (changes demo), the bench (cmd/changes-bench) and the end-to-end tests
// commit while the platform captures: workers, pacing, a pause gate,
// counters and a hook per commit. What a workload writes, its mix, stays
// with its user.
//
// # Workers
//
// Start runs Config.Workers goroutines. Each begins a transaction, on a
// connection of a pgxpool.Pool (Config.Pool) or of its own (Config.URL),
// hands it to Config.Txn with the worker's number and its own *rand.Rand,
// and commits. A transaction is counted, and Config.Commit sees it, only
// once COMMIT returned without error, or Config.Resolve said an in-doubt
// COMMIT went through.
//
// # Pacing
//
// Config.Rate paces transactions per second, Config.ChangeRate changes per
// second (transactions at ChangeRate over the changes per transaction seen
// so far); neither runs the workers flat out. The pace is for the workload
// as a whole: a token per transaction that any idle worker takes. A paused
// workload's clock stops, so a pause is not followed by a burst.
//
// # Stopping
//
// The workload stops when its context is done, when Stop is called, when it
// reached Config.Transactions or Config.Changes, or on its first error
// (Config.OnError may let a worker ride errors out instead). Wait returns
// that first error; cancellation is not an error.
//
// # Example
//
//	w, err := workload.Start(ctx, workload.Config[struct{}]{
//		URL:     url,
//		Workers: 4,
//		Rate:    100, // transactions per second, all workers together
//		Txn: func(ctx context.Context, tx pgx.Tx, worker int, rnd *rand.Rand) (int, struct{}, error) {
//			tag, err := tx.Exec(ctx, "update item set n = n + 1 where id = $1", 1+rnd.IntN(100))
//			return int(tag.RowsAffected()), struct{}{}, err
//		},
//	})
//	if err != nil {
//		return err
//	}
//	time.Sleep(time.Second)
//	err = w.Stop() // the first error, if any
package workload
