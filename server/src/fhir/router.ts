import { allOk, badRequest, created, isOk, OperationOutcomeError, parseSearchRequest } from '@medplum/core';
import { FhirRouter } from '@medplum/fhir-router';
import type { FhirRepository, FhirRequest, FhirResponse, FhirRouteHandler, HttpMethod, RestInteraction } from '@medplum/fhir-router';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import { expandOperation } from './operations/expand.ts';
import { observationLastN, patientEverything, searchCompartment, searchSystem, searchType, searchTypeByPost } from './operations/search.ts';
import { validateOperation } from './operations/validate.ts';
import { PostgresRepository } from './repo/postgres-repository.ts';

/** The FHIR router: fhir-router's REST semantics plus ermis's history routes and operations. */
export function createFhirRouter(): FhirRouter {
  const router = new FhirRouter();
  // Some fhir-router routes are replaced (same path, so theirs is removed first): instance history,
  // which ignores _since, and update, which answers 200 where update-as-create must answer 201.
  replaceRoute(router, 'GET', ':resourceType/:id/_history', withRepo(historyInstance), 'history-instance');
  replaceRoute(router, 'PUT', ':resourceType/:id', withRepo(updateOperation), 'update');
  // Search: core's parser drops the `:Type` modifier of reference parameters, and lenient handling needs the headers.
  replaceRoute(router, 'GET', ':resourceType', withRepo(searchType), 'search-type');
  replaceRoute(router, 'POST', ':resourceType/_search', withRepo(searchTypeByPost), 'search-type');
  replaceRoute(router, 'GET', '', withRepo(searchSystem), 'search-system');
  router.add('GET', ':resourceType/_history', withRepo(historyType), 'history-type');
  router.add('GET', '_history', withRepo(historySystem), 'history-system');
  router.add('GET', 'Patient/:id/$everything', withRepo(patientEverything));
  router.add('GET', 'Observation/$lastn', withRepo(observationLastN));
  router.add('GET', 'Patient/:id/:resourceType', withRepo(searchCompartment), 'search-type');
  router.add('POST', ':resourceType/$validate', withRepo(validateOperation));
  router.add('GET', 'ValueSet/$expand', withRepo(expandOperation));
  router.add('POST', 'ValueSet/$expand', withRepo(expandOperation));
  router.add('GET', '$versions', async () => [allOk, { resourceType: 'Parameters', parameter: [{ name: 'version', valueCode: '4.0' }, { name: 'default', valueCode: '4.0' }] }]);
  return router;
}

function replaceRoute(
  router: FhirRouter,
  method: HttpMethod,
  path: string,
  handler: FhirRouteHandler,
  interaction: RestInteraction
): void {
  const routes = router.router.routes;
  const segments = path.split('/').map((p) => p.replace(/^:/, ''));
  const index = routes.findIndex((r) => r.method === method && r.path.map((p) => p.value).join('/') === segments.join('/'));
  if (index < 0) {
    throw new Error(`fhir-router has no ${method} ${path} route to replace`);
  }
  routes.splice(index, 1);
  router.add(method, path, handler, interaction);
}

async function updateOperation(req: FhirRequest, repo: PostgresRepository): Promise<FhirResponse> {
  const { resourceType, id } = req.params;
  const resource = req.body as Resource | undefined;
  if (!resource || resource.resourceType !== resourceType) {
    throw new OperationOutcomeError(badRequest(`Incorrect resource type: expected ${resourceType}`, 'resourceType'));
  }
  if (resource.id !== id) {
    throw new OperationOutcomeError(badRequest('Resource id does not match the URL', `${resourceType}.id`));
  }
  const result = await repo.upsertResource(resource, { ifMatch: parseIfMatch(req.headers?.['if-match']) });
  return [result.created ? created : allOk, result.resource];
}

/** The version in an If-Match header: `W/"v"`, `"v"` or `v`. */
export function parseIfMatch(header: string | string[] | undefined): string | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  return value ? /^(?:W\/)?"?([^"]+)"?$/.exec(value.trim())?.[1] : undefined;
}

function withRepo(handler: (req: FhirRequest, repo: PostgresRepository) => Promise<FhirResponse>): FhirRouteHandler {
  return (req: FhirRequest, repo: FhirRepository) => {
    if (!(repo instanceof PostgresRepository)) {
      throw new Error('ermis routes need the Postgres repository');
    }
    return handler(req, repo);
  };
}

