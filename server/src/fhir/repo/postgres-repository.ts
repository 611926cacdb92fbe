import {
  applyPatch,
  badRequest,
  conflict,
  DEFAULT_MAX_SEARCH_COUNT,
  forbidden,
  DEFAULT_SEARCH_COUNT,
  fhirpathPatchTypedValue,
  formatSearchQuery,
  gone,
  normalizeOperationOutcome,
  notFound,
  OperationOutcomeError,
  getSearchParameters,
  Operator,
  parseFhirPathPatchParameters,
  parseSearchRequest,
  preconditionFailed,
  toTypedValue,
  validateResource,
} from '@medplum/core';
import type { Operation, SearchRequest, TypedValueWithPath, WithId } from '@medplum/core';
import { FhirRepository, getExtraEntries } from '@medplum/fhir-router';
import type {
  CreateResourceOptions,
  DeleteResourceOptions,
  ReadHistoryOptions,
  SearchOptions,
  TransactionOptions,
  UpdateResourceOptions,
} from '@medplum/fhir-router';
import type {
  Binary,
  Bundle,
  CodeSystem,
  BundleEntry,
  BundleLink,
  OperationOutcome,
  OperationOutcomeIssue,
  Parameters,
  Reference,
  Resource,
  StructureDefinition,
  ValueSet,
} from '@medplum/fhirtypes';
import { createHash, randomUUID } from 'node:crypto';
import type pg from 'pg';
import { connect, DatabaseError, guarded, isRetryable } from '../../db/errors.ts';
import type { Queryable } from '../../db/pool.ts';
import type { AttachmentUrls } from '../attachments.ts';
import type { RequiredBindings } from '../terminology.ts';
import { isDefinitionType, isStorableResourceType } from '../definitions.ts';
import { emptyValueIssues, pruneEmptyValues } from '../json-shape.ts';
import { codeSetKey, compileAccess, compileSearch, splitValues, SqlParams } from '../search/compile.ts';
import type { CompileContext } from '../search/compile.ts';
import { removeFields, restoreFields } from './access-rules.ts';
import type { AccessRules, Interaction } from './access-rules.ts';
import { expandValueSet, hierarchyCodes } from '../terminology.ts';
import type { CanonicalLookup } from '../terminology.ts';
import { extractIndexRows, parseReferenceString } from '../search/index-values.ts';
import type { ParamRegistry } from '../search/param-registry.ts';
import type { DefinitionsOverlay } from './definitions-overlay.ts';
import { deleteResourceRow, insertResource, updateResourceRow } from './write-sql.ts';
import type { VersionRow } from './write-sql.ts';

/** Shared, long-lived services a repository works with. */
export interface RepositoryServices {
  pool: pg.Pool;
  registry: ParamRegistry;
  overlay: DefinitionsOverlay;
  attachments: AttachmentUrls;
  bindings: RequiredBindings;
  baseUrl: string;
  /** Told the type of every resource written (auth drops cached sessions when policies change). */
  onWrite?: (resourceType: string) => void;
}

/** Who is asking, and which data they may touch (filled from the login by auth). */
export interface RepositoryContext {
  /** The project new resources belong to; writes touch this project only. */
  projectId: string;
  /** Projects whose resources are visible (includes projectId). */
  readProjects: readonly string[];
  /** Super admins read every project. */
  allProjects?: boolean;
  /** Super admins also update and delete resources of every project (they stay in their project). */
  writeAllProjects?: boolean;
  author: Reference;
  /** The effective access policy; undefined for the server's own work (unrestricted). */
  access?: AccessRules;
}

const ID_RE = /^[A-Za-z0-9\-.]{1,64}$/;
const TERMINOLOGY_OPERATORS = new Set<string>([Operator.IN, Operator.NOT_IN, Operator.BELOW, Operator.ABOVE]);
const CONDITIONAL_REFERENCE_RE = /^[A-Z][A-Za-z]+\?/;
const TRANSACTION_ATTEMPTS = 5;

/**
 * Shared by the repositories of one database transaction: whether any statement in it hit a
 * deadlock. fhir-router turns errors into OperationOutcomes on the way up, so the outermost level
 * cannot rely on seeing the database error itself to decide on a retry.
 */
interface TransactionState {
  retryable: boolean;
}

interface CurrentRow {
  rid: string;
  project_id: string;
  version_id: string;
  deleted: boolean;
  content: string;
}

/** The FHIR repository over Postgres: one per request, bound to a context and, inside a transaction, to one client. */
export class PostgresRepository extends FhirRepository {
  private readonly services: RepositoryServices;
  readonly context: RepositoryContext;
  private readonly client: pg.PoolClient | undefined;
  private readonly depth: number;
  private readonly transaction: TransactionState | undefined;

  constructor(
    services: RepositoryServices,
    context: RepositoryContext,
    client?: pg.PoolClient,
    depth = 0,
    transaction?: TransactionState
  ) {
    super();
    this.services = services;
    this.context = context;
    this.client = client;
    this.depth = depth;
    this.transaction = transaction;
  }

  private get db(): Queryable {
    const state = this.transaction;
    return guarded(this.client ?? this.services.pool, state ? (err) => (state.retryable ||= isRetryable(err)) : undefined);
  }

  setMode(): void {
    // One database; reader/writer routing would go here.
  }

  generateId(): string {
    return randomUUID();
  }

  // ---------------------------------------------------------------- writes

  async createResource<T extends Resource>(resource: T, options?: CreateResourceOptions): Promise<WithId<T>> {
    this.requireInteraction(resource.resourceType, 'create');
    this.requireProjectAdministration(resource.resourceType);
    const id = options?.assignedId && resource.id ? resource.id : this.generateId();
    const prepared = await this.prepareWrite(this.withoutReadonlyFields({ ...resource, id }));
    const insert = async (repo: PostgresRepository): Promise<void> => {
      try {
        await insertResource(repo.db, prepared.row, prepared.index);
      } catch (err) {
        if (err instanceof DatabaseError && err.code === '23505') {
          throw new OperationOutcomeError(conflict(`${resource.resourceType}/${id} already exists`));
        }
        throw err;
      }
    };
    if (this.context.access?.rowScope(resource.resourceType, 'create').kind === 'criteria') {
      // The policy's criteria are judged on the written row (its index), inside the transaction.
      await this.inTransaction(async (tx) => {
        await insert(tx);
        await tx.requireWithinPolicy(resource.resourceType, id, 'create');
      });
    } else {
      await insert(this);
    }
    this.services.onWrite?.(resource.resourceType);
    return this.present(prepared.resource as WithId<T>);
  }

