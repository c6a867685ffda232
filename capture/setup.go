package capture

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

// table is a captured table as the capture resolved it at start.
type table struct {
	schema, name string
	entityType   string
	// keyColumns are the columns of the entity key, in the order of a
	// composite key's parts (topology.EntityConfig.KeyColumns).
	keyColumns []string
	// key is what checkTable learnt of the key columns in the database.
	key tableKey
}

// tableKey is what the capture needs to know of a table's key columns,
// each slice in keyColumns order.
type tableKey struct {
	kinds []codecs.KeyKind // the kind of each column's own key
	types []string         // format_type of each column, for casts
	// collations are each column's collation, quoted for SQL ("" for uuid
	// and integers): comparing text parts as the table's index does.
	collations []string
	// order lists the key columns (indexes into keyColumns) in the order of
	// the unique index they make up: the snapshot pages through the table
	// in this order, so the index serves it.
	order []int
}

// kind returns the kind of the table's keys.
func (t table) kind() codecs.KeyKind {
	if len(t.keyColumns) > 1 {
		return codecs.KeyComposite
	}
	if len(t.key.kinds) == 0 {
		return codecs.KeyInteger
	}
	return t.key.kinds[0]
}

// columnList names the key columns for messages: "id" or "(tenant, id)".
func (t table) columnList() string {
	if len(t.keyColumns) == 1 {
		return t.keyColumns[0]
	}
	return "(" + strings.Join(t.keyColumns, ", ") + ")"
}

