package workload

import "errors"

// ErrConnLost marks an error after which the worker's connection is gone:
// connecting failed, the connection closed during the transaction (or pgx
// found it closed: pgconn.ErrConnClosed), or
// PostgreSQL answered with SQLSTATE class 08 (connection exception) or 57
// (operator intervention, such as a shutdown). Config.OnError tells it with
// errors.Is; the worker connects anew before its next transaction.
var ErrConnLost = errors.New("connection to postgresql lost")