  async updateResource<T extends Resource>(resource: T, options?: UpdateResourceOptions): Promise<WithId<T>> {
    return (await this.upsertResource(resource, options)).resource;
  }

  /** Update, or create when the id does not exist yet (update as create); tells which happened. */
  async upsertResource<T extends Resource>(
    resource: T,
    options?: UpdateResourceOptions
  ): Promise<{ resource: WithId<T>; created: boolean }> {
    if (!resource.id) {
      throw new OperationOutcomeError(badRequest('Missing id', `${resource.resourceType}.id`));
    }
    return this.inTransaction(async (tx) => {
      let current = await tx.lockCurrent(resource.resourceType, resource.id as string);
      if (!current && !options?.ifMatch) {
        // Update as create (https://hl7.org/fhir/R4/http.html#upsert). A concurrent create of the same
        // id wins the unique key; then this becomes an update of what it created.
        const created = await tx.tryCreate(resource);
        if (created) {
          return { resource: created, created: true };
        }
        current = await tx.lockCurrent(resource.resourceType, resource.id as string);
      }
      if (options?.ifMatch && (!current || current.deleted || current.version_id !== options.ifMatch)) {
        throw new OperationOutcomeError(preconditionFailed);
      }
      if (!current) {
        throw new OperationOutcomeError(conflict(`${resource.resourceType}/${resource.id} could not be written`));
      }
      if (current.deleted) {
        tx.requireRevival(resource.resourceType);
      } else {
        await tx.requireCurrentAccess(current, resource.resourceType, 'update');
      }
      const prepared = await tx.prepareWrite(
        current.deleted ? tx.withoutReadonlyFields(resource) : tx.keepProtectedFields(resource, current),
        current.project_id
      );
      // No new version when nothing but meta changed (Binary bytes are not in the JSON, so a Binary always writes).
      if (!current.deleted && resource.resourceType !== 'Binary' && sameIgnoringMeta(current.content, prepared.resource)) {
        return { resource: tx.present(JSON.parse(current.content) as WithId<T>), created: false };
      }
      await updateResourceRow(tx.db, current.rid, prepared.row, prepared.index);
      // A write may not move the resource out of what the writer may update (or create, for a revival).
      await tx.requireWithinPolicy(resource.resourceType, resource.id as string, current.deleted ? 'create' : 'update');
      this.services.onWrite?.(resource.resourceType);
      return { resource: tx.present(prepared.resource as WithId<T>), created: false };
    });
  }

  /** Creates with the given id inside a savepoint; undefined when the id was taken meanwhile. */
  private async tryCreate<T extends Resource>(resource: T): Promise<WithId<T> | undefined> {
    try {
      return await this.inTransaction((tx) => tx.createResource(resource, { assignedId: true }));
    } catch (err) {
      if (err instanceof OperationOutcomeError && err.outcome.issue[0]?.code === 'conflict') {
        return undefined;
      }
      throw err;
    }
  }

  async patchResource<T extends Resource>(
    resourceType: T['resourceType'],
    id: string,
    patch: Operation[] | Parameters,
    options?: UpdateResourceOptions
  ): Promise<WithId<T>> {
    return this.inTransaction(async (tx) => {
      const current = await tx.lockCurrent(resourceType, id);
      if (!current) {
        throw new OperationOutcomeError(notFound);
      }
      await tx.requireCurrentAccess(current, resourceType, 'update');
      if (current.deleted) {
        throw new OperationOutcomeError(gone);
      }
      if (options?.ifMatch && current.version_id !== options.ifMatch) {
        throw new OperationOutcomeError(preconditionFailed);
      }
      // The patch sees what the caller sees: hidden fields can be neither copied nor tested.
      let resource = tx.present(JSON.parse(current.content) as WithId<T>);
      try {
        if (Array.isArray(patch)) {
          const errors = applyPatch(resource, patch).filter(Boolean);
          if (errors.length > 0) {
            throw new OperationOutcomeError(badRequest(errors.map((e) => (e as Error).message).join('\n')));
          }
        } else {
          fhirpathPatchTypedValue(toTypedValue(resource), parseFhirPathPatchParameters(patch));
        }
      } catch (err) {
        throw new OperationOutcomeError(normalizeOperationOutcome(err));
      }
      // Removing the last item of a list leaves [] behind; in FHIR that element is simply absent.
      resource = pruneEmptyValues(resource);
      if (resource.resourceType !== resourceType || resource.id !== id) {
        throw new OperationOutcomeError(badRequest('A patch may not change resourceType or id'));
      }
      return tx.updateResource(resource, { ifMatch: current.version_id });
    });
  }

  async deleteResource(resourceType: string, id: string, options?: DeleteResourceOptions): Promise<void> {
    await this.inTransaction(async (tx) => {
      const current = await tx.lockCurrent(resourceType, id);
      if (!current) {
        throw new OperationOutcomeError(notFound);
      }
      await tx.requireCurrentAccess(current, resourceType, 'delete');
      tx.requireProjectAdministration(resourceType);
      if (options?.ifMatch && current.version_id !== options.ifMatch) {
        throw new OperationOutcomeError(preconditionFailed);
      }
      if (current.deleted) {
        return;
      }
      await deleteResourceRow(tx.db, current.rid, {
        resourceType,
        id,
        projectId: current.project_id,
        versionId: randomUUID(),
        lastUpdated: new Date().toISOString(),
      });
      this.services.onWrite?.(resourceType);
    });
  }

  /** Creates a Binary from raw bytes (the raw upload of `POST /Binary`). */
  async createBinary(contentType: string, data: Buffer, securityContext?: Reference): Promise<WithId<Binary>> {
    return this.createResource<Binary>(binaryResource(undefined, contentType, data, securityContext));
  }

  /** Replaces the bytes of a Binary, or creates it with that id (raw `PUT /Binary/{id}`). */
  async upsertBinary(
    id: string,
    contentType: string,
    data: Buffer,
    ifMatch?: string
  ): Promise<{ resource: WithId<Binary>; created: boolean }> {
    return this.upsertResource<Binary>(binaryResource(id, contentType, data), { ifMatch });
  }

