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

/** Column arrays for the five index tables, in the order the statements below bind them. */
function indexParams(rows: IndexRows): unknown[] {
  return [
    rows.token.param, rows.token.system, rows.token.code, rows.token.text,
    rows.string.param, rows.string.norm, rows.string.exact,
    rows.date.param, rows.date.low, rows.date.high,
    rows.quantity.param, rows.quantity.value, rows.quantity.low, rows.quantity.high, rows.quantity.system, rows.quantity.code,
    rows.reference.param, rows.reference.targetType, rows.reference.targetId, rows.reference.ref,
  ];
}

/** CTEs that insert the index rows of `rid_source` (a CTE yielding one `rid`), parameters from $first on. */
function insertIndexCtes(first: number): string {
  const $ = (i: number): string => '$' + (first + i);
  return `
  it AS (INSERT INTO sp_token (rid, param, system, code, text)
         SELECT w.rid, u.* FROM w, unnest(${$(0)}::int[], ${$(1)}::text[], ${$(2)}::text[], ${$(3)}::text[]) u),
  ist AS (INSERT INTO sp_string (rid, param, norm, exact)
         SELECT w.rid, u.* FROM w, unnest(${$(4)}::int[], ${$(5)}::text[], ${$(6)}::text[]) u),
  idt AS (INSERT INTO sp_date (rid, param, low, high)
         SELECT w.rid, u.* FROM w, unnest(${$(7)}::int[], ${$(8)}::timestamptz[], ${$(9)}::timestamptz[]) u),
  iq AS (INSERT INTO sp_quantity (rid, param, value, low, high, system, code)
         SELECT w.rid, u.* FROM w, unnest(${$(10)}::int[], ${$(11)}::numeric[], ${$(12)}::numeric[], ${$(13)}::numeric[], ${$(14)}::text[], ${$(15)}::text[]) u),
  ir AS (INSERT INTO sp_reference (rid, param, target_type, target_id, ref)
         SELECT w.rid, u.* FROM w, unnest(${$(16)}::int[], ${$(17)}::text[], ${$(18)}::text[], ${$(19)}::text[]) u)`;
}

const DELETE_INDEX_CTES = `
  dt AS (DELETE FROM sp_token WHERE rid = $1),
  ds AS (DELETE FROM sp_string WHERE rid = $1),
  dd AS (DELETE FROM sp_date WHERE rid = $1),
  dq AS (DELETE FROM sp_quantity WHERE rid = $1),
  dr AS (DELETE FROM sp_reference WHERE rid = $1)`;

/** Inserts a new resource, its first history row, its Binary bytes and its index rows in one statement. */
export async function insertResource(db: Queryable, v: VersionRow, rows: IndexRows): Promise<string> {
  const sql = `WITH
  w AS (INSERT INTO resource (resource_type, id, project_id, version_id, last_updated, content)
        VALUES ($1, $2, $3, $4, $5, $6) RETURNING rid),
  h AS (INSERT INTO resource_history (version_id, rid, resource_type, id, project_id, last_updated, operation, content)
        SELECT $4, w.rid, $1, $2, $3, $5, 'C', $6 FROM w),
  b AS (INSERT INTO binary_content (version_id, rid, data) SELECT $4, w.rid, $7::bytea FROM w WHERE $7::bytea IS NOT NULL),${insertIndexCtes(8)}
  SELECT rid FROM w`;
  const result = await db.query<{ rid: string }>(sql, [
    v.resourceType, v.id, v.projectId, v.versionId, v.lastUpdated, v.content, v.binaryData, ...indexParams(rows),
  ]);
  return result.rows[0].rid;
}

/** Replaces the current version of an existing row (also reviving a deleted one) and its index rows. */
export async function updateResourceRow(db: Queryable, rid: string, v: VersionRow, rows: IndexRows): Promise<void> {
  const sql = `WITH${DELETE_INDEX_CTES},
  w AS (UPDATE resource SET version_id = $2, last_updated = $3, content = $4, deleted = false
        WHERE rid = $1 RETURNING rid),
  h AS (INSERT INTO resource_history (version_id, rid, resource_type, id, project_id, last_updated, operation, content)
        SELECT $2, w.rid, $5, $6, $7, $3, 'U', $4 FROM w),
  b AS (INSERT INTO binary_content (version_id, rid, data) SELECT $2, w.rid, $8::bytea FROM w WHERE $8::bytea IS NOT NULL),${insertIndexCtes(9)}
  SELECT rid FROM w`;
  await db.query(sql, [
    rid, v.versionId, v.lastUpdated, v.content, v.resourceType, v.id, v.projectId, v.binaryData, ...indexParams(rows),
  ]);
}

/** Soft delete: the row stays (so reads answer 410), its index rows go, history gets a 'D' version. */
export async function deleteResourceRow(
  db: Queryable,
  rid: string,
  v: Omit<VersionRow, 'content' | 'binaryData'>
): Promise<void> {
  const sql = `WITH${DELETE_INDEX_CTES},
  w AS (UPDATE resource SET version_id = $2, last_updated = $3, content = '', deleted = true
        WHERE rid = $1 RETURNING rid),
  h AS (INSERT INTO resource_history (version_id, rid, resource_type, id, project_id, last_updated, operation, content)
        SELECT $2, w.rid, $4, $5, $6, $3, 'D', '' FROM w)
  SELECT rid FROM w`;
  await db.query(sql, [rid, v.versionId, v.lastUpdated, v.resourceType, v.id, v.projectId]);
}
