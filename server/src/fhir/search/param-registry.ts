import { getSearchParameters } from '@medplum/core';
import type { Queryable } from '../../db/pool.ts';

/**
 * The dictionary of search parameters. Index rows name their parameter by a small integer
 * rather than by resource type and code, which keeps the index tables and their B-trees narrow.
 */
export class ParamRegistry {
  private readonly ids = new Map<string, number>();
  private readonly db: Queryable;
  private types: readonly string[] = [];

  constructor(db: Queryable) {
    this.db = db;
  }

  /** Registers every search parameter the loaded definitions know, then loads the dictionary. */
  async init(resourceTypes: Iterable<string>): Promise<void> {
    const types: string[] = [];
    const codes: string[] = [];
    this.types = [...resourceTypes];
    for (const type of this.types) {
      for (const code of Object.keys(getSearchParameters(type) ?? {})) {
        types.push(type);
        codes.push(code);
      }
    }
    await this.db.query(
      `INSERT INTO search_param (resource_type, code)
       SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING`,
      [types, codes]
    );
    await this.reload();
  }

  async reload(): Promise<void> {
    const { rows } = await this.db.query<{ id: number; resource_type: string; code: string }>(
      'SELECT id, resource_type, code FROM search_param'
    );
    for (const r of rows) {
      this.ids.set(key(r.resource_type, r.code), r.id);
    }
  }

  /** The id of a parameter, or undefined when the parameter has never been registered. */
  get(resourceType: string, code: string): number | undefined {
    return this.ids.get(key(resourceType, code));
  }

  /** Every resource type the server stores. */
  resourceTypes(): readonly string[] {
    return this.types;
  }
}

function key(resourceType: string, code: string): string {
  return resourceType + '\0' + code;
}
