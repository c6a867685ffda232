package capture_test

import (
	"context"
	"fmt"
	"log"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/capture"
)

// Ask the capture of slot "changes" to copy the campaigns with ids 1000 to
// 1999 again while it streams (what `changes snapshot --type campaign
// --from 1000 --to 1999` does). The request is a message in the WAL, so it
// takes effect in commit order, after every change committed before it.
func ExampleRequestSnapshot() {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, "postgres://postgres@127.0.0.1/app")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := capture.RequestSnapshot(ctx, conn, "changes", "campaign", "1000", "1999"); err != nil {
		log.Fatal(err)
	}
	// The same message, as a DBA would write it in psql:
	fmt.Printf("select pg_logical_emit_message(true, '%s', '{\"snapshot\":\"campaign\",\"from\":\"1000\",\"to\":\"1999\"}')\n",
		capture.SignalPrefix("changes"))
}
