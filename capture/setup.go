package capture

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

// table is a captured table as the capture resolved it at start.
type table struct {
	schema, name string
	entityType   string
	idColumn     string
}

func (t table) qualified() string { return t.schema + "." + t.name }

// quoted returns the table name for SQL, each part quoted.
func (t table) quoted() string {
	return pgx.Identifier{t.schema, t.name}.Sanitize()
}

// publicationNames is pgoutput's publication_names option for START_REPLICATION.
// Its value is a string literal holding a list that pgoutput splits with
// SplitIdentifierString, which folds an unquoted name to lower case: the name
// is double-quoted inside the literal, so "ChangesPub" stays ChangesPub.
func publicationNames(publication string) string {
	return "publication_names " + quoteLiteral(pgx.Identifier{publication}.Sanitize())
}

func tablesOf(cfg *topology.Config) []table {
	out := make([]table, len(cfg.Entities))
	for i, e := range cfg.Entities {
		schema, name, _ := strings.Cut(e.Table, ".")
		out[i] = table{schema: schema, name: name, entityType: e.Type, idColumn: e.IDColumn}
	}
	return out
}

func setupErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrSetup, fmt.Sprintf(format, args...))
}

// checkServer verifies that the server can decode logical changes.
func checkServer(ctx context.Context, conn *pgx.Conn) error {
	var walLevel string
	if err := conn.QueryRow(ctx, "show wal_level").Scan(&walLevel); err != nil {
		return fmt.Errorf("read wal_level: %w", err)
	}
	if walLevel != "logical" {
		return setupErr("wal_level is %q: set wal_level = logical in postgresql.conf and restart the server", walLevel)
	}
	return nil
}

// checkTable verifies that t exists, that its id column is a 64-bit-safe
// integer, and that its replica identity lets PostgreSQL send the id of a
// deleted or updated row.
func checkTable(ctx context.Context, conn *pgx.Conn, t table) error {
	var relID uint32
	var identity string
	err := conn.QueryRow(ctx, `
		select c.oid, c.relreplident::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
		where n.nspname = $1 and c.relname = $2 and c.relkind in ('r', 'p')`, t.schema, t.name).Scan(&relID, &identity)
	if errors.Is(err, pgx.ErrNoRows) {
		return setupErr("table %s (entity type %s) does not exist", t.qualified(), t.entityType)
	}
	if err != nil {
		return fmt.Errorf("look up table %s: %w", t.qualified(), err)
	}
	var typ string
	var inKey, unique bool
	err = conn.QueryRow(ctx, `
		select format_type(a.atttypid, a.atttypmod),
		       exists (select 1 from pg_index i where i.indrelid = a.attrelid and a.attnum = any(i.indkey)
		               and ((c.relreplident = 'd' and i.indisprimary) or (c.relreplident = 'i' and i.indisreplident))),
		       a.attnotnull and exists (select 1 from pg_index i where i.indrelid = a.attrelid and i.indisunique
		               and i.indpred is null and i.indnkeyatts = 1 and i.indkey[0] = a.attnum)
		from pg_attribute a join pg_class c on c.oid = a.attrelid
		where a.attrelid = $1 and a.attname = $2 and a.attnum > 0 and not a.attisdropped`, relID, t.idColumn).Scan(&typ, &inKey, &unique)
	if errors.Is(err, pgx.ErrNoRows) {
		return setupErr("table %s has no id column %q (entities[].id_column)", t.qualified(), t.idColumn)
	}
	if err != nil {
		return fmt.Errorf("look up %s.%s: %w", t.qualified(), t.idColumn, err)
	}
	switch typ {
	case "smallint", "integer", "bigint":
	default:
		return setupErr("id column %s.%s is %s: it must be smallint, integer or bigint", t.qualified(), t.idColumn, typ)
	}
	if !unique {
		return setupErr("id column %s.%s is not NOT NULL with a unique index of its own: an entity id must identify one row (make it the primary key)", t.qualified(), t.idColumn)
	}
	switch identity {
	case "f":
	case "n":
		return setupErr("table %s has REPLICA IDENTITY NOTHING: deletes would carry no id; use ALTER TABLE %s REPLICA IDENTITY DEFAULT (with a primary key on %s) or FULL", t.qualified(), t.quoted(), t.idColumn)
	default:
		if !inKey {
			return setupErr("table %s: id column %s is not part of its replica identity, so deletes would carry no id; make it the primary key or use ALTER TABLE %s REPLICA IDENTITY FULL", t.qualified(), t.idColumn, t.quoted())
		}
	}
	return nil
}

