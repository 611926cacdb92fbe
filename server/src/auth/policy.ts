import type { AccessPolicy, AccessPolicyResource, ProjectMembership, Reference } from '@medplum/fhirtypes';

/**
 * Types that belong to project administration: a `*` policy entry does not reach them, only an
 * entry naming them does, and only project admins get such entries by default.
 */
export const PROTECTED_TYPES: ReadonlySet<string> = new Set([
  'Project',
  'ProjectMembership',
  'User',
  'ClientApplication',
  'AccessPolicy',
  'Bot',
  'JsonWebKey',
  'Login',
  'DomainConfiguration',
]);

/** Everyone may read the definitions (clients load schemas and value sets from them). */
const DEFINITION_ENTRIES: AccessPolicyResource[] = ['StructureDefinition', 'SearchParameter', 'ValueSet', 'CodeSystem'].map(
  (resourceType) => ({ resourceType, readonly: true })
);

/** What a project admin administers in its own project (the project filter keeps it there). */
function adminEntries(projectId: string): AccessPolicyResource[] {
  return [
    { resourceType: 'Project', criteria: `Project?_id=${projectId}`, readonlyFields: ['superAdmin', 'features', 'link'] },
    { resourceType: 'ProjectMembership' },
    { resourceType: 'ClientApplication' },
    { resourceType: 'AccessPolicy' },
    { resourceType: 'Bot' },
  ];
}

export interface PolicySources {
  membership: ProjectMembership;
  projectId: string;
  /** The AccessPolicy resources the membership names, by id. */
  policies: ReadonlyMap<string, AccessPolicy>;
}

/**
 * The membership's effective policy: its `accessPolicy` and every `access[]` policy with their
 * parameters substituted (`%profile`, `%patient`, `%<name>`, `%<name>.id`), entries OR-ed; no
 * policy at all means everything in the project. Definitions are always readable; admin types
 * only for admins.
 */
export function buildAccessPolicy({ membership, projectId, policies }: PolicySources): AccessPolicy {
  const profile = membership.profile?.reference;
  const defaults: Record<string, string> = {};
  if (profile) {
    defaults.profile = profile;
    if (profile.startsWith('Patient/')) {
      defaults.patient = profile;
    }
  }
  const resource: AccessPolicyResource[] = [];
  let named = false;
  const addPolicy = (ref: Reference<AccessPolicy> | undefined, parameters: Record<string, string>): void => {
    const id = ref?.reference?.startsWith('AccessPolicy/') ? ref.reference.slice('AccessPolicy/'.length) : undefined;
    if (!id) {
      return;
    }
    named = true;
    const policy = policies.get(id);
    // A membership naming a policy that no longer exists gets nothing from it (never everything);
    // nor does a policy using restrictions this server does not evaluate (fail closed).
    if (policy && !policy.basedOn?.length && !policy.ipAccessRule?.length && !policy.compartment) {
      // Administration types come only from the admin entries below: a policy an admin writes
      // cannot widen them (e.g. to make its own project super admin).
      for (const entry of substitute(policy, { ...defaults, ...parameters }).resource) {
        if (entry.resourceType === 'Bot') {
          // Reading a Bot is what lets a member run it ($execute), as in Medplum; changing bots stays with admins.
          resource.push({ ...entry, readonly: true, interaction: undefined });
        } else if (!PROTECTED_TYPES.has(entry.resourceType)) {
          resource.push(entry);
        }
      }
    }
  };
  addPolicy(membership.accessPolicy, {});
  for (const access of membership.access ?? []) {
    const parameters: Record<string, string> = {};
    for (const p of access.parameter ?? []) {
      const value = p.valueReference?.reference ?? p.valueString;
      if (p.name && value) {
        parameters[p.name] = value;
      }
    }
    addPolicy(access.policy, parameters);
  }
  if (!named) {
    resource.push({ resourceType: '*' });
  }
  resource.push(...DEFINITION_ENTRIES);
  if (membership.admin) {
    resource.push(...adminEntries(projectId));
  }
  return { resourceType: 'AccessPolicy', resource };
}

/** Replaces `%name.id` and `%name` in a policy's JSON; unknown parameters make the criteria match nothing. */
function substitute(policy: AccessPolicy, parameters: Record<string, string>): { resource: AccessPolicyResource[] } {
  const entries = structuredClone(policy.resource ?? []);
  for (const entry of entries) {
    if (!entry.criteria) {
      continue;
    }
    entry.criteria = entry.criteria.replace(/%([A-Za-z][A-Za-z0-9_-]*)(\.id)?/g, (_match, name: string, idSuffix: string | undefined) => {
      const value = parameters[name];
      if (value === undefined) {
        // e.g. %patient for a Practitioner: a value no resource has, so the entry grants nothing
        return 'ermis-unbound-parameter';
      }
      return idSuffix ? value.slice(value.lastIndexOf('/') + 1) : value;
    });
  }
  return { resource: entries };
}
