import { allOk, badRequest, getSearchParameters, isChainedSearchFilter, Operator, OperationOutcomeError, parseSearchRequest } from '@medplum/core';
import type { Filter, SearchRequest } from '@medplum/core';
import type { FhirRequest, FhirResponse } from '@medplum/fhir-router';
import type { Observation, OperationOutcome, ResourceType } from '@medplum/fhirtypes';
import { patientCompartmentParams } from '../search/compartments.ts';
import type { PostgresRepository } from '../repo/postgres-repository.ts';

type Query = Record<string, string | string[] | undefined>;

/** Search parameters that are not search parameters of a type but control the result. */
const RESULT_PARAMETERS = new Set([
  '_sort', '_count', '_offset', '_total', '_summary', '_elements', '_fields', '_include', '_revinclude',
  '_type', '_format', '_pretty', '_cursor', '_', '_filter', '_id', '_lastUpdated',
]);

/** `GET {type}?…` */
export async function searchType(req: FhirRequest, repo: PostgresRepository): Promise<FhirResponse> {
  return runSearch(req, repo, req.params.resourceType as ResourceType, req.query);
}

/** `POST {type}/_search` with form parameters. */
export async function searchTypeByPost(req: FhirRequest, repo: PostgresRepository): Promise<FhirResponse> {
  const body = (req.body ?? {}) as Query;
  return runSearch(req, repo, req.params.resourceType as ResourceType, { ...req.query, ...body });
}

/** `GET ?_type=…` across several types. */
export async function searchSystem(req: FhirRequest, repo: PostgresRepository): Promise<FhirResponse> {
  const request = parseSearchRequest('MultipleTypes' as ResourceType, req.query);
  if (!request.types?.length) {
    throw new OperationOutcomeError(badRequest('No types specified', '_type'));
  }
  return [allOk, await repo.search(request)];
}

/**
 * Parses and runs a search. Before core's parser sees the query, `param:Type=id` (a reference
 * restricted to one target type, which core's parser would drop) becomes `param=Type/id`. Under
 * `Prefer: handling=lenient` unknown parameters are left out and reported in an OperationOutcome
 * entry; by default (strict) they are a 400.
 */
async function runSearch(req: FhirRequest, repo: PostgresRepository, resourceType: ResourceType, query: Query): Promise<FhirResponse> {
  const lenient = isLenient(req);
  const { request, ignored: badModifiers } = parseSearch(resourceType, query, lenient);
  const ignored = [...badModifiers, ...(lenient ? dropUnknownParameters(request) : [])];
  const bundle = await repo.search(request);
  if (ignored.length > 0) {
    const outcome: OperationOutcome = {
      resourceType: 'OperationOutcome',
      issue: ignored.map((code) => ({
        severity: 'warning',
        code: 'not-supported',
        details: { text: `Unknown search parameter or modifier ${code} was ignored` },
        expression: [code],
      })),
    };
    bundle.entry = [...(bundle.entry ?? []), { resource: outcome as never, search: { mode: 'outcome' } }];
  }
  return [allOk, bundle];
}

/** Modifiers a search parameter key may carry (a reference's may also be a resource type). */
const MODIFIERS = new Set(['missing', 'exact', 'contains', 'text', 'not', 'above', 'below', 'in', 'not-in', 'of-type', 'identifier', 'iterate']);
/** Types whose values may carry a prefix: core validates a single value, so lists are passed on raw. */
const ORDERED_TYPES = new Set(['date', 'number', 'quantity']);

/**
 * core's parseSearchRequest plus what it cannot do: composite parameters (it throws on them) and
 * comma-separated lists of dates or numbers (it validates the list as one value) are passed as raw
 * filters to the compiler; `param:Type` reference modifiers are applied; an unknown modifier (which
 * core would silently drop) is a 400, or with `lenient` ignored and returned in `ignored`.
 */
export function parseSearch(resourceType: ResourceType, query: Query, lenient = false): { request: SearchRequest; ignored: string[] } {
  const params = getSearchParameters(resourceType) ?? {};
  const rest: Query = {};
  const raw: Filter[] = [];
  const ignored: string[] = [];
  for (const [key, value] of Object.entries(applyTypeModifiers(resourceType, query))) {
    const [code, modifier] = key.split(':');
    const param = params[code];
    if (param && modifier !== undefined && !key.includes('.') && !MODIFIERS.has(modifier)) {
      if (!lenient) {
        throw new OperationOutcomeError(badRequest(`Unknown modifier :${modifier} on search parameter ${code}`, key));
      }
      ignored.push(key);
      continue;
    }
    const values = [value ?? []].flat();
    if (param && modifier === undefined && (param.type === 'composite' || (ORDERED_TYPES.has(param.type) && values.some((v) => v.includes(','))))) {
      raw.push(...values.map((v) => ({ code, operator: Operator.EQUALS, value: v })));
    } else {
      rest[key] = value;
    }
  }
  const request = parseSearchRequest(resourceType, rest);
  if (raw.length > 0) {
    request.filters = [...(request.filters ?? []), ...raw];
  }
  return { request, ignored };
}

function isLenient(req: FhirRequest): boolean {
  const prefer = req.headers?.prefer;
  return /handling=lenient/.test(Array.isArray(prefer) ? prefer.join(',') : (prefer ?? ''));
}

