import type { Binary } from '@medplum/fhirtypes';
import type { Queryable } from '../../db/pool.ts';
import type { BinaryVersion } from '../attachments.ts';

/**
 * Reads the bytes of one Binary version for a signed storage URL. The URL's signature is the
 * authorization (it was issued to a reader of that Binary), so no project filter applies here;
 * once the Binary is deleted its URLs stop working.
 */
export async function readStoredBinary(
  db: Queryable,
  binary: BinaryVersion
): Promise<{ contentType: string; data: Buffer } | undefined> {
  const { rows } = await db.query<{ content: string; data: Buffer }>(
    `SELECT h.content, b.data
     FROM resource_history h
     JOIN binary_content b ON b.version_id = h.version_id
     JOIN resource r ON r.rid = h.rid
     WHERE h.version_id = $1 AND h.resource_type = 'Binary' AND h.id = $2 AND NOT r.deleted`,
    [binary.versionId, binary.id]
  );
  if (rows.length === 0) {
    return undefined;
  }
  const stored = JSON.parse(rows[0].content) as Binary;
  return { contentType: stored.contentType ?? 'application/octet-stream', data: rows[0].data };
}
