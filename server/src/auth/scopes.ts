import type { AccessPolicy, AccessPolicyResource } from '@medplum/fhirtypes';
import { ALL_INTERACTIONS, READ_INTERACTIONS } from '../fhir/repo/access-rules.ts';
import type { Interaction } from '../fhir/repo/access-rules.ts';

/** One SMART resource scope (v1 or v2), e.g. `patient/Observation.rs?category=laboratory`. */
export interface ResourceScope {
  level: 'patient' | 'user' | 'system';
  resourceType: string;
  interactions: Interaction[];
  /** The `?query` of a v2 scope, without the `?`. */
  query: string | undefined;
}

const SCOPE_RE = /^(patient|user|system)\/([A-Za-z]+|\*)\.(read|write|\*|c?r?u?d?s?)(\?.*)?$/;
/** Scopes that are not about resources; accepted as they are. */
const OTHER_SCOPES = new Set(['openid', 'profile', 'email', 'phone', 'address', 'fhirUser', 'launch', 'launch/patient', 'launch/encounter', 'offline_access', 'online_access', 'offline']);

export function splitScope(scope: string | undefined): string[] {
  return (scope ?? '').split(/\s+/).filter(Boolean);
}

/** Undefined when the scope is neither a SMART resource scope nor one of the known other scopes. */
export function parseResourceScope(scope: string): ResourceScope | undefined {
  const m = SCOPE_RE.exec(scope);
  if (!m || m[3] === '') {
    return undefined;
  }
  const [, level, resourceType, perms, query] = m;
  let interactions: Interaction[];
  if (perms === 'read') {
    interactions = [...READ_INTERACTIONS];
  } else if (perms === 'write') {
    interactions = ['create', 'update', 'delete'];
  } else if (perms === '*') {
    interactions = [...ALL_INTERACTIONS];
  } else {
    interactions = [];
    if (perms.includes('c')) interactions.push('create');
    if (perms.includes('r')) interactions.push('read', 'vread', 'history');
    if (perms.includes('u')) interactions.push('update');
    if (perms.includes('d')) interactions.push('delete');
    if (perms.includes('s')) interactions.push('search');
  }
  return { level: level as ResourceScope['level'], resourceType, interactions, query: query ? query.slice(1) : undefined };
}

/** The scopes of a request that this server does not understand (an `invalid_scope` error). */
export function unknownScopes(scope: string | undefined): string[] {
  return splitScope(scope).filter((s) => !OTHER_SCOPES.has(s) && !parseResourceScope(s));
}

/** True when every scope of `requested` is also in `granted` (a refresh may narrow, never widen). */
export function isSubsetOf(requested: string | undefined, granted: string): boolean {
  const allowed = new Set(splitScope(granted));
  return splitScope(requested).every((s) => allowed.has(s));
}

/** Whether a scope string holds any SMART resource scope. */
export function hasResourceScopes(scope: string): boolean {
  return splitScope(scope).some((s) => parseResourceScope(s) !== undefined);
}

/**
 * Intersects an access policy with SMART resource scopes. Without resource scopes the policy
 * stands as it is (a plain `openid` sign-in) — unless the grant had some (`grant`: the login's
 * scope): a token narrowed on refresh to no resource scope gets no resource at all. Each policy
 * entry is kept for the types a scope names, with the interactions both allow and both criteria;
 * `patient/` scopes also confine the entry to the launch patient's compartment (none at all
 * without a patient).
 */
export function applyScopes(policy: AccessPolicy, scope: string, patientId: string | undefined, grant: string = scope): AccessPolicy {
  const scopes = splitScope(scope)
    .map(parseResourceScope)
    .filter((s): s is ResourceScope => s !== undefined);
  if (scopes.length === 0) {
    return hasResourceScopes(grant) ? { ...policy, resource: [] } : policy;
  }
  const resource: AccessPolicyResource[] = [];
  for (const entry of policy.resource ?? []) {
    const entryInteractions = allowedInteractions(entry);
    for (const s of scopes) {
      if (s.resourceType !== '*' && entry.resourceType !== '*' && s.resourceType !== entry.resourceType) {
        continue;
      }
      if (s.level === 'patient' && !patientId) {
        continue;
      }
      const resourceType = entry.resourceType === '*' ? s.resourceType : entry.resourceType;
      const interaction = entryInteractions.filter((i) => s.interactions.includes(i));
      if (interaction.length === 0) {
        continue;
      }
      const criteria = joinCriteria(resourceType, [
        entry.criteria,
        s.query,
        s.level === 'patient' ? `_compartment=Patient/${patientId}` : undefined,
      ]);
      resource.push({
        resourceType,
        ...(criteria ? { criteria } : {}),
        interaction,
        ...(entry.hiddenFields ? { hiddenFields: entry.hiddenFields } : {}),
        ...(entry.readonlyFields ? { readonlyFields: entry.readonlyFields } : {}),
      });
    }
  }
  return { ...policy, resource };
}

function allowedInteractions(entry: AccessPolicyResource): Interaction[] {
  const base: readonly Interaction[] = entry.readonly ? READ_INTERACTIONS : ALL_INTERACTIONS;
  return entry.interaction?.length ? base.filter((i) => (entry.interaction as string[]).includes(i)) : [...base];
}

/** `Type?a&b`: the queries of a policy entry's criteria and of scopes, all required. */
function joinCriteria(resourceType: string, parts: (string | undefined)[]): string | undefined {
  const queries = parts
    .filter((p): p is string => !!p)
    .map((p) => (p.includes('?') ? p.slice(p.indexOf('?') + 1) : p))
    .filter(Boolean);
  if (queries.length === 0) {
    return undefined;
  }
  return `${resourceType === '*' ? '' : resourceType}?${queries.join('&')}`;
}
