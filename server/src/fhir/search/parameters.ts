import { badRequest, getSearchParameters, OperationOutcomeError } from '@medplum/core';
import type { SearchParameter } from '@medplum/fhirtypes';

/** How an Identifier's type is indexed for `:of-type` (a token row whose system names the type). */
export function ofTypeSystem(typeSystem: string, typeCode: string): string {
  return `of-type:${typeSystem}|${typeCode}`;
}

const componentCache = new Map<string, SearchParameter[]>();

/** The component search parameters of a composite parameter, in order. */
export function compositeComponents(resourceType: string, param: SearchParameter): SearchParameter[] {
  const key = `${resourceType}\0${param.url ?? param.code}`;
  let cached = componentCache.get(key);
  if (!cached) {
    cached = findComponents(resourceType, param);
    componentCache.set(key, cached);
  }
  return cached;
}

function findComponents(resourceType: string, param: SearchParameter): SearchParameter[] {
  const all = Object.values(getSearchParameters(resourceType) ?? {});
  return (param.component ?? []).map((component) => {
    const found = all.find((p) => p.url === component.definition);
    if (!found) {
      throw new OperationOutcomeError(badRequest(`Composite parameter ${param.code} has an unknown component ${component.definition}`));
    }
    return found;
  });
}
