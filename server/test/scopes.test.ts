import type { AccessPolicy } from '@medplum/fhirtypes';
import { describe, expect, test } from 'vitest';
import { buildAccessPolicy, PROTECTED_TYPES } from '../src/auth/policy.ts';
import { applyScopes, isSubsetOf, parseResourceScope, unknownScopes } from '../src/auth/scopes.ts';
import { AccessRules } from '../src/fhir/repo/access-rules.ts';

describe('SMART scopes', () => {
  test.each([
    ['patient/Observation.read', 'patient', 'Observation', ['read', 'vread', 'search', 'history'], undefined],
    ['user/*.write', 'user', '*', ['create', 'update', 'delete'], undefined],
    ['system/Patient.*', 'system', 'Patient', ['read', 'vread', 'search', 'history', 'create', 'update', 'delete'], undefined],
    ['patient/Observation.rs', 'patient', 'Observation', ['read', 'vread', 'history', 'search'], undefined],
    ['user/Observation.cruds', 'user', 'Observation', ['create', 'read', 'vread', 'history', 'update', 'delete', 'search'], undefined],
    ['patient/Observation.rs?category=laboratory', 'patient', 'Observation', ['read', 'vread', 'history', 'search'], 'category=laboratory'],
  ])('%s', (scope, level, resourceType, interactions, query) => {
    expect(parseResourceScope(scope)).toEqual({ level, resourceType, interactions, query });
  });

  test.each(['patient/Observation.', 'patient/Observation.sr', 'admin/*.read', 'patient/Obs-ervation.read', 'patient/*.x'])(
    '%s is not a resource scope',
    (scope) => {
      expect(parseResourceScope(scope)).toBeUndefined();
      expect(unknownScopes(`openid ${scope}`)).toEqual([scope]);
    }
  );

  test('non-resource scopes are known', () => {
    expect(unknownScopes('openid fhirUser launch launch/patient offline_access online_access profile email')).toEqual([]);
  });

  test('a refresh may narrow but not widen', () => {
    expect(isSubsetOf('openid patient/*.rs', 'openid patient/*.rs offline_access')).toBe(true);
    expect(isSubsetOf('openid user/*.cruds', 'openid patient/*.rs offline_access')).toBe(false);
  });
});

describe('scopes intersected with a policy', () => {
  const everything: AccessPolicy = { resourceType: 'AccessPolicy', resource: [{ resourceType: '*' }] };

  test('without resource scopes the policy stands', () => {
    expect(applyScopes(everything, 'openid profile', undefined)).toBe(everything);
  });

  test('user/Observation.rs on an open policy: Observation read and search only', () => {
    const rules = new AccessRules(applyScopes(everything, 'openid user/Observation.rs', undefined));
    expect(rules.allows('Observation', 'search')).toBe(true);
    expect(rules.allows('Observation', 'read')).toBe(true);
    expect(rules.allows('Observation', 'create')).toBe(false);
    expect(rules.allows('Patient', 'read')).toBe(false);
  });

  test('patient/ scopes confine to the launch patient; without one they grant nothing', () => {
    const rules = new AccessRules(applyScopes(everything, 'patient/*.rs', 'p1'));
    expect(rules.rowScope('Observation', 'search')).toEqual({
      kind: 'criteria',
      alternatives: [[{ code: '_compartment', operator: 'eq', value: 'Patient/p1' }]],
    });
    expect(rules.allows('Observation', 'update')).toBe(false);
    expect(new AccessRules(applyScopes(everything, 'patient/*.rs', undefined)).allows('Observation', 'read')).toBe(false);
  });

  test('criteria of policy and scope query are both required; readonly entries stay read-only', () => {
    const policy: AccessPolicy = {
      resourceType: 'AccessPolicy',
      resource: [{ resourceType: 'Observation', criteria: 'Observation?subject=Patient/p1', readonly: true }],
    };
    const scoped = applyScopes(policy, 'user/Observation.cruds?category=laboratory', undefined);
    expect(scoped.resource).toEqual([
      {
        resourceType: 'Observation',
        criteria: 'Observation?subject=Patient/p1&category=laboratory',
        interaction: ['read', 'vread', 'search', 'history'],
      },
    ]);
  });
});

