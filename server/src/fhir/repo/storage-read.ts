import type { Binary } from '@medplum/fhirtypes';
import type { Queryable } from '../../db/pool.ts';

/**
 * Reads the current bytes of a Binary for a signed storage URL. The URL's signature is the
 * authorization, so no project filter applies; a deleted Binary is not served.
 */
export async function readStoredBinary(db: Queryable, id: string): Promise<{ contentType: string; data: Buffer } | undefined> {
  const { rows } = await db.query<{ content: string; data: Buffer }>(
    `SELECT r.content, b.data FROM resource r JOIN binary_content b ON b.version_id = r.version_id
     WHERE r.resource_type = 'Binary' AND r.id = $1 AND NOT r.deleted`,
    [id]
  );
  if (rows.length === 0) {
    return undefined;
  }
  const binary = JSON.parse(rows[0].content) as Binary;
  return { contentType: binary.contentType ?? 'application/octet-stream', data: rows[0].data };
}
