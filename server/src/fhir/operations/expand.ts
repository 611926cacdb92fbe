import { allOk, badRequest, notFound, OperationOutcomeError } from '@medplum/core';
import type { FhirRequest, FhirResponse } from '@medplum/fhir-router';
import type { CodeSystem, CodeSystemConcept, ValueSet, ValueSetComposeInclude, ValueSetExpansionContains } from '@medplum/fhirtypes';
import { normalizeText } from '../search/index-values.ts';
import type { PostgresRepository } from '../repo/postgres-repository.ts';

const MAX_EXPANSION = 1000;

/**
 * `ValueSet/$expand` (GET or POST) with `url`, `filter`, `count` and `offset`. Expands explicit concept
 * lists and whole code systems known to the server (base definitions or the project's own).
 */
export async function expandOperation(req: FhirRequest, repo: PostgresRepository): Promise<FhirResponse> {
  const params = { ...req.query, ...parametersBody(req.body) };
  const url = single(params.url);
  if (!url) {
    throw new OperationOutcomeError(badRequest('Missing url parameter', 'url'));
  }
  const count = toInt(single(params.count), 'count') ?? MAX_EXPANSION;
  const offset = toInt(single(params.offset), 'offset') ?? 0;
  const filter = single(params.filter);
  const valueSet = await findByUrl<ValueSet>(repo, 'ValueSet', url);
  if (!valueSet) {
    throw new OperationOutcomeError(notFound);
  }

  const all: ValueSetExpansionContains[] = [];
  for (const include of valueSet.compose?.include ?? []) {
    all.push(...(await includeConcepts(repo, include)));
  }
  if (all.length === 0 && valueSet.expansion?.contains) {
    all.push(...flattenContains(valueSet.expansion.contains));
  }
  const excluded = new Set<string>();
  for (const exclude of valueSet.compose?.exclude ?? []) {
    for (const c of await includeConcepts(repo, exclude)) {
      excluded.add(`${c.system}|${c.code}`);
    }
  }
  const needle = filter ? normalizeText(filter) : undefined;
  const matches = all.filter(
    (c) =>
      !excluded.has(`${c.system}|${c.code}`) &&
      (!needle || normalizeText(c.display ?? '').includes(needle) || normalizeText(c.code ?? '').includes(needle))
  );
  const expanded: ValueSet = {
    resourceType: 'ValueSet',
    id: valueSet.id,
    url: valueSet.url,
    version: valueSet.version,
    name: valueSet.name,
    title: valueSet.title,
    status: valueSet.status,
    expansion: {
      timestamp: new Date().toISOString(),
      total: matches.length,
      offset,
      contains: matches.slice(offset, offset + Math.min(count, MAX_EXPANSION)),
    },
  };
  return [allOk, expanded];
}

async function includeConcepts(repo: PostgresRepository, include: ValueSetComposeInclude): Promise<ValueSetExpansionContains[]> {
  const system = include.system;
  if (include.concept?.length) {
    return include.concept.map((c) => ({ system, code: c.code, display: c.display }));
  }
  const result: ValueSetExpansionContains[] = [];
  if (system) {
    const codeSystem = await findByUrl<CodeSystem>(repo, 'CodeSystem', system);
    const concepts = flattenConcepts(codeSystem?.concept ?? []);
    const isA = include.filter?.find((f) => f.op === 'is-a' || f.op === 'descendent-of');
    const scoped = isA ? descendants(codeSystem?.concept ?? [], isA.value as string, isA.op === 'is-a') : concepts;
    result.push(...scoped.map((c) => ({ system, code: c.code, display: c.display })));
  }
  for (const nested of include.valueSet ?? []) {
    const vs = await findByUrl<ValueSet>(repo, 'ValueSet', nested);
    for (const inner of vs?.compose?.include ?? []) {
      result.push(...(await includeConcepts(repo, inner)));
    }
  }
  return result;
}

function flattenConcepts(concepts: CodeSystemConcept[]): CodeSystemConcept[] {
  return concepts.flatMap((c) => [c, ...flattenConcepts(c.concept ?? [])]);
}

function descendants(concepts: CodeSystemConcept[], code: string, includeSelf: boolean): CodeSystemConcept[] {
  for (const c of concepts) {
    if (c.code === code) {
      const below = flattenConcepts(c.concept ?? []);
      return includeSelf ? [c, ...below] : below;
    }
    const found = descendants(c.concept ?? [], code, includeSelf);
    if (found.length) {
      return found;
    }
  }
  return [];
}

function flattenContains(contains: ValueSetExpansionContains[]): ValueSetExpansionContains[] {
  return contains.flatMap((c) => [{ system: c.system, code: c.code, display: c.display }, ...flattenContains(c.contains ?? [])]);
}

async function findByUrl<T extends ValueSet | CodeSystem>(
  repo: PostgresRepository,
  resourceType: T['resourceType'],
  url: string
): Promise<T | undefined> {
  return repo.searchOne<T>({ resourceType, filters: [{ code: 'url', operator: 'eq', value: url }] } as never);
}

function parametersBody(body: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  const params = (body as { resourceType?: string; parameter?: { name: string; valueString?: string; valueUri?: string; valueInteger?: number }[] })
    ?.parameter;
  for (const p of params ?? []) {
    const value = p.valueString ?? p.valueUri ?? (p.valueInteger !== undefined ? String(p.valueInteger) : undefined);
    if (value !== undefined) {
      out[p.name] = value;
    }
  }
  return out;
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function toInt(value: string | undefined, name: string): number | undefined {
  if (value === undefined) {
    return undefined;
  }
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) {
    throw new OperationOutcomeError(badRequest(`Invalid ${name}`, name));
  }
  return n;
}