  /** The bytes of one Binary version, as read (with its project check) by readResource or readVersion. */
  async readBinaryData(binary: WithId<Binary>): Promise<Buffer> {
    const params = new SqlParams();
    const { rows } = await this.db.query<{ data: Buffer }>(
      `SELECT b.data FROM binary_content b JOIN resource r ON r.rid = b.rid
       WHERE b.version_id = ${params.add(binary.meta?.versionId)} AND ${this.accessSql('Binary', 'read', params)}`,
      params.values
    );
    return rows[0]?.data ?? Buffer.alloc(0);
  }

  /** Of the given Binary ids, those the caller may read, with their current version (for signed URLs). */
  async readableBinaries(ids: string[]): Promise<Map<string, string>> {
    if (ids.length === 0) {
      return new Map();
    }
    if (this.context.access && !this.context.access.allows('Binary', 'read')) {
      return new Map();
    }
    const params = new SqlParams();
    const { rows } = await this.db.query<{ id: string; version_id: string }>(
      `SELECT r.id, r.version_id FROM resource r
       WHERE r.resource_type = 'Binary' AND r.id = ANY(${params.add(ids)}::text[]) AND ${this.accessSql('Binary', 'read', params)} AND NOT r.deleted`,
      params.values
    );
    return new Map(rows.map((r) => [r.id, r.version_id]));
  }

  // ---------------------------------------------------------------- reads

  async readResource<T extends Resource>(resourceType: string, id: string): Promise<WithId<T>> {
    this.requireInteraction(resourceType, 'read');
    if (!ID_RE.test(id)) {
      throw new OperationOutcomeError(notFound);
    }
    const params = new SqlParams();
    const where = `r.resource_type = ${params.add(resourceType)} AND r.id = ${params.add(id)} AND ${this.accessSql(resourceType, 'read', params)}`;
    const { rows } = await this.db.query<{ deleted: boolean; content: string }>(
      `SELECT r.deleted, r.content FROM resource r WHERE ${where}
       ORDER BY r.project_id = ${params.add(this.context.projectId)} DESC LIMIT 1`,
      params.values
    );
    if (rows.length === 0) {
      const definition = isDefinitionType(resourceType) ? this.services.overlay.read(resourceType, id) : undefined;
      if (definition) {
        return structuredClone(definition) as WithId<T>;
      }
      throw new OperationOutcomeError(notFound);
    }
    if (rows[0].deleted) {
      throw new OperationOutcomeError(gone);
    }
    return this.present(JSON.parse(rows[0].content) as WithId<T>);
  }

  async readReference<T extends Resource>(reference: Reference<T>): Promise<WithId<T>> {
    const parsed = reference.reference ? parseReferenceString(reference.reference) : undefined;
    if (!parsed) {
      throw new OperationOutcomeError(badRequest('Invalid reference'));
    }
    return this.readResource<T>(parsed.resourceType, parsed.id);
  }

  async readReferences<T extends Resource>(references: readonly Reference<T>[]): Promise<(T | Error)[]> {
    return Promise.all(
      references.map((r) =>
        this.readReference(r).catch((err: unknown) =>
          err instanceof OperationOutcomeError ? err : new OperationOutcomeError(normalizeOperationOutcome(err))
        )
      )
    );
  }

  async readHistory<T extends Resource>(
    resourceType: string,
    id: string,
    options?: ReadHistoryOptions & { since?: string }
  ): Promise<Bundle<WithId<T>>> {
    this.requireInteraction(resourceType, 'history');
    const params = new SqlParams();
    const where = `r.resource_type = ${params.add(resourceType)} AND r.id = ${params.add(id)} AND ${this.accessSql(resourceType, 'history', params)}`;
    const { rows: current } = await this.db.query<{ rid: string }>(
      `SELECT r.rid FROM resource r WHERE ${where} ORDER BY r.project_id = ${params.add(this.context.projectId)} DESC LIMIT 1`,
      params.values
    );
    if (current.length === 0) {
      throw new OperationOutcomeError(notFound);
    }
    return this.historyBundle(`${resourceType}/${id}/_history`, 'h.rid = $1', [current[0].rid], options);
  }

  /** Type-level (`Patient/_history`) or system-level (`_history`) history, newest first. */
  async readTypeHistory<T extends Resource>(
    resourceType: string | undefined,
    options?: ReadHistoryOptions & { since?: string }
  ): Promise<Bundle<WithId<T>>> {
    const params = new SqlParams();
    const clauses: string[] = [];
    if (!this.context.allProjects) {
      clauses.push(`h.project_id = ANY(${params.add(this.context.readProjects)}::uuid[])`);
    }
    if (resourceType) {
      this.requireInteraction(resourceType, 'history');
      clauses.push(`h.resource_type = ${params.add(resourceType)}`);
    }
    if (this.context.access) {
      // The policy is judged on each resource's current version (its index rows).
      const types = resourceType ? [resourceType] : this.services.registry.resourceTypes();
      clauses.push(compileAccess(types, 'history', this.compileContext(), params));
    }
    return this.historyBundle(resourceType ? `${resourceType}/_history` : '_history', clauses.join(' AND ') || 'TRUE', params.values, options);
  }

