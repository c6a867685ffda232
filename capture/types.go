package capture

import (
	"context"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// firstUserOID is where the OIDs of user-defined objects start
// (FirstNormalObjectId); built-in types below it are never domains we map.
const firstUserOID = 16384

// domains maps user-defined domain types to their base types, so a domain
// over integer travels as a JSON number like integer does, and matches what
// a SELECT of the column reports. It looks types up once, on a connection of
// its own, when a Relation message names them.
type domains struct {
	url  string
	conn *pgx.Conn
	base map[uint32]uint32 // type OID -> base type OID (itself if not a domain)
}

func newDomains(url string) *domains { return &domains{url: url, base: map[uint32]uint32{}} }

// resolve replaces every domain column type in m by the domain's base type.
func (d *domains) resolve(ctx context.Context, m *pglogrepl.RelationMessage) error {
	for _, c := range m.Columns {
		if c.DataType < firstUserOID {
			continue
		}
		base, err := d.baseOf(ctx, c.DataType)
		if err != nil {
			return fmt.Errorf("type of %s.%s.%s: %w", m.Namespace, m.RelationName, c.Name, err)
		}
		c.DataType = base
	}
	return nil
}

func (d *domains) baseOf(ctx context.Context, oid uint32) (uint32, error) {
	if b, ok := d.base[oid]; ok {
		return b, nil
	}
	if d.conn == nil {
		conn, err := pgx.Connect(ctx, d.url)
		if err != nil {
			return 0, fmt.Errorf("connect to postgres: %w", err)
		}
		d.conn = conn
	}
	// A domain over a domain: follow typbasetype down to a non-domain type.
	var base uint32
	err := d.conn.QueryRow(ctx, `
		with recursive chain(oid, typtype, typbasetype) as (
			select oid, typtype, typbasetype from pg_type where oid = $1
			union all
			select t.oid, t.typtype, t.typbasetype from pg_type t join chain c on t.oid = c.typbasetype where c.typtype = 'd'
		)
		select oid from chain where typtype <> 'd'`, oid).Scan(&base)
	if err != nil {
		return 0, fmt.Errorf("look up type %d: %w", oid, err)
	}
	d.base[oid] = base
	return base, nil
}

func (d *domains) close() {
	if d.conn != nil {
		d.conn.Close(context.Background())
	}
}