// keyValues returns the text of each key column of k, in keyColumns order:
// what PostgreSQL prints for them.
func (t table) keyValues(k codecs.Key) ([]string, error) {
	if k.Kind() != t.kind() {
		return nil, fmt.Errorf("table %s: key %q is %s, the table's keys are %s", t.qualified(), k, k.Kind(), t.kind())
	}
	if k.Kind() == codecs.KeyComposite {
		parts := k.Parts()
		if len(parts) != len(t.keyColumns) {
			return nil, fmt.Errorf("table %s: key %s has %d parts, the table has %d key columns", t.qualified(), k, len(parts), len(t.keyColumns))
		}
		return parts, nil
	}
	return []string{k.String()}, nil
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
		out[i] = table{schema: schema, name: name, entityType: e.Type, keyColumns: e.KeyColumns()}
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

// checkTable verifies that t exists, that its key columns are NOT NULL, of
// a type that can hold a key, and together the columns of its primary key
// or of a unique, non-partial index, and that its replica identity lets
// PostgreSQL send the key of a deleted or updated row. It returns t with
// what it learnt of the key columns.
func checkTable(ctx context.Context, conn *pgx.Conn, t table) (table, error) {
	var relID uint32
	var identity string
	err := conn.QueryRow(ctx, `
		select c.oid, c.relreplident::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
		where n.nspname = $1 and c.relname = $2 and c.relkind in ('r', 'p')`, t.schema, t.name).Scan(&relID, &identity)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, setupErr("table %s (entity type %s) does not exist", t.qualified(), t.entityType)
	}
	if err != nil {
		return t, fmt.Errorf("look up table %s: %w", t.qualified(), err)
	}
	n := len(t.keyColumns)
	key := tableKey{kinds: make([]codecs.KeyKind, n), types: make([]string, n), collations: make([]string, n)}
	attnums := make([]int16, n)
	for i, col := range t.keyColumns {
		var typeOID uint32
		var notNull bool
		err = conn.QueryRow(ctx, `
			select a.attnum, a.atttypid, format_type(a.atttypid, a.atttypmod), a.attnotnull,
			       coalesce(quote_ident(cn.nspname) || '.' || quote_ident(co.collname), '')
			from pg_attribute a
			left join pg_collation co on co.oid = a.attcollation
			left join pg_namespace cn on cn.oid = co.collnamespace
			where a.attrelid = $1 and a.attname = $2 and a.attnum > 0 and not a.attisdropped`, relID, col).
			Scan(&attnums[i], &typeOID, &key.types[i], &notNull, &key.collations[i])
		if errors.Is(err, pgx.ErrNoRows) {
			return t, setupErr("table %s has no key column %q (entities[].id_column or key_columns)", t.qualified(), col)
		}
		if err != nil {
			return t, fmt.Errorf("look up %s.%s: %w", t.qualified(), col, err)
		}
		base, err := baseType(ctx, conn, typeOID)
		if err != nil {
			return t, fmt.Errorf("look up the type of %s.%s: %w", t.qualified(), col, err)
		}
		kind, ok := codecs.KeyColumnKind(base)
		if !ok {
			return t, setupErr("key column %s.%s is %s: a key column must be %s (not citext, numeric, timestamp or any other type); key the entity by another column (entities[].id_column or key_columns)",
				t.qualified(), col, key.types[i], codecs.KeyTypes)
		}
		key.kinds[i] = kind
		if !notNull {
			return t, setupErr("key column %s.%s may be NULL: an entity key must identify one row (ALTER TABLE %s ALTER COLUMN %s SET NOT NULL)",
				t.qualified(), col, t.quoted(), pgx.Identifier{col}.Sanitize())
		}
	}
	// The primary key first, then the oldest unique index: the key columns
	// must be exactly its key columns, in any order.
	rows, err := conn.Query(ctx, `
		select i.indkey::int2[], i.indnkeyatts from pg_index i
		where i.indrelid = $1 and i.indisunique and i.indisvalid and i.indpred is null and i.indexprs is null
		order by i.indisprimary desc, i.indexrelid`, relID)
	if err != nil {
		return t, fmt.Errorf("look up the indexes of %s: %w", t.qualified(), err)
	}
	indexes, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([]int16, error) {
		var cols []int16
		var nkey int
		err := r.Scan(&cols, &nkey)
		return cols[:min(nkey, len(cols))], err
	})
	if err != nil {
		return t, fmt.Errorf("look up the indexes of %s: %w", t.qualified(), err)
	}
	for _, cols := range indexes {
		if order, ok := indexOrder(cols, attnums); ok {
			key.order = order
			break
		}
	}
	if key.order == nil {
		if n == 1 {
			return t, setupErr("key column %s.%s has no unique index of its own: an entity key must identify one row (make it the primary key)", t.qualified(), t.keyColumns[0])
		}
		return t, setupErr("key columns %s of table %s are not the columns of its primary key or of a unique, non-partial index: an entity key must identify one row (make them the primary key, or CREATE UNIQUE INDEX ON %s %s)",
			t.columnList(), t.qualified(), t.quoted(), t.columnList())
	}
	switch identity {
	case "f":
	case "n":
		return t, setupErr("table %s has REPLICA IDENTITY NOTHING: deletes would carry no key; use ALTER TABLE %s REPLICA IDENTITY DEFAULT (with a primary key on %s) or FULL", t.qualified(), t.quoted(), t.columnList())
	default:
		var ident []int16
		err := conn.QueryRow(ctx, `
			select i.indkey::int2[] from pg_index i
			where i.indrelid = $1 and (($2 = 'd' and i.indisprimary) or ($2 = 'i' and i.indisreplident))`, relID, identity).Scan(&ident)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return t, fmt.Errorf("look up the replica identity of %s: %w", t.qualified(), err)
		}
		var missing []string
		for i, a := range attnums {
			if !slices.Contains(ident, a) {
				missing = append(missing, t.keyColumns[i])
			}
		}
		if len(missing) > 0 {
			return t, setupErr("table %s: key column(s) %s not part of its replica identity, so deletes would carry no key; make the key the primary key or use ALTER TABLE %s REPLICA IDENTITY FULL",
				t.qualified(), strings.Join(missing, ", "), t.quoted())
		}
	}
	t.key = key
	return t, nil
}

// indexOrder returns the positions in attnums of an index's key columns,
// in the index's order, if they are exactly the columns attnums holds.
func indexOrder(indexCols, attnums []int16) ([]int, bool) {
	if len(indexCols) != len(attnums) {
		return nil, false
	}
	order := make([]int, 0, len(indexCols))
	for _, a := range indexCols {
		i := slices.Index(attnums, a)
		if i < 0 || slices.Contains(order, i) {
			return nil, false
		}
		order = append(order, i)
	}
	return order, true
}

// baseType follows a domain down to its base type.
func baseType(ctx context.Context, conn *pgx.Conn, oid uint32) (uint32, error) {
	for range 100 {
		var typtype string
		var base uint32
		if err := conn.QueryRow(ctx, "select typtype::text, typbasetype from pg_type where oid = $1", oid).Scan(&typtype, &base); err != nil {
			return 0, err
		}
		if typtype != "d" {
			return oid, nil
		}
		oid = base
	}
	return 0, fmt.Errorf("type %d: domains nested too deep", oid)
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
			"Nothing was re-created. To recover without a gap in the snapshot tables, start the capture with --resync (it drops the slot and copies every table again, writing what differs); "+
			"to start over and accept the gap: select pg_drop_replication_slot('%s'); then start the capture once with --recreate-slot, which takes a new snapshot",
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