  private async historyBundle<T extends Resource>(
    path: string,
    where: string,
    params: unknown[],
    options: (ReadHistoryOptions & { since?: string }) | undefined
  ): Promise<Bundle<WithId<T>>> {
    const limit = clampCount(options?.limit);
    const offset = checkOffset(options?.offset ?? 0);
    const args = [...params];
    let sinceClause = '';
    if (options?.since) {
      const since = new Date(options.since);
      if (Number.isNaN(since.getTime())) {
        throw new OperationOutcomeError(badRequest('Invalid _since', '_since'));
      }
      args.push(since.toISOString());
      sinceClause = ` AND h.last_updated >= $${args.length}::timestamptz`;
    }
    const from = 'resource_history h JOIN resource r ON r.rid = h.rid';
    const { rows } = await this.db.query<{
      resource_type: string;
      id: string;
      version_id: string;
      last_updated: Date;
      operation: string;
      content: string;
    }>(
      `SELECT h.resource_type, h.id, h.version_id, h.last_updated, h.operation, h.content
       FROM ${from} WHERE ${where}${sinceClause}
       ORDER BY h.last_updated DESC, h.version_id DESC LIMIT ${limit} OFFSET ${offset}`,
      args
    );
    const counted = await this.db.query<{ n: string }>(`SELECT count(*) AS n FROM ${from} WHERE ${where}${sinceClause}`, args);
    const total = Number(counted.rows[0].n);
    const entry: BundleEntry<WithId<T>>[] = rows.map((row) => {
      const url = `${row.resource_type}/${row.id}`;
      const lastModified = row.last_updated.toISOString();
      if (row.operation === 'D') {
        return {
          fullUrl: this.fullUrl(row.resource_type, row.id),
          request: { method: 'DELETE', url },
          response: { status: '410', lastModified, etag: `W/"${row.version_id}"` },
        };
      }
      return {
        fullUrl: this.fullUrl(row.resource_type, row.id),
        resource: this.present(JSON.parse(row.content) as WithId<T>),
        request: { method: row.operation === 'C' ? 'POST' : 'PUT', url: row.operation === 'C' ? row.resource_type : url },
        response: {
          status: row.operation === 'C' ? '201' : '200',
          lastModified,
          etag: `W/"${row.version_id}"`,
        },
      };
    });
    const link = (relation: string, at: number): BundleLink => {
      const query = new URLSearchParams({ _count: String(limit), _offset: String(at) });
      if (options?.since) {
        query.set('_since', options.since);
      }
      return { relation, url: `${this.services.baseUrl}fhir/R4/${path}?${query}` };
    };
    const links = [link('self', offset)];
    if (offset + limit < total) {
      links.push(link('next', offset + limit));
    }
    if (offset > 0) {
      links.push(link('previous', Math.max(0, offset - limit)));
    }
    return { resourceType: 'Bundle', type: 'history', total, link: links, entry };
  }

  async readVersion<T extends Resource>(resourceType: string, id: string, vid: string): Promise<WithId<T>> {
    this.requireInteraction(resourceType, 'vread');
    if (!/^[0-9a-f-]{36}$/i.test(vid)) {
      throw new OperationOutcomeError(notFound);
    }
    const params = new SqlParams();
    const where = `h.version_id = ${params.add(vid)} AND h.resource_type = ${params.add(resourceType)} AND h.id = ${params.add(id)}
      AND ${this.accessSql(resourceType, 'vread', params)}`;
    const { rows } = await this.db.query<{ operation: string; content: string }>(
      `SELECT h.operation, h.content FROM resource_history h JOIN resource r ON r.rid = h.rid WHERE ${where}`,
      params.values
    );
    if (rows.length === 0) {
      throw new OperationOutcomeError(notFound);
    }
    if (rows[0].operation === 'D') {
      throw new OperationOutcomeError(gone);
    }
    return this.present(JSON.parse(rows[0].content) as WithId<T>);
  }

  // ---------------------------------------------------------------- search

  async search<T extends Resource>(request: SearchRequest<T>, options?: SearchOptions): Promise<Bundle<WithId<T>>> {
    const types = request.types?.length ? request.types : [request.resourceType];
    for (const type of types) {
      if (!isStorableResourceType(type)) {
        throw new OperationOutcomeError(badRequest(`Unknown resource type: ${type}`));
      }
      this.requireInteraction(type, 'search');
    }
    const count = request.count === undefined ? DEFAULT_SEARCH_COUNT : clampCount(request.count);
    const offset = checkOffset(request.offset ?? 0);
    const cursor = parseCursor(request.cursor);
    if (cursor !== undefined && (request.sortRules?.length || offset > 0)) {
      throw new OperationOutcomeError(badRequest('_cursor cannot be combined with _sort or _offset', '_cursor'));
    }
    const compiled = compileSearch(types, request, {
      ...this.compileContext(),
      codeSets: await this.resolveCodeSets(types, request.filters ?? []),
    });
    const overlayMatches =
      types.length === 1 && isDefinitionType(types[0]) ? this.services.overlay.search(request) : undefined;
    // Without _sort, pages follow the row order and are addressed by a cursor (the last row seen), so
    // deep walks cost the same as the first page. Definition types page by offset (they have an overlay part).
    const cursorPaging = !request.sortRules?.length && offset === 0 && !overlayMatches;

    let dbTotal: number | undefined;
    if (request.total === 'accurate' || overlayMatches !== undefined || count === 0) {
      dbTotal = await this.count(compiled.where, compiled.whereValues);
    } else if (request.total === 'estimate') {
      dbTotal = await this.estimate(compiled.where, compiled.whereValues);
    }

    let resources: WithId<T>[] = [];
    let lastRid: string | undefined;
    let hasMore = false;
    if (count > 0) {
      // Own rows come first, then the base definitions (the overlay) for the definition types.
      const dbLimit = overlayMatches && dbTotal !== undefined ? Math.max(0, Math.min(count + 1, dbTotal - offset)) : count + 1;
      if (dbLimit > 0) {
        const values = [...compiled.values];
        const after = cursor === undefined ? '' : ` AND r.rid > $${values.push(cursor)}`;
        const { rows } = await this.db.query<{ rid: string; content: string }>(
          `SELECT r.rid, r.content FROM resource r WHERE ${compiled.where}${after}
           ORDER BY ${compiled.orderBy} LIMIT ${dbLimit} OFFSET ${offset}`,
          values
        );
        resources = rows.map((row) => this.present(JSON.parse(row.content) as WithId<T>));
        lastRid = rows[Math.min(rows.length, count) - 1]?.rid;
      }
      if (overlayMatches && dbTotal !== undefined) {
        const overlayOffset = Math.max(0, offset - dbTotal);
        const room = count + 1 - resources.length;
        resources.push(
          ...(overlayMatches.slice(overlayOffset, overlayOffset + room).map((r) => structuredClone(r)) as WithId<T>[])
        );
      }
      hasMore = resources.length > count;
      resources = resources.slice(0, count);
    }
    let total: number | undefined;
    if (dbTotal !== undefined) {
      total = dbTotal + (overlayMatches?.length ?? 0);
    } else if (!hasMore && cursor === undefined && request.total !== 'none' && (resources.length > 0 || offset === 0)) {
      // The last page tells the exact total for free.
      total = offset + resources.length;
    }

    const entry: BundleEntry<WithId<T>>[] = resources.map((resource) => ({
      fullUrl: this.fullUrl(resource.resourceType, resource.id),
      search: { mode: 'match' },
      resource,
    }));
    if ((request.include || request.revInclude) && resources.length > 0) {
      await getExtraEntries(this, request, resources, entry as BundleEntry[], {
        fullUrl: (type, id) => this.fullUrl(type, id),
      });
    }
    const bundle: Bundle<WithId<T>> = { resourceType: 'Bundle', type: 'searchset', entry };
    if (total !== undefined && request.total !== 'none') {
      bundle.total = total;
    }
    if (!options?.resourceOnly) {
      const nextCursor = cursorPaging && hasMore && lastRid ? `r${lastRid}` : undefined;
      bundle.link = this.searchLinks(request, count, offset, hasMore, nextCursor);
    }
    return bundle;
  }