/** `subject:Patient=123` → `subject=Patient/123` for reference parameters. */
export function applyTypeModifiers(resourceType: string, query: Query): Query {
  const params = getSearchParameters(resourceType) ?? {};
  const result: Query = {};
  const add = (key: string, value: string | string[] | undefined): void => {
    const values = [result[key], value].flat().filter((v): v is string => v !== undefined);
    result[key] = values.length === 1 ? values[0] : values;
  };
  for (const [key, value] of Object.entries(query)) {
    const m = /^([^:.]+):([A-Z][A-Za-z]+)$/.exec(key);
    if (m && params[m[1]]?.type === 'reference') {
      const typed = [value ?? []].flat().map((v) =>
        v
          .split(',')
          .map((one) => (one.includes('/') ? one : `${m[2]}/${one}`))
          .join(',')
      );
      add(m[1], typed);
    } else {
      add(key, value);
    }
  }
  return result;
}

/** Removes filters whose parameter the type does not have; returns their codes. */
function dropUnknownParameters(request: SearchRequest): string[] {
  const params = getSearchParameters(request.resourceType) ?? {};
  const ignored: string[] = [];
  request.filters = request.filters?.filter((f) => {
    const known =
      RESULT_PARAMETERS.has(f.code) || f.code.startsWith('_has:') || isChainedSearchFilter(f) || f.code in params;
    if (!known) {
      ignored.push(f.code);
    }
    return known;
  });
  return ignored;
}

/** `GET Patient/{id}/{type}?…`: a search of {type} within the patient's compartment. */
export async function searchCompartment(req: FhirRequest, repo: PostgresRepository): Promise<FhirResponse> {
  const { id, resourceType } = req.params;
  if (!patientCompartmentParams().has(resourceType)) {
    throw new OperationOutcomeError(badRequest(`${resourceType} is not in the Patient compartment`));
  }
  await repo.readResource('Patient', id);
  const { request } = parseSearch(resourceType as ResourceType, req.query);
  request.filters = [...(request.filters ?? []), { code: '_compartment', operator: Operator.EQUALS, value: `Patient/${id}` }];
  return [allOk, await repo.search(request)];
}

/**
 * `Patient/{id}/$everything`: the patient and every resource in its compartment, optionally only
 * `_type` types and changes since `_since`, paged with `_count`/`_offset`.
 */
export async function patientEverything(req: FhirRequest, repo: PostgresRepository): Promise<FhirResponse> {
  const { id } = req.params;
  await repo.readResource('Patient', id);
  const single = (name: string): string | undefined => {
    const v = req.query[name];
    return Array.isArray(v) ? v[0] : v;
  };
  const compartmentTypes = [...patientCompartmentParams().keys()];
  // The patient's record, not the server's access log about it: AuditEvents only when asked for by
  // _type. Without _type, the types the caller may search (a restricted policy still gets its part).
  const access = repo.context.access;
  const wanted =
    single('_type')?.split(',') ?? compartmentTypes.filter((t) => t !== 'AuditEvent' && (!access || access.allows(t, 'search')));
  const types = wanted.filter((t) => compartmentTypes.includes(t)) as ResourceType[];
  if (types.length === 0) {
    throw new OperationOutcomeError(badRequest('No compartment types in _type', '_type'));
  }
  const filters: Filter[] = [{ code: '_compartment', operator: Operator.EQUALS, value: `Patient/${id}` }];
  const since = single('_since');
  if (since) {
    filters.push({ code: '_lastUpdated', operator: Operator.GREATER_THAN_OR_EQUALS, value: since });
  }
  const count = single('_count');
  const offset = single('_offset');
  const request: SearchRequest = {
    resourceType: types[0],
    types,
    filters,
    count: count === undefined ? 1000 : Number(count),
    offset: offset === undefined ? undefined : Number(offset),
    total: 'accurate',
  };
  const bundle = await repo.search(request);
  return [allOk, bundle];
}

/**
 * `Observation/$lastn?max=N&…`: for each observation code (among the Observations the other
 * parameters select), the N most recent by effective date.
 */
export async function observationLastN(req: FhirRequest, repo: PostgresRepository): Promise<FhirResponse> {
  const { max: rawMax, ...query } = req.query;
  const max = rawMax === undefined ? 1 : Number(Array.isArray(rawMax) ? rawMax[0] : rawMax);
  if (!Number.isInteger(max) || max < 1) {
    throw new OperationOutcomeError(badRequest('max must be a positive integer', 'max'));
  }
  const { request } = parseSearch('Observation', query);
  request.sortRules = [{ code: 'date', descending: true }];
  request.count = 1000;
  const perCode = new Map<string, number>();
  const entry = [];
  let offset = 0;
  // walk the matches newest first and keep the first `max` of each code
  for (;;) {
    const page = await repo.search({ ...request, offset }, { resourceOnly: true });
    for (const e of page.entry ?? []) {
      const coding = (e.resource as Observation).code?.coding?.[0];
      const key = coding ? `${coding.system ?? ''}|${coding.code ?? ''}` : `text|${(e.resource as Observation).code?.text ?? ''}`;
      const seen = perCode.get(key) ?? 0;
      if (seen < max) {
        perCode.set(key, seen + 1);
        entry.push(e);
      }
    }
    if ((page.entry?.length ?? 0) < 1000 || offset >= 9000) {
      break;
    }
    offset += 1000;
  }
  return [allOk, { resourceType: 'Bundle', type: 'searchset', total: entry.length, entry }];
}