// ensurePublication creates the publication for the tables, or adds the
// tables it lacks. The publication belongs to this deployment: one that
// publishes all tables or a table no entity type declares is an error here,
// not a change the stream cannot place later. Partitioned tables are published
// through their root (publish_via_partition_root), so their changes carry the
// declared table's name.
func ensurePublication(ctx context.Context, conn *pgx.Conn, name string, tables []table) error {
	var exists, allTables, viaRoot bool
	err := conn.QueryRow(ctx, "select true, puballtables, pubviaroot from pg_publication where pubname = $1", name).Scan(&exists, &allTables, &viaRoot)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("look up publication %s: %w", name, err)
	}
	quoted := pgx.Identifier{name}.Sanitize()
	if !exists {
		names := make([]string, len(tables))
		for i, t := range tables {
			names[i] = t.quoted()
		}
		sql := fmt.Sprintf("create publication %s for table %s with (publish_via_partition_root = true)", quoted, strings.Join(names, ", "))
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("create publication %s: %w", name, err)
		}
		return nil
	}
	if allTables {
		return setupErr("publication %s publishes all tables: give this deployment a publication of its own (postgres.publication)", name)
	}
	declared := map[string]bool{}
	for _, t := range tables {
		declared[t.qualified()] = true
		var partitioned bool
		if err := conn.QueryRow(ctx, "select relkind = 'p' from pg_class where oid = $1::regclass", t.quoted()).Scan(&partitioned); err != nil {
			return fmt.Errorf("look up table %s: %w", t.qualified(), err)
		}
		if partitioned && !viaRoot {
			return setupErr("table %s is partitioned and publication %s does not publish via the root: ALTER PUBLICATION %s SET (publish_via_partition_root = true)", t.qualified(), name, quoted)
		}
	}
	rows, err := conn.Query(ctx, "select schemaname || '.' || tablename from pg_publication_tables where pubname = $1", name)
	if err != nil {
		return fmt.Errorf("look up publication %s: %w", name, err)
	}
	published, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("look up publication %s: %w", name, err)
	}
	have := map[string]bool{}
	for _, p := range published {
		if !declared[p] {
			return setupErr("publication %s also publishes %s, which no entity type declares: declare it, or give this deployment a publication of its own (postgres.publication)", name, p)
		}
		have[p] = true
	}
	for _, t := range tables {
		if have[t.qualified()] {
			continue
		}
		sql := fmt.Sprintf("alter publication %s add table %s", quoted, t.quoted())
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("add %s to publication %s: %w", t.qualified(), name, err)
		}
	}
	return nil
}

// slotState is what the capture needs to know about an existing slot.
type slotState struct {
	exists         bool
	confirmedFlush codecs.LSN
	walStatus      string // reserved, extended, unreserved (about to be lost)
}

// inspectSlot reads the slot and fails loudly on a slot that cannot serve
// the capture: lost WAL, another plugin, another database.
func inspectSlot(ctx context.Context, conn *pgx.Conn, slot string) (slotState, error) {
	var plugin, walStatus, database, lsn string
	err := conn.QueryRow(ctx, `
		select coalesce(plugin, ''), coalesce(wal_status, ''), coalesce(database, ''), coalesce(confirmed_flush_lsn::text, '')
		from pg_replication_slots where slot_name = $1`, slot).Scan(&plugin, &walStatus, &database, &lsn)
	if errors.Is(err, pgx.ErrNoRows) {
		return slotState{}, nil
	}
	if err != nil {
		return slotState{}, fmt.Errorf("look up slot %s: %w", slot, err)
	}
	if plugin != "pgoutput" {
		return slotState{}, setupErr("replication slot %s uses plugin %q, not pgoutput: choose another postgres.slot or drop it", slot, plugin)
	}
	var current string
	if err := conn.QueryRow(ctx, "select current_database()").Scan(&current); err != nil {
		return slotState{}, fmt.Errorf("read current database: %w", err)
	}
	if database != current {
		return slotState{}, setupErr("replication slot %s belongs to database %q, not %q: choose another postgres.slot", slot, database, current)
	}
	if walStatus == "lost" {
		return slotState{}, fmt.Errorf("%w: slot %s (confirmed up to %s): PostgreSQL removed WAL the slot still needed, so changes after that point are gone from the stream. "+
			"Nothing was re-created. To start over and accept the gap: select pg_drop_replication_slot('%s'); then start the capture once with --recreate-slot, which takes a new snapshot",
			ErrSlotLost, slot, lsn, slot)
	}
	st := slotState{exists: true, walStatus: walStatus}
	if lsn != "" {
		if st.confirmedFlush, err = codecs.ParseLSN(lsn); err != nil {
			return slotState{}, fmt.Errorf("slot %s: %w", slot, err)
		}
	}
	return st, nil
}