  private async count(where: string, values: unknown[]): Promise<number> {
    const { rows } = await this.db.query<{ n: string }>(`SELECT count(*) AS n FROM resource r WHERE ${where}`, values);
    return Number(rows[0].n);
  }

  /** `_total=estimate`: the planner's row estimate; counted exactly when it is small (cheap then). */
  private async estimate(where: string, values: unknown[]): Promise<number> {
    const { rows } = await this.db.query<{ 'QUERY PLAN': [{ Plan: { 'Plan Rows': number } }] }>(
      `EXPLAIN (FORMAT JSON) SELECT 1 FROM resource r WHERE ${where}`,
      values
    );
    const estimated = rows[0]['QUERY PLAN'][0].Plan['Plan Rows'];
    return estimated < ESTIMATE_THRESHOLD ? this.count(where, values) : estimated;
  }

  /** A ValueSet or CodeSystem by canonical URL: the project's own, else the base definitions. */
  async readCanonical<T extends ValueSet | CodeSystem>(resourceType: T['resourceType'], url: string): Promise<T | undefined> {
    const [canonical, version] = url.split('|');
    const filters = [{ code: 'url', operator: Operator.EQUALS, value: canonical }];
    if (version) {
      filters.push({ code: 'version', operator: Operator.EQUALS, value: version });
    }
    return (await this.searchOne({ resourceType, filters } as SearchRequest)) as T | undefined;
  }

  /** Expands the value sets of `:in`/`:not-in` and the hierarchies of `:below`/`:above` token searches. */
  private async resolveCodeSets(
    types: readonly string[],
    filters: readonly { code: string; operator: string; value: string }[]
  ): Promise<Map<string, { system: string; code: string }[]>> {
    const codeSets = new Map<string, { system: string; code: string }[]>();
    const lookup: CanonicalLookup = (type, url) => this.readCanonical(type, url);
    for (const filter of filters) {
      const param = getSearchParameters(types[0])?.[filter.code];
      if (param?.type !== 'token' || !TERMINOLOGY_OPERATORS.has(filter.operator)) {
        continue;
      }
      const codes: { system: string; code: string }[] = [];
      for (const value of splitValues(filter.value)) {
        let found: { system?: string; code?: string }[] | undefined;
        if (filter.operator === Operator.IN || filter.operator === Operator.NOT_IN) {
          const valueSet = await this.readCanonical<ValueSet>('ValueSet', value);
          found = valueSet ? await expandValueSet(valueSet, lookup) : undefined;
        } else {
          const [system, code] = value.split('|');
          found = system && code ? await hierarchyCodes(lookup, system, code, filter.operator === Operator.BELOW ? 'below' : 'above') : undefined;
        }
        if (!found) {
          throw new OperationOutcomeError(badRequest(`Cannot resolve ${filter.code}:${filter.operator}=${value} on this server`, filter.code));
        }
        codes.push(...found.filter((c) => c.system && c.code).map((c) => ({ system: c.system as string, code: c.code as string })));
      }
      codeSets.set(codeSetKey(filter.operator, filter.value), codes);
    }
    return codeSets;
  }

  private searchLinks(
    request: SearchRequest,
    count: number,
    offset: number,
    hasMore: boolean,
    nextCursor: string | undefined
  ): BundleLink[] {
    const base = request.types?.length
      ? `${this.services.baseUrl}fhir/R4`
      : `${this.services.baseUrl}fhir/R4/${request.resourceType}`;
    const link = (relation: string, newOffset: number): BundleLink => ({
      relation,
      url: base + formatSearchQuery({ ...request, count, offset: newOffset }),
    });
    const links = [link('self', offset), { relation: 'first', url: base + formatSearchQuery({ ...request, count, offset: 0, cursor: undefined }) }];
    if (nextCursor) {
      links.push({ relation: 'next', url: base + formatSearchQuery({ ...request, count, offset: undefined, cursor: nextCursor }) });
    } else if (hasMore) {
      links.push(link('next', offset + count));
    }
    if (offset > 0) {
      links.push(link('previous', Math.max(0, offset - count)));
    }
    return links;
  }

  async searchByReference<T extends Resource>(
    searchRequest: SearchRequest<T>,
    referenceField: string,
    references: string[]
  ): Promise<Record<string, WithId<T>[]>> {
    const result: Record<string, WithId<T>[]> = {};
    for (const reference of references) {
      const bundle = await this.search(
        {
          ...searchRequest,
          filters: [...(searchRequest.filters ?? []), { code: referenceField, operator: 'eq', value: reference }],
        },
        { resourceOnly: true }
      );
      result[reference] = (bundle.entry ?? []).map((e) => e.resource as WithId<T>);
    }
    return result;
  }

  // ---------------------------------------------------------------- transactions and conditional writes

  async withTransaction<TResult>(
    callback: (txRepo: this) => Promise<TResult>,
    _options?: TransactionOptions
  ): Promise<TResult> {
    return this.inTransaction(callback);
  }