describe('membership policies', () => {
  const membership = {
    resourceType: 'ProjectMembership' as const,
    project: { reference: 'Project/p' },
    user: { reference: 'User/u' },
    profile: { reference: 'Patient/pat1' },
  };

  test('no policy: everything in the project except administration types; definitions read-only', () => {
    const rules = new AccessRules(buildAccessPolicy({ membership, projectId: 'p', policies: new Map() }), PROTECTED_TYPES);
    expect(rules.allows('Observation', 'create')).toBe(true);
    expect(rules.allows('ProjectMembership', 'read')).toBe(false);
    expect(rules.allows('ClientApplication', 'search')).toBe(false);
    expect(rules.allows('StructureDefinition', 'read')).toBe(true);
  });

  test('admins administer their own project', () => {
    const rules = new AccessRules(buildAccessPolicy({ membership: { ...membership, admin: true }, projectId: 'p', policies: new Map() }), PROTECTED_TYPES);
    expect(rules.allows('ProjectMembership', 'create')).toBe(true);
    expect(rules.rowScope('Project', 'update')).toEqual({ kind: 'criteria', alternatives: [[{ code: '_id', operator: 'eq', value: 'p' }]] });
    expect(rules.readonlyFields('Project')).toEqual(['superAdmin', 'features', 'link']);
    expect(rules.allows('User', 'read')).toBe(false);
  });

  test('parameters are substituted: %patient, %profile.id, named ones; an unbound one matches nothing', () => {
    const policy: AccessPolicy = {
      resourceType: 'AccessPolicy',
      id: 'ap',
      resource: [
        { resourceType: 'Observation', criteria: 'Observation?subject=%patient' },
        { resourceType: 'Patient', criteria: 'Patient?_id=%profile.id' },
        { resourceType: 'Encounter', criteria: 'Encounter?service-provider=%org' },
        { resourceType: 'Condition', criteria: 'Condition?subject=%nobody' },
      ],
    };
    const built = buildAccessPolicy({
      membership: { ...membership, access: [{ policy: { reference: 'AccessPolicy/ap' }, parameter: [{ name: 'org', valueReference: { reference: 'Organization/o1' } }] }] },
      projectId: 'p',
      policies: new Map([['ap', policy]]),
    });
    expect(built.resource?.slice(0, 4).map((r) => r.criteria)).toEqual([
      'Observation?subject=Patient/pat1',
      'Patient?_id=pat1',
      'Encounter?service-provider=Organization/o1',
      'Condition?subject=ermis-unbound-parameter',
    ]);
  });

  test('a membership naming a policy that does not exist gets nothing from it', () => {
    const rules = new AccessRules(
      buildAccessPolicy({ membership: { ...membership, accessPolicy: { reference: 'AccessPolicy/gone' } }, projectId: 'p', policies: new Map() }),
      PROTECTED_TYPES
    );
    expect(rules.allows('Observation', 'read')).toBe(false);
    expect(rules.allows('StructureDefinition', 'read')).toBe(true);
  });

  test('a criteria of another type than its entry is refused', () => {
    expect(
      () => new AccessRules({ resourceType: 'AccessPolicy', resource: [{ resourceType: 'Observation', criteria: 'Patient?_id=1' }] })
    ).toThrow('does not match its resourceType');
  });

  test('hidden fields: hidden only when every entry of the type hides them', () => {
    const rules = new AccessRules({
      resourceType: 'AccessPolicy',
      resource: [
        { resourceType: 'Patient', criteria: 'Patient?_id=1', hiddenFields: ['birthDate', 'telecom'] },
        { resourceType: 'Patient', criteria: 'Patient?_id=2', hiddenFields: ['telecom'] },
      ],
    });
    expect(rules.hiddenFields('Patient')).toEqual(['telecom']);
  });
});
