// Package server exposes views and the history over HTTP with JSON, for
// `changes serve` and for services that mount it in their own mux.
//
//	GET /v1/entities/{type}/{id}                    latest state of one entity
//	GET /v1/entities/{type}/{id}?min_lsn=LSN        the same, once the view holds every change committed up to LSN
//	GET /v1/entities/{type}?after=ID&limit=N        a page of entities in key order (min_lsn= too)
//	GET /v1/history/{type}/{id}?after=OFFSET&limit=N  a page of the entity's changes in the history
//	GET /v1/history/{type}/{id}?at=T                its state at T (RFC 3339 time, or a history offset)
//	GET /v1/history/{type}?at=T                     every entity of the type at T, one JSON line each
//	GET /v1/changes/{type}?from=OFFSET              the type's changes as server-sent events, live
//	GET /healthz                                    the process serves
//	GET /readyz                                     every view has caught up and reaches Kafka (503 else)
//
// Answers that read a view carry X-Changes-Synced-At and X-Changes-Stale:
// how current its local copy is (reads go on from it while Kafka is away).
// They also carry X-Changes-Applied-LSN and X-Changes-Applied-Commit-Time:
// the view's progress watermark when it read the answer, which holds every
// change committed before that LSN (views.View.AppliedThrough; for one
// entity, its partition's). /readyz says each view's as applied_lsn.
//
// Read-your-writes: a client that has just committed sends the LSN of
// "select pg_current_wal_insert_lsn()" run after its COMMIT as min_lsn=
// (PostgreSQL's text form, 16/B374D848); the answer waits until the view
// has applied it, for at most Config.MaxWait, then 503 with Retry-After.
// The wait holds the request's turn (Config.MaxInFlight): a client that
// asks for an LSN the database never reaches holds it for MaxWait.
//
// The whole type at T is every entity that existed then, one history.Entity
// a line (application/x-ndjson, what `changes asof` prints), in id order,
// with X-Changes-History-Offset: the first history offset it does not
// include. It holds a HistoryScans turn while it is written. The index
// decodes only the entities changed since its last checkpoint before T; the
// scan needs the history from its start (410 once retention removed it).
// An error after the first line cuts the answer off (the chunked body ends
// without its last chunk) rather than end a shorter list as if whole.
//
// An ?at= answer carries X-Changes-History-Source: "index" when the history
// index (Config.HistoryIndex, views/history.Index) answered, in
// milliseconds, "scan" when the history was read from its start because
// the index is off or has not read up to the asked moment yet (absent when
// at= is no moment of the history: 400, or 410 before its start). Both
// answer the same, errors included.
// Ids travel as strings, like in the events: a 64-bit id stays exact in
// every JSON reader. An {id} or after= is the entity key's canonical text
// (codecs.Key), URL-escaped ("a%2Fb" for the text key a/b), read as a key
// of the kind the view holds; keys of a view of text keys sort by their
// bytes ("10" before "9"). An empty after= is the start of the list, except
// in a view of text keys, where it is the key "" (the first there may be).
// The empty text key has no path of its own (a path segment is never
// empty): it is listed, and read through the Go API.
//
// # Pages
//
// A page of entities (limit 1 to MaxLimit, DefaultLimit when absent) or of
// changes (up to MaxLimit) ends early once its JSON would pass
// Config.MaxResponseBytes; next_after, when present, is the after= of the
// next page, and its absence means the page ended the list. A page holds at
// least one item, however large, so that paging always moves on. The
// changes are paged by history offset: a client that follows next_after
// sees every change once, in history order, changes made meanwhile
// included.
//
// # Change streams
//
// /v1/changes/{type} streams the type's changes from the history as
// server-sent events (text/event-stream), for services not written in Go:
// each event's id is its history offset, its event name the op (insert,
// update, delete, snapshot, truncate, or resync for the marker of a resync
// that copied the type), its data the event's JSON (codecs.Event); a
// comment every KeepAlive keeps proxies from closing an idle stream. An
// EventSource receives them with addEventListener(op, ...): named events
// do not reach onmessage. The stream starts after the Last-Event-ID
// header's offset (an EventSource sends it when it reconnects), else at
// from=OFFSET, else at the history's end (then it first sends that
// position as an id, so a client that leaves before any change resumes
// there). Resuming with the last id received neither misses nor repeats a
// change: the history is read at read_committed, in order, each stream on
// a Kafka client of its own. A stream holds no /v1 request turn;
// Config.MaxSubscriptions bounds the streams (503 beyond; an EventSource
// stops reconnecting after any answer but 200, so a client should retry
// then), each write must finish within Config.WriteTimeout (30 s when
// zero) or the client is dropped, and closing Config.Shutdown ends them. A
// stream that fails sends an event stream-error whose data names a
// request id the log has the detail under. HEAD answers the headers only.
// The same tokens are required. A stream from an old offset reads the
// history from there, as /v1/history does, without a HistoryScans turn.
//
// # Errors
//
// Errors are JSON {"error": "..."} with 400 (bad id, time, offset or
// limit), 401 (token missing or wrong), 404 (unknown path or type, no such
// entity), 405 (a method other than GET or HEAD on a path served, with
// Allow), 410 (older than the history) and 503 (not ready, or too many requests:
// then with Retry-After). A 500 says only {"error": "internal error",
// "id": "..."}: the detail is logged with the same request_id.
//
// # Hostile clients
//
// Every answer carries X-Content-Type-Options: nosniff. Bearer tokens are
// compared in constant time, and several are accepted at once, for
// rotation. The /v1 requests served at once are bounded, and so is the
// number waiting for a turn and the wait (Config.MaxInFlight, MaxWaiting,
// MaxWait); the /v1/history requests reading the history at once too
// (HistoryScans), each giving its turn back before it writes its answer;
// an ?at= answer from the history index takes no such turn.
// With Config.WriteTimeout, writing an answer may take that long from its
// first byte, however long computing it took, so a client that stops
// reading frees its turn then; the http.Server's own ReadTimeout,
// IdleTimeout and ReadHeaderTimeout are the mounting program's to set.
package server