  /**
   * Runs the callback in a transaction (READ COMMITTED). Nested calls become savepoints on the same
   * connection. The outermost level retries on serialization failures and deadlocks.
   */
  private async inTransaction<TResult>(callback: (txRepo: this) => Promise<TResult>): Promise<TResult> {
    if (this.client) {
      const savepoint = `sp${this.depth}`;
      const nested = new PostgresRepository(this.services, this.context, this.client, this.depth + 1, this.transaction) as this;
      await this.db.query(`SAVEPOINT ${savepoint}`);
      try {
        const result = await callback(nested);
        await this.db.query(`RELEASE SAVEPOINT ${savepoint}`);
        return result;
      } catch (err) {
        await this.db.query(`ROLLBACK TO SAVEPOINT ${savepoint}`);
        throw err;
      }
    }
    for (let attempt = 1; ; attempt++) {
      const client = await connect(this.services.pool);
      const state: TransactionState = { retryable: false };
      const txRepo = new PostgresRepository(this.services, this.context, client, 1, state) as this;
      try {
        await txRepo.db.query('BEGIN');
        const result = await callback(txRepo);
        await txRepo.db.query('COMMIT');
        return result;
      } catch (err) {
        await client.query('ROLLBACK').catch(() => undefined);
        if (attempt < TRANSACTION_ATTEMPTS && (state.retryable || isRetryable(err))) {
          // a little random backoff so that the same two transactions do not collide again at once
          await new Promise((resolve) => setTimeout(resolve, Math.random() * 20 * attempt));
          continue;
        }
        throw err;
      } finally {
        client.release();
      }
    }
  }

  /**
   * Locks the current rows of the given resources (in the caller's project), in one fixed order, so
   * that transactions writing the same resources cannot deadlock on them.
   */
  async lockResources(references: { resourceType: string; id: string }[]): Promise<void> {
    if (!this.client) {
      throw new Error('lockResources must run inside a transaction');
    }
    if (references.length === 0) {
      return;
    }
    await this.db.query(
      `SELECT 1 FROM resource
       WHERE project_id = $1 AND (resource_type, id) IN (SELECT * FROM unnest($2::text[], $3::text[]))
       ORDER BY resource_type, id FOR UPDATE`,
      [this.context.projectId, references.map((r) => r.resourceType), references.map((r) => r.id)]
    );
  }

  /**
   * Serializes every conditional operation on the same criteria in the same project: a transaction-scoped
   * advisory lock, taken before the search, so that the search sees any create committed by a competitor.
   * This replaces SERIALIZABLE isolation (and its 40001 storms) for conditional create/update/delete/patch.
   */
  async lockCriteria(search: SearchRequest): Promise<void> {
    if (!this.client) {
      throw new Error('lockCriteria must run inside a transaction');
    }
    const filters = (search.filters ?? []).map((f) => `${f.code}:${f.operator}=${f.value}`).sort();
    const digest = createHash('sha256')
      .update(`${this.context.projectId}\0${search.resourceType}\0${filters.join('&')}`)
      .digest();
    await this.db.query('SELECT pg_advisory_xact_lock($1::bigint)', [digest.readBigInt64BE(0).toString()]);
  }

  async conditionalCreate<T extends Resource>(
    resource: T,
    search: SearchRequest<T>,
    options?: CreateResourceOptions
  ): Promise<{ resource: WithId<T>; outcome: OperationOutcome }> {
    return this.inTransaction(async (tx) => {
      await tx.lockCriteria(search);
      return tx.baseConditionalCreate(resource, search, options);
    });
  }

  async conditionalUpdate<T extends Resource>(
    resource: T,
    search: SearchRequest,
    options?: CreateResourceOptions & UpdateResourceOptions
  ): Promise<{ resource: WithId<T>; outcome: OperationOutcome }> {
    return this.inTransaction(async (tx) => {
      await tx.lockCriteria(search);
      return tx.baseConditionalUpdate(resource, search, options);
    });
  }

  async conditionalDelete(search: SearchRequest): Promise<void> {
    await this.inTransaction(async (tx) => {
      await tx.lockCriteria(search);
      await tx.baseConditionalDelete(search);
    });
  }

  async conditionalPatch(search: SearchRequest, patch: Operation[], options?: UpdateResourceOptions): Promise<WithId<Resource>> {
    return this.inTransaction(async (tx) => {
      await tx.lockCriteria(search);
      return tx.baseConditionalPatch(search, patch, options);
    });
  }

  // fhir-router's conditional logic (search, then 0/1/many), run by the locked transaction repository.
  private baseConditionalCreate<T extends Resource>(r: T, s: SearchRequest<T>, o?: CreateResourceOptions) {
    return super.conditionalCreate(r, s, o);
  }
  private baseConditionalUpdate<T extends Resource>(r: T, s: SearchRequest, o?: CreateResourceOptions & UpdateResourceOptions) {
    return super.conditionalUpdate<T>(r, s, o);
  }
  private baseConditionalDelete(s: SearchRequest) {
    return super.conditionalDelete(s);
  }
  private baseConditionalPatch(s: SearchRequest, p: Operation[], o?: UpdateResourceOptions) {
    return super.conditionalPatch(s, p, o);
  }

  // ---------------------------------------------------------------- access policy

  private compileContext(): CompileContext {
    return {
      registry: this.services.registry,
      projects: this.context.allProjects ? undefined : this.context.readProjects,
      access: this.context.access,
      ownProject: this.context.projectId,
    };
  }

  /** SQL over `resource r`: the row is in the caller's projects and within the policy for the interaction. */
  private accessSql(resourceType: string, interaction: Interaction, params: SqlParams): string {
    return compileAccess([resourceType], interaction, this.compileContext(), params);
  }

  /** 403 when the policy allows the interaction on no resource of the type. */
  private requireInteraction(resourceType: string, interaction: Interaction): void {
    const access = this.context.access;
    if (access && !access.allows(resourceType, interaction)) {
      throw new OperationOutcomeError(forbidden);
    }
  }

  /**
   * Before a write to an existing resource: the interaction must be allowed on it. A resource the
   * caller cannot even read is reported as missing, so that its existence does not leak.
   */
  private async requireCurrentAccess(current: CurrentRow, resourceType: string, interaction: Interaction): Promise<void> {
    this.requireInteraction(resourceType, interaction);
    const access = this.context.access;
    if (!access || current.deleted) {
      return;
    }
    if (!(await this.rowWithin(current.rid, resourceType, interaction))) {
      const readable = access.allows(resourceType, 'read') && (await this.rowWithin(current.rid, resourceType, 'read'));
      throw new OperationOutcomeError(readable ? forbidden : notFound);
    }
  }

