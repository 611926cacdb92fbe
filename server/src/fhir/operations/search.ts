import { allOk, badRequest, getSearchParameters, isChainedSearchFilter, Operator, OperationOutcomeError, parseSearchRequest } from '@medplum/core';
import type { SearchRequest } from '@medplum/core';
import type { FhirRequest, FhirResponse } from '@medplum/fhir-router';
import type { OperationOutcome, ResourceType } from '@medplum/fhirtypes';
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
  const request = parseSearch(resourceType, query);
  const ignored = isLenient(req) ? dropUnknownParameters(request) : [];
  const bundle = await repo.search(request);
  if (ignored.length > 0) {
    const outcome: OperationOutcome = {
      resourceType: 'OperationOutcome',
      issue: ignored.map((code) => ({
        severity: 'warning',
        code: 'not-supported',
        details: { text: `Unknown search parameter ${code} was ignored` },
        expression: [code],
      })),
    };
    bundle.entry = [...(bundle.entry ?? []), { resource: outcome as never, search: { mode: 'outcome' } }];
  }
  return [allOk, bundle];
}

/**
 * core's parseSearchRequest plus what it cannot do: composite parameters (it throws on them) are
 * taken out first and added back as plain filters, and `param:Type` reference modifiers are applied.
 */
export function parseSearch(resourceType: ResourceType, query: Query): SearchRequest {
  const params = getSearchParameters(resourceType) ?? {};
  const rest: Query = {};
  const composites: { code: string; value: string }[] = [];
  for (const [key, value] of Object.entries(applyTypeModifiers(resourceType, query))) {
    if (params[key]?.type === 'composite') {
      for (const v of [value ?? []].flat()) {
        composites.push({ code: key, value: v });
      }
    } else {
      rest[key] = value;
    }
  }
  const request = parseSearchRequest(resourceType, rest);
  if (composites.length > 0) {
    request.filters = [...(request.filters ?? []), ...composites.map((c) => ({ ...c, operator: Operator.EQUALS }))];
  }
  return request;
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
