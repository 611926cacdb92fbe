import { badRequest, OperationOutcomeError, parseSearchRequest } from '@medplum/core';
import type { Filter } from '@medplum/core';
import type { AccessPolicy, AccessPolicyResource } from '@medplum/fhirtypes';

export type Interaction = 'read' | 'vread' | 'search' | 'history' | 'create' | 'update' | 'delete';

export const READ_INTERACTIONS: readonly Interaction[] = ['read', 'vread', 'search', 'history'];
export const ALL_INTERACTIONS: readonly Interaction[] = [...READ_INTERACTIONS, 'create', 'update', 'delete'];

/** Which rows of a type an interaction may touch: all of them, none, or those matching any of these filter sets. */
export type RowScope = { kind: 'all' } | { kind: 'none' } | { kind: 'criteria'; alternatives: Filter[][] };

/**
 * An effective AccessPolicy (parameters already substituted, SMART scopes already intersected),
 * answering which interactions are allowed on which types and which rows they may touch. The
 * row criteria are search filters; the search compiler turns them into SQL, so the same rule
 * holds for search, read, history, includes, chains and writes.
 */
export class AccessRules {
  private readonly entries: readonly AccessPolicyResource[];
  private readonly criteria = new Map<string, Filter[]>();

  private readonly protectedTypes: ReadonlySet<string>;

  /** `protectedTypes` are not covered by `*` entries: only an entry naming the type reaches them. */
  constructor(policy: AccessPolicy, protectedTypes: ReadonlySet<string> = new Set()) {
    this.entries = (policy.resource ?? []).map(normalizeEntry);
    this.protectedTypes = protectedTypes;
    for (const entry of this.entries) {
      if (entry.criteria) {
        this.criteria.set(entry.criteria, parseCriteria(entry.resourceType, entry.criteria));
      }
    }
  }

  /** Whether the interaction is allowed on at least some resources of the type. */
  allows(resourceType: string, interaction: Interaction): boolean {
    return this.matching(resourceType, interaction).length > 0;
  }

  rowScope(resourceType: string, interaction: Interaction): RowScope {
    const entries = this.matching(resourceType, interaction);
    if (entries.length === 0) {
      return { kind: 'none' };
    }
    const alternatives: Filter[][] = [];
    for (const entry of entries) {
      const filters = entry.criteria ? this.criteria.get(entry.criteria) : undefined;
      if (!filters?.length) {
        return { kind: 'all' };
      }
      alternatives.push(filters);
    }
    return { kind: 'criteria', alternatives };
  }

  /** Project-administration types: only an entry naming them reaches them, and only in the caller's own project. */
  isProtected(resourceType: string): boolean {
    return this.protectedTypes.has(resourceType);
  }

  /** Dotted element paths (`name`, `identifier.value`) never shown for this type. */
  hiddenFields(resourceType: string): string[] {
    return this.fieldList(resourceType, 'hiddenFields');
  }

  /** Dotted element paths a write may not change for this type (their stored values are kept). */
  readonlyFields(resourceType: string): string[] {
    return this.fieldList(resourceType, 'readonlyFields');
  }

  private fieldList(resourceType: string, key: 'hiddenFields' | 'readonlyFields'): string[] {
    // A field hidden by every entry of the type is hidden; one entry that shows it is enough to show it.
    const entries = this.entries.filter((e) => this.covers(e, resourceType));
    if (entries.length === 0) {
      return [];
    }
    const [first, ...rest] = entries.map((e) => e[key] ?? []);
    return first.filter((field) => rest.every((list) => list.includes(field)));
  }

  private covers(entry: AccessPolicyResource, resourceType: string): boolean {
    return entry.resourceType === resourceType || (entry.resourceType === '*' && !this.protectedTypes.has(resourceType));
  }

  private matching(resourceType: string, interaction: Interaction): AccessPolicyResource[] {
    return this.entries.filter((entry) => {
      if (!this.covers(entry, resourceType)) {
        return false;
      }
      if (entry.readonly && !READ_INTERACTIONS.includes(interaction)) {
        return false;
      }
      if (entry.interaction?.length) {
        return (entry.interaction as readonly string[]).includes(interaction);
      }
      return true;
    });
  }
}

/**
 * Medplum's other entry restrictions, in the terms this class evaluates, failing closed: the legacy
 * `compartment` becomes `_compartment` criteria; `writeConstraint` (FHIRPath this server does not
 * evaluate) makes the entry read-only.
 */
function normalizeEntry(entry: AccessPolicyResource): AccessPolicyResource {
  let normalized = entry;
  if (entry.compartment?.reference) {
    const clause = `_compartment=${entry.compartment.reference}`;
    const criteria = entry.criteria ? `${entry.criteria}${entry.criteria.includes('?') ? '&' : '?'}${clause}` : `${entry.resourceType === '*' ? '' : entry.resourceType}?${clause}`;
    normalized = { ...normalized, criteria, compartment: undefined };
  }
  if (entry.writeConstraint?.length) {
    normalized = { ...normalized, readonly: true };
  }
  return normalized;
}

/**
 * `Observation?subject=Patient/1` (the type must be the entry's), or for `*` entries a bare query
 * (`?_compartment=Patient/1` or `*?_compartment=...`) applied to every type.
 */
function parseCriteria(resourceType: string, criteria: string): Filter[] {
  const q = criteria.indexOf('?');
  const type = q < 0 ? criteria : criteria.slice(0, q);
  if (type !== resourceType && !(resourceType === '*' && (type === '' || type === '*'))) {
    throw new OperationOutcomeError(badRequest(`AccessPolicy criteria ${criteria} does not match its resourceType ${resourceType}`));
  }
  if (q < 0) {
    return [];
  }
  // A `*` entry's criteria can only use parameters every type has (`_compartment`, `_id`, ...).
  const parseAs = resourceType === '*' ? 'Resource' : resourceType;
  return parseSearchRequest(`${parseAs}?${criteria.slice(q + 1)}`).filters ?? [];
}

/** Removes dotted paths from a resource in place (through arrays at any level). */
export function removeFields(resource: object, paths: readonly string[]): void {
  for (const path of paths) {
    removePath(resource, path.split('.'));
  }
}

function removePath(node: unknown, parts: string[]): void {
  if (Array.isArray(node)) {
    node.forEach((item) => removePath(item, parts));
    return;
  }
  if (!node || typeof node !== 'object') {
    return;
  }
  const obj = node as Record<string, unknown>;
  const [head, ...rest] = parts;
  for (const key of matchingKeys(obj, head)) {
    if (rest.length === 0) {
      delete obj[key];
    } else {
      removePath(obj[key], rest);
    }
  }
}

/** `deceased` names every `deceased[x]` key (`deceasedBoolean`, `deceasedDateTime`), as FHIR paths do. */
function matchingKeys(obj: Record<string, unknown>, name: string): string[] {
  const base = name.replace(/\[x\]$/, '');
  return Object.keys(obj).filter((key) => key === base || (key.startsWith(base) && /^[A-Z]/.test(key.slice(base.length))));
}

/**
 * Readonly fields: puts back the stored value of each field's top-level element (`identifier.value`
 * keeps the whole `identifier`), so a write can neither change nor remove it.
 */
export function restoreFields(target: Record<string, unknown>, source: Record<string, unknown>, paths: readonly string[]): void {
  for (const path of paths) {
    const head = path.split('.')[0];
    for (const key of matchingKeys(target, head)) {
      delete target[key];
    }
    for (const key of matchingKeys(source, head)) {
      target[key] = structuredClone(source[key]);
    }
  }
}