  /** After a write (same transaction): the new version must still be within the policy. */
  private async requireWithinPolicy(resourceType: string, id: string, interaction: Interaction): Promise<void> {
    if (this.context.access?.rowScope(resourceType, interaction).kind !== 'criteria') {
      return;
    }
    const { rows } = await this.db.query<{ rid: string }>(
      'SELECT rid FROM resource WHERE project_id = $1 AND resource_type = $2 AND id = $3',
      [this.context.projectId, resourceType, id]
    );
    if (!rows[0] || !(await this.rowWithin(rows[0].rid, resourceType, interaction))) {
      throw new OperationOutcomeError({
        ...forbidden,
        issue: [{ severity: 'error', code: 'forbidden', details: { text: `The ${resourceType} would be outside your access policy` } }],
      });
    }
  }

  private async rowWithin(rid: string, resourceType: string, interaction: Interaction): Promise<boolean> {
    const params = new SqlParams();
    const { rows } = await this.db.query(
      `SELECT 1 FROM resource r WHERE r.rid = ${params.add(rid)} AND ${this.accessSql(resourceType, interaction, params)}`,
      params.values
    );
    return rows.length > 0;
  }

  /**
   * Projects are created and deleted by the server (first start, new-project sign-up) and by super
   * admins only; whatever a policy says, a session may not do it.
   */
  private requireProjectAdministration(resourceType: string): void {
    if (resourceType === 'Project' && this.context.access) {
      throw new OperationOutcomeError(forbidden);
    }
  }

  /**
   * Writing an id whose resource was deleted revives it, old versions included. A caller whose
   * policy has row criteria could read history it was never allowed to see; refuse that.
   */
  private requireRevival(resourceType: string): void {
    this.requireInteraction(resourceType, 'create');
    this.requireProjectAdministration(resourceType);
    const access = this.context.access;
    if (access && (access.rowScope(resourceType, 'create').kind !== 'all' || access.rowScope(resourceType, 'read').kind !== 'all')) {
      throw new OperationOutcomeError(forbidden);
    }
  }

  /** A create cannot set the fields the policy makes read-only. */
  private withoutReadonlyFields<T extends Resource>(resource: T): T {
    const fields = this.context.access?.readonlyFields(resource.resourceType) ?? [];
    if (fields.length === 0) {
      return resource;
    }
    const copy = structuredClone(resource);
    removeFields(copy, fields);
    return copy;
  }

  /** A write keeps the stored values of the fields the policy hides or makes read-only. */
  private keepProtectedFields<T extends Resource>(resource: T, current: CurrentRow): T {
    const access = this.context.access;
    if (!access || current.deleted) {
      return resource;
    }
    const fields = [...access.hiddenFields(resource.resourceType), ...access.readonlyFields(resource.resourceType)];
    if (resource.resourceType === 'Project') {
      // Only super admins (no policy) may change what makes a project powerful.
      fields.push('superAdmin', 'features', 'link');
    }
    if (fields.length === 0) {
      return resource;
    }
    const copy = structuredClone(resource) as unknown as Record<string, unknown>;
    restoreFields(copy, JSON.parse(current.content) as Record<string, unknown>, fields);
    return copy as unknown as T;
  }

  /** What the caller sees of a resource: without the fields the policy hides. */
  private present<T extends Resource>(resource: T): T {
    const hidden = this.context.access?.hiddenFields(resource.resourceType);
    if (hidden?.length) {
      removeFields(resource, hidden);
    }
    return resource;
  }

  // ---------------------------------------------------------------- write preparation

  private async lockCurrent(resourceType: string, id: string): Promise<CurrentRow | undefined> {
    if (!isStorableResourceType(resourceType)) {
      throw new OperationOutcomeError(badRequest(`Unknown resource type: ${resourceType}`));
    }
    if (!ID_RE.test(id)) {
      throw new OperationOutcomeError(badRequest(`Invalid id: ${id}`, `${resourceType}.id`));
    }
    // Writes touch the caller's own project only, even where it may read others; a super admin's
    // reach every project (its own first, where the same id exists in several).
    const { rows } = await this.db.query<CurrentRow>(
      this.context.writeAllProjects
        ? `SELECT rid, project_id, version_id, deleted, content FROM resource
           WHERE resource_type = $2 AND id = $3 ORDER BY project_id = $1 DESC, rid LIMIT 1 FOR UPDATE`
        : `SELECT rid, project_id, version_id, deleted, content FROM resource
           WHERE project_id = $1 AND resource_type = $2 AND id = $3 FOR UPDATE`,
      [this.context.projectId, resourceType, id]
    );
    return rows[0];
  }

  /** `projectId`: where the version is stored (an update stays in its resource's project). */
  private async prepareWrite(input: Resource, projectId: string = this.context.projectId): Promise<PreparedWrite> {
    const resourceType = input.resourceType;
    if (typeof resourceType !== 'string' || !isStorableResourceType(resourceType)) {
      throw new OperationOutcomeError(badRequest(`Unknown resource type: ${String(resourceType)}`, 'resourceType'));
    }
    if (isDefinitionType(resourceType) && input.id && this.services.overlay.read(resourceType, input.id)) {
      throw new OperationOutcomeError(badRequest(`${resourceType}/${input.id} is a base definition and cannot be changed`));
    }
    const id = input.id as string;
    if (!ID_RE.test(id)) {
      throw new OperationOutcomeError(badRequest(`Invalid id: ${id}`, `${resourceType}.id`));
    }
    const resource = JSON.parse(JSON.stringify(input)) as WithId<Resource>;
    let binaryData: Buffer | null = null;
    if (resource.resourceType === 'Binary') {
      // The bytes live in binary_content; the stored JSON keeps only the metadata.
      binaryData = decodeBinaryData(resource.data);
      delete resource.data;
    }
    await this.resolveConditionalReferences(resource);
    this.services.attachments.toStored(resource);

    const meta = { ...resource.meta };
    delete meta.versionId;
    delete meta.lastUpdated;
    delete meta.project;
    delete meta.author;
    resource.meta = Object.keys(meta).length ? meta : undefined;
    await this.validate(resource);

    const versionId = randomUUID();
    const lastUpdated = new Date().toISOString();
    resource.meta = {
      ...resource.meta,
      versionId,
      lastUpdated,
      project: projectId,
      author: this.context.author,
    };
    const content = JSON.stringify(resource);
    return {
      resource,
      index: extractIndexRows(resource, this.services.registry),
      row: { resourceType, id, projectId, versionId, lastUpdated, content, binaryData },
    };
  }

