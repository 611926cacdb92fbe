import type { IndexRows } from '../search/index-values.ts';
import type { Queryable } from '../../db/pool.ts';

export interface VersionRow {
  resourceType: string;
  id: string;
  projectId: string;
  versionId: string;
  lastUpdated: string;
  content: string;
  /** The bytes of a Binary version (stored in binary_content); null for every other type. */
  binaryData: Buffer | null;
}

/** Each index table: its columns after `rid`, their Postgres types, and where its values are in IndexRows. */
const INDEX_TABLES: { table: string; alias: string; columns: [string, string, (rows: IndexRows) => unknown[]][] }[] = [
  {
    table: 'sp_token',
    alias: 'it',
    columns: [
      ['param', 'int', (r) => r.token.param],
      ['grp', 'smallint', (r) => r.token.grp],
      ['system', 'text', (r) => r.token.system],
      ['code', 'text', (r) => r.token.code],
      ['text', 'text', (r) => r.token.text],
    ],
  },
  {
    table: 'sp_string',
    alias: 'ist',
    columns: [
      ['param', 'int', (r) => r.string.param],
      ['grp', 'smallint', (r) => r.string.grp],
      ['norm', 'text', (r) => r.string.norm],
      ['exact', 'text', (r) => r.string.exact],
    ],
  },
  {
    table: 'sp_date',
    alias: 'idt',
    columns: [
      ['param', 'int', (r) => r.date.param],
      ['grp', 'smallint', (r) => r.date.grp],
      ['low', 'timestamptz', (r) => r.date.low],
      ['high', 'timestamptz', (r) => r.date.high],
    ],
  },
  {
    table: 'sp_quantity',
    alias: 'iq',
    columns: [
      ['param', 'int', (r) => r.quantity.param],
      ['grp', 'smallint', (r) => r.quantity.grp],
      ['value', 'numeric', (r) => r.quantity.value],
      ['low', 'numeric', (r) => r.quantity.low],
      ['high', 'numeric', (r) => r.quantity.high],
      ['system', 'text', (r) => r.quantity.system],
      ['code', 'text', (r) => r.quantity.code],
    ],
  },
  {
    table: 'sp_reference',
    alias: 'ir',
    columns: [
      ['param', 'int', (r) => r.reference.param],
      ['grp', 'smallint', (r) => r.reference.grp],
      ['target_type', 'text', (r) => r.reference.targetType],
      ['target_id', 'text', (r) => r.reference.targetId],
      ['ref', 'text', (r) => r.reference.ref],
    ],
  },
];

/** Column arrays for the index tables, in the order insertIndexCtes binds them. */
function indexParams(rows: IndexRows): unknown[] {
  return INDEX_TABLES.flatMap((t) => t.columns.map(([, , values]) => values(rows)));
}

/** CTEs that insert the index rows for the `rid` of CTE `w`, bind parameters numbered from $first on. */
function insertIndexCtes(first: number): string {
  let n = first;
  return INDEX_TABLES.map(({ table, alias, columns }) => {
    const names = columns.map(([name]) => name).join(', ');
    const arrays = columns.map(([, type]) => `$${n++}::${type}[]`).join(', ');
    return `
  ${alias} AS (INSERT INTO ${table} (rid, ${names}) SELECT w.rid, u.* FROM w, unnest(${arrays}) u)`;
  }).join(',');
}

const DELETE_INDEX_CTES = `
  dt AS (DELETE FROM sp_token WHERE rid = $1),
  ds AS (DELETE FROM sp_string WHERE rid = $1),
  dd AS (DELETE FROM sp_date WHERE rid = $1),
  dq AS (DELETE FROM sp_quantity WHERE rid = $1),
  dr AS (DELETE FROM sp_reference WHERE rid = $1)`;

// Each write also adds its outbox row (docs/decisions/0009) in the same statement, so the row commits
// or rolls back with the write. AuditEvents trigger nothing and would only fill the outbox.