function historyOptions(req: FhirRequest): { limit?: number; offset?: number; since?: string } {
  const int = (name: string): number | undefined => {
    const raw = req.query[name];
    if (raw === undefined) {
      return undefined;
    }
    const n = Number(Array.isArray(raw) ? raw[0] : raw);
    if (!Number.isInteger(n) || n < 0) {
      throw new OperationOutcomeError(badRequest(`Invalid ${name}`, name));
    }
    return n;
  };
  const since = req.query._since;
  return { limit: int('_count'), offset: int('_offset'), since: Array.isArray(since) ? since[0] : since };
}

async function historyInstance(req: FhirRequest, repo: PostgresRepository): Promise<FhirResponse> {
  return [allOk, await repo.readHistory(req.params.resourceType, req.params.id, historyOptions(req))];
}

async function historyType(req: FhirRequest, repo: PostgresRepository): Promise<FhirResponse> {
  return [allOk, await repo.readTypeHistory(req.params.resourceType, historyOptions(req))];
}

async function historySystem(req: FhirRequest, repo: PostgresRepository): Promise<FhirResponse> {
  return [allOk, await repo.readTypeHistory(undefined, historyOptions(req))];
}

/**
 * Handles one FHIR request. A transaction Bundle runs entirely inside one database transaction,
 * including fhir-router's resolution of conditional entries (which it would otherwise do before
 * the transaction), and with the advisory locks of its conditional criteria taken up front, in a
 * fixed order so that concurrent transactions cannot deadlock on them.
 */
export async function handleFhirRequest(router: FhirRouter, repo: PostgresRepository, req: FhirRequest): Promise<FhirResponse> {
  const bundle = req.body as Bundle | undefined;
  const isTransaction =
    req.method === 'POST' && stripQuery(req.url).replace(/^\/+/, '') === '' && bundle?.resourceType === 'Bundle' && bundle.type === 'transaction';
  if (!isTransaction) {
    return router.handleRequest(req, repo);
  }
  try {
    return await repo.withTransaction(async (tx) => {
      for (const criteria of conditionalCriteria(bundle)) {
        await tx.lockCriteria(parseSearchRequest(criteria));
      }
      await tx.lockResources(literalTargets(bundle));
      // fhir-router rewrites the bundle in place (ids, conditional URLs); a retried attempt starts from the original.
      const attempt: FhirRequest = { ...req, pathname: '', params: {}, query: {}, body: structuredClone(bundle) };
      const response = await router.handleRequest(attempt, tx);
      if (!isOk(response[0])) {
        throw new RolledBack(response);
      }
      return response;
    });
  } catch (err) {
    if (err instanceof RolledBack) {
      return err.response;
    }
    throw err;
  }
}

class RolledBack extends Error {
  readonly response: FhirResponse;
  constructor(response: FhirResponse) {
    super('transaction rolled back');
    this.response = response;
  }
}

function conditionalCriteria(bundle: Bundle): string[] {
  const criteria = new Set<string>();
  for (const entry of bundle.entry ?? []) {
    const request = entry.request;
    if (!request?.url) {
      continue;
    }
    if (request.method === 'POST' && request.ifNoneExist) {
      criteria.add(`${stripQuery(request.url)}?${request.ifNoneExist}`);
    } else if (request.method !== 'GET' && request.method !== 'POST' && request.url.includes('?')) {
      criteria.add(request.url);
    }
  }
  return [...criteria].sort();
}

/** The `Type/id` resources that PUT, PATCH and DELETE entries name literally. */
function literalTargets(bundle: Bundle): { resourceType: string; id: string }[] {
  const targets: { resourceType: string; id: string }[] = [];
  for (const entry of bundle.entry ?? []) {
    const { method, url } = entry.request ?? {};
    const m = url && method && method !== 'GET' && method !== 'POST' ? /^([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})$/.exec(url) : null;
    if (m) {
      targets.push({ resourceType: m[1], id: m[2] });
    }
  }
  return targets;
}

function stripQuery(url: string): string {
  const q = url.indexOf('?');
  return q < 0 ? url : url.slice(0, q);
}