  /**
   * Validates against the R4 definitions (structure, cardinality, formats, invariants, required
   * bindings) and against every `meta.profile` this server knows.
   */
  private async validate(resource: Resource): Promise<void> {
    const issues: OperationOutcomeIssue[] = emptyValueIssues(resource);
    const run = async (profile?: StructureDefinition): Promise<void> => {
      const tokens: Record<string, TypedValueWithPath[]> = {};
      try {
        issues.push(...validateResource(resource, { profile, collect: { tokens } }).filter(isError));
      } catch (err) {
        if (!(err instanceof OperationOutcomeError)) {
          throw err;
        }
        issues.push(...err.outcome.issue.filter(isError));
      }
      issues.push(...(await this.services.bindings.check(tokens)));
    };
    await run();
    for (const url of resource.meta?.profile ?? []) {
      const profile = await this.findProfile(url);
      if (profile) {
        await run(profile);
      }
    }
    if (issues.length > 0) {
      throw new OperationOutcomeError({ resourceType: 'OperationOutcome', issue: dedupeIssues(issues) });
    }
  }

  /** Public so `$validate` can check a resource without writing it. */
  async validateOnly(resource: Resource): Promise<void> {
    if (!isStorableResourceType(resource.resourceType)) {
      throw new OperationOutcomeError(badRequest(`Unknown resource type: ${String(resource.resourceType)}`, 'resourceType'));
    }
    await this.validate(resource);
  }

  private async findProfile(url: string): Promise<StructureDefinition | undefined> {
    const bundle = await this.search<StructureDefinition>(
      { resourceType: 'StructureDefinition', filters: [{ code: 'url', operator: 'eq', value: url }], count: 1 },
      { resourceOnly: true }
    );
    return bundle.entry?.[0]?.resource;
  }

  /** Replaces `Type?criteria` references by the one matching resource, inside the current transaction. */
  private async resolveConditionalReferences(resource: Resource): Promise<void> {
    const references: Reference[] = [];
    collectReferences(resource, references);
    for (const ref of references) {
      const criteria = ref.reference as string;
      const search = parseSearchRequest(criteria);
      if (!search.filters?.length) {
        throw new OperationOutcomeError(badRequest(`Conditional reference ${criteria} has no search criteria`));
      }
      const matches = await this.searchResources({ ...search, count: 2 });
      if (matches.length !== 1) {
        throw new OperationOutcomeError(
          badRequest(
            matches.length === 0
              ? `Conditional reference ${criteria} matched no resource`
              : `Conditional reference ${criteria} matched more than one resource`
          )
        );
      }
      ref.reference = `${matches[0].resourceType}/${matches[0].id}`;
    }
  }

  private fullUrl(resourceType: string, id: string): string {
    return `${this.services.baseUrl}fhir/R4/${resourceType}/${id}`;
  }
}

interface PreparedWrite {
  resource: WithId<Resource>;
  index: ReturnType<typeof extractIndexRows>;
  row: VersionRow;
}

function binaryResource(id: string | undefined, contentType: string, data: Buffer, securityContext?: Reference): Binary {
  return { resourceType: 'Binary', id, contentType, securityContext, data: data.length ? data.toString('base64') : undefined };
}

const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/;

/** Binary.data as bytes; invalid base64 is a 400 (Buffer.from would silently skip bad characters). */
function decodeBinaryData(data: string | undefined): Buffer | null {
  if (data === undefined) {
    return null;
  }
  if (typeof data !== 'string' || data.length % 4 !== 0 || !BASE64_RE.test(data)) {
    throw new OperationOutcomeError(badRequest('Invalid base64Binary', 'Binary.data'));
  }
  return Buffer.from(data, 'base64');
}

function collectReferences(node: unknown, out: Reference[]): void {
  if (Array.isArray(node)) {
    node.forEach((n) => collectReferences(n, out));
  } else if (node && typeof node === 'object') {
    const obj = node as Record<string, unknown>;
    if (typeof obj.reference === 'string' && CONDITIONAL_REFERENCE_RE.test(obj.reference)) {
      out.push(obj as Reference);
    }
    for (const value of Object.values(obj)) {
      if (value && typeof value === 'object') {
        collectReferences(value, out);
      }
    }
  }
}

/** True when the stored JSON and the new resource differ only in meta.versionId/lastUpdated. */
function sameIgnoringMeta(storedContent: string, next: Resource): boolean {
  const stored = JSON.parse(storedContent) as Resource;
  const strip = (r: Resource): string => {
    const copy = { ...r, meta: { ...r.meta, versionId: undefined, lastUpdated: undefined } };
    return JSON.stringify(copy);
  };
  return strip(stored) === strip(next);
}

function isError(issue: OperationOutcomeIssue): boolean {
  return issue.severity === 'error' || issue.severity === 'fatal';
}

function dedupeIssues(issues: OperationOutcomeIssue[]): OperationOutcomeIssue[] {
  const seen = new Set<string>();
  return issues.filter((i) => {
    const key = JSON.stringify([i.code, i.details?.text, i.expression]);
    return seen.has(key) ? false : (seen.add(key), true);
  });
}

/** Deep offsets cost a scan of everything before them; cursor paging (no _sort) is the way past this. */
const MAX_OFFSET = 10_000;
/** Below this many estimated rows, `_total=estimate` counts exactly. */
const ESTIMATE_THRESHOLD = 10_000;

/** `_cursor=r{rid}`: continue after that row. */
function parseCursor(cursor: string | undefined): string | undefined {
  if (cursor === undefined) {
    return undefined;
  }
  const m = /^r(\d{1,19})$/.exec(cursor);
  if (!m) {
    throw new OperationOutcomeError(badRequest('Invalid _cursor', '_cursor'));
  }
  return m[1];
}

function checkOffset(offset: number): number {
  if (!Number.isInteger(offset) || offset < 0 || offset > MAX_OFFSET) {
    throw new OperationOutcomeError(badRequest(`_offset must be an integer from 0 to ${MAX_OFFSET}`, '_offset'));
  }
  return offset;
}

function clampCount(count: number | undefined): number {
  if (count === undefined) {
    return DEFAULT_SEARCH_COUNT;
  }
  if (!Number.isInteger(count) || count < 0) {
    throw new OperationOutcomeError(badRequest('Invalid _count', '_count'));
  }
  return Math.min(count, DEFAULT_MAX_SEARCH_COUNT);
}
