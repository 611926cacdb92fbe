import { allOk, badRequest, notFound, OperationOutcomeError } from '@medplum/core';
import type { FhirRequest, FhirResponse } from '@medplum/fhir-router';
import type { ValueSet } from '@medplum/fhirtypes';
import { expandValueSet } from '../terminology.ts';
import type { CanonicalLookup } from '../terminology.ts';
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
  const valueSet = await repo.readCanonical<ValueSet>('ValueSet', url);
  if (!valueSet) {
    throw new OperationOutcomeError(notFound);
  }

  const lookup: CanonicalLookup = (type, u) => repo.readCanonical(type, u);
  const all = await expandValueSet(valueSet, lookup);
  if (!all) {
    throw new OperationOutcomeError(badRequest(`ValueSet ${url} cannot be expanded by this server`, 'url'));
  }
  const needle = filter ? normalizeText(filter) : undefined;
  const matches = all.filter(
    (c) =>
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
