// Package codecs holds the platform's wire formats: the Event that the capture
// appends to the history topic and the router fans out, and the State that the
// snapshot tables keep per entity. Both are JSON documents, so any consumer in
// any language can read them; Codec is generic over the Go type and GokaCodec
// adapts it to goka.
//
// # Event
//
//	{
//	  "type": "account",                     entity type (the config's entities[].type)
//	  "id": "42",                            the entity's key, its canonical text (see Keys)
//	  "op": "update",                        snapshot | insert | update | delete | truncate
//	  "after": {"id": 42, "name": "acme"},   the row after the change (insert, update)
//	  "before": {"id": 42},                  the old row or key, where PostgreSQL sends it
//	  "unchanged": ["blob"],                 unchanged TOASTed columns that were not sent
//	  "xid": 750,                            PostgreSQL transaction id
//	  "commit_lsn": "0/1A2B3C4",             LSN of the transaction's commit record
//	  "position": "0000000001A2B3C4:00000002", commit LSN and index in the transaction
//	  "commit_time": "2026-11-25T20:00:00.123456Z",
//	  "capture_time": "2026-11-25T20:00:00.125Z",
//	  "id_kind": "uuid"                      the key's kind, written last; left out for an integer key
//	}
//
// Positions strictly increase along the history; their text form sorts in
// the same order as the positions themselves. Rows of the initial snapshot
// (op "snapshot", xid 0) sit just before the slot's first change: their
// commit_lsn is the slot's consistent point minus one, their index counts
// the copied rows, and their commit_time is when the snapshot was taken.
//
// # Keys
//
// Every entity type is keyed by its table's key columns (the primary key or
// a unique NOT NULL index), and every entity by its Key: one canonical text,
// used as the record key of the entity in its events topic and snapshot
// table, as "id" in its events and states, and, URL-escaped, as its path
// segment over HTTP. The history's record key is "<type>/<key text>". The
// text depends on the kind, which the types of the key columns fix:
//
//	integer    one smallint, integer or bigint column: decimal, "42", "-7"
//	uuid       one uuid column: lowercase hyphenated, "0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70"
//	text       one text, varchar or char(n) column: the value, UTF-8, as PostgreSQL prints it
//	composite  several columns: the JSON array of each part's text, ["acme","42"]
//
// A composite key is written as RFC 8785 (the JSON Canonicalization
// Scheme) writes an array of strings: no whitespace; in strings only '"',
// '\' and control characters escaped (\b \t \n \f \r, else \u00xx);
// everything else verbatim. JavaScript's JSON.stringify(parts) and Python's
// json.dumps(parts, separators=(",", ":"), ensure_ascii=False) write the
// same bytes, so a part holding a comma, a slash or a bracket never
// collides with another key. Integer keys are exactly the decimal ids of
// the versions before other kinds, so their topics need no migration.
//
// The partition of a key in a topic of n partitions is FNV-1a (32 bits)
// of the key's UTF-8 bytes, as a signed 32-bit integer, remainder by n,
// then its absolute value (sarama's hash partitioner with goka's hasher;
// topology.PartitionOf). Keys are at most MaxKeyBytes long; a text key may
// not start with ReservedKeyPrefix, which the truncate markers use.
//
// Views order keys as Key.Compare does: integer keys by value, the other
// kinds by the bytes of their text, which for uuids and text is their
// natural order (text as PostgreSQL's "C" collation sorts it).
//
// # The rule of the tables
//
// One rule decides what a snapshot table keeps, and every part asks the
// same functions: Judge says whether a change supersedes the stored state,
// is its own redelivery (Rewrite) or is older (Skip), a TRUNCATE marker
// included; Base is what a superseding change applies to; VisibleAfter says
// whether a reader sees a stored state under the partition's TRUNCATE
// marker; State.Obsolete says when a table may replace a state by a Kafka
// tombstone (a delete after topics.delete_grace, or a state a TRUNCATE
// removed). The snapshot processors, the views and the history reader call
// them; none compares positions on its own.
//
// # Column values
//
// A row maps column names to JSON values, decoded from PostgreSQL's text
// format without loss: smallint, integer, bigint and oid are JSON numbers;
// real and double precision are JSON numbers, or the strings "NaN",
// "Infinity" and "-Infinity"; boolean is true or false; json and jsonb are
// embedded as JSON; NULL is null; every other type (numeric, text, uuid,
// timestamps, bytea as \x hex, arrays, enums, ...) is a JSON string holding
// PostgreSQL's text form, so numeric keeps every digit. A column whose value
// PostgreSQL did not send (an unchanged TOASTed value) is absent from the row
// and listed in "unchanged"; it is never null.
package codecs