/** Inserts a new resource, its first history row, its Binary bytes and its index rows in one statement. */
export async function insertResource(db: Queryable, v: VersionRow, rows: IndexRows): Promise<string> {
  const sql = `WITH
  w AS (INSERT INTO resource (resource_type, id, project_id, version_id, last_updated, content)
        VALUES ($1, $2, $3, $4, $5, $6) RETURNING rid),
  h AS (INSERT INTO resource_history (version_id, rid, resource_type, id, project_id, last_updated, operation, content)
        SELECT $4, w.rid, $1, $2, $3, $5, 'C', $6 FROM w),
  o AS (INSERT INTO outbox (project_id, resource_type, resource_id, version_id, interaction)
        SELECT $3::uuid, $1, $2, $4::uuid, 'create' FROM w WHERE $1 <> 'AuditEvent'),
  b AS (INSERT INTO binary_content (version_id, rid, data) SELECT $4, w.rid, $7::bytea FROM w WHERE $7::bytea IS NOT NULL),${insertIndexCtes(8)}
  SELECT rid FROM w`;
  const result = await db.query<{ rid: string }>({
    name: 'ermis_insert_resource',
    text: sql,
    values: [v.resourceType, v.id, v.projectId, v.versionId, v.lastUpdated, v.content, v.binaryData, ...indexParams(rows)],
  });
  return result.rows[0].rid;
}

/** Replaces the current version of an existing row (also reviving a deleted one) and its index rows. */
export async function updateResourceRow(db: Queryable, rid: string, v: VersionRow, rows: IndexRows): Promise<void> {
  // Every CTE sees the row as it was before this statement: `prev` is the version being replaced.
  const sql = `WITH${DELETE_INDEX_CTES},
  prev AS (SELECT version_id, deleted FROM resource WHERE rid = $1),
  w AS (UPDATE resource SET version_id = $2, last_updated = $3, content = $4, deleted = false
        WHERE rid = $1 RETURNING rid),
  h AS (INSERT INTO resource_history (version_id, rid, resource_type, id, project_id, last_updated, operation, content)
        SELECT $2, w.rid, $5, $6, $7, $3, 'U', $4 FROM w),
  o AS (INSERT INTO outbox (project_id, resource_type, resource_id, version_id, previous_version_id, interaction)
        SELECT $7::uuid, $5, $6, $2::uuid, CASE WHEN prev.deleted THEN NULL ELSE prev.version_id END,
               CASE WHEN prev.deleted THEN 'create' ELSE 'update' END
        FROM w, prev WHERE $5 <> 'AuditEvent'),
  b AS (INSERT INTO binary_content (version_id, rid, data) SELECT $2, w.rid, $8::bytea FROM w WHERE $8::bytea IS NOT NULL),${insertIndexCtes(9)}
  SELECT rid FROM w`;
  await db.query({
    name: 'ermis_update_resource',
    text: sql,
    values: [rid, v.versionId, v.lastUpdated, v.content, v.resourceType, v.id, v.projectId, v.binaryData, ...indexParams(rows)],
  });
}

/** Soft delete: the row stays (so reads answer 410), its index rows go, history gets a 'D' version. */
export async function deleteResourceRow(
  db: Queryable,
  rid: string,
  v: Omit<VersionRow, 'content' | 'binaryData'>
): Promise<void> {
  const sql = `WITH${DELETE_INDEX_CTES},
  prev AS (SELECT version_id FROM resource WHERE rid = $1),
  w AS (UPDATE resource SET version_id = $2, last_updated = $3, content = '', deleted = true
        WHERE rid = $1 RETURNING rid),
  h AS (INSERT INTO resource_history (version_id, rid, resource_type, id, project_id, last_updated, operation, content)
        SELECT $2, w.rid, $4, $5, $6, $3, 'D', '' FROM w),
  o AS (INSERT INTO outbox (project_id, resource_type, resource_id, version_id, previous_version_id, interaction)
        SELECT $6::uuid, $4, $5, $2::uuid, prev.version_id, 'delete' FROM w, prev WHERE $4 <> 'AuditEvent')
  SELECT rid FROM w`;
  await db.query({ name: 'ermis_delete_resource', text: sql, values: [rid, v.versionId, v.lastUpdated, v.resourceType, v.id, v.projectId] });
}
