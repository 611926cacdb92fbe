import { evalFhirPath, getSearchParameters, matchesSearchRequest, Operator } from '@medplum/core';
import type { Filter, SearchRequest, SortRule } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import type { DefinitionType } from '../definitions.ts';
import { parseFilterExpression, splitValues } from '../search/compile.ts';

type FilterNode = ReturnType<typeof parseFilterExpression>;

/**
 * The R4 base definitions (StructureDefinition, SearchParameter, ValueSet, CodeSystem) as a read-only,
 * in-memory layer under every project's own rows. Searches use `@medplum/core`'s matcher; the
 * lookups clients make constantly (by url, by name, by base) go through maps.
 */
export class DefinitionsOverlay {
  private readonly byType: Map<DefinitionType, Resource[]>;
  private readonly byId = new Map<string, Resource>();
  private readonly byUrl = new Map<string, Resource[]>();

  constructor(byType: Map<DefinitionType, Resource[]>) {
    this.byType = byType;
    for (const [type, list] of byType) {
      for (const r of list) {
        this.byId.set(`${type}/${r.id}`, r);
        const url = (r as { url?: string }).url;
        if (url) {
          const key = `${type}|${url}`;
          this.byUrl.set(key, [...(this.byUrl.get(key) ?? []), r]);
        }
      }
    }
  }

  read(resourceType: string, id: string): Resource | undefined {
    return this.byId.get(`${resourceType}/${id}`);
  }

  byCanonical(resourceType: DefinitionType, url: string): Resource | undefined {
    return this.byUrl.get(`${resourceType}|${url.split('|')[0]}`)?.[0];
  }

  /** Every matching definition, in sort order. */
  search(request: SearchRequest): Resource[] {
    const type = request.resourceType as DefinitionType;
    const filters = request.filters ?? [];
    let candidates = this.byType.get(type) ?? [];
    const urlFilter = filters.find((f) => f.code === 'url' && f.operator === Operator.EQUALS);
    if (urlFilter) {
      candidates = splitValues(urlFilter.value).flatMap((u) => this.byUrl.get(`${type}|${u.split('|')[0]}`) ?? []);
    }
    const matches = candidates.filter((r) => filters.every((f) => matchesFilter(r, f)));
    return sortResources(matches, request.sortRules);
  }
}

function matchesFilter(resource: Resource, filter: Filter): boolean {
  if (filter.code === '_filter') {
    return matchesNode(resource, parseFilterExpression(filter.value));
  }
  if (filter.code === '_id') {
    const hit = splitValues(filter.value).includes(resource.id as string);
    return filter.operator === Operator.NOT || filter.operator === Operator.NOT_EQUALS ? !hit : hit;
  }
  if (filter.code === '_lastUpdated') {
    // Base definitions carry no lastUpdated; they match no _lastUpdated bound.
    return false;
  }
  const param = getSearchParameters(resource.resourceType)?.[filter.code];
  if (filter.operator === Operator.EXACT && param?.type === 'string') {
    // core's matcher treats :exact like the default prefix match; exact means equal.
    const wanted = splitValues(filter.value);
    return evalFhirPath(param.expression as string, resource).some((v) => typeof v === 'string' && wanted.includes(v));
  }
  return matchesSearchRequest(resource, { resourceType: resource.resourceType, filters: [filter] });
}

function matchesNode(resource: Resource, node: FilterNode): boolean {
  switch (node.kind) {
    case 'and':
      return matchesNode(resource, node.left) && matchesNode(resource, node.right);
    case 'or':
      return matchesNode(resource, node.left) || matchesNode(resource, node.right);
    case 'not':
      return !matchesNode(resource, node.child);
    case 'compare':
      return matchesFilter(resource, node.filter);
  }
}

function sortResources(resources: Resource[], rules: SortRule[] | undefined): Resource[] {
  if (!rules?.length) {
    return resources;
  }
  const keyed = resources.map((r) => ({ r, keys: rules.map((rule) => sortKey(r, rule)) }));
  keyed.sort((a, b) => {
    for (let i = 0; i < rules.length; i++) {
      const cmp = a.keys[i].localeCompare(b.keys[i]);
      if (cmp !== 0) {
        return rules[i].descending ? -cmp : cmp;
      }
    }
    return 0;
  });
  return keyed.map((k) => k.r);
}

function sortKey(resource: Resource, rule: SortRule): string {
  if (rule.code === '_id') {
    return resource.id ?? '';
  }
  const expression = getSearchParameters(resource.resourceType)?.[rule.code]?.expression;
  if (!expression) {
    return '';
  }
  const first = evalFhirPath(expression, resource)[0];
  return first === undefined ? '' : typeof first === 'string' ? first : JSON.stringify(first);
}
