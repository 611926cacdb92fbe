import type { AccessPolicy, ProjectMembership, Resource } from '@medplum/fhirtypes';
import { randomUUID } from 'node:crypto';
import { beforeAll, describe, expect, test } from 'vitest';
import { unique, useTestServer } from './harness.ts';

/*
 * Isolation matrix: two projects and, in project A, three roles, run over every interaction and
 * search feature a token can reach, over real HTTP with real sign-ins.
 *
 * Project A (the first project, admin = the harness admin) holds:
 *   p1, p2    Patients (p1 is the practitioner's %patient), pU the patient user's own Patient
 *   o1, o2    Observations of p1 (heart rate, weight), o3 of p2 (glucose), oU of pU (heart rate),
 *   oX        an Observation whose subject and performer are ids of project B (dangling in A)
 *   e1 e2 eU  Encounters; dr1 (results o1, o2, o3; based on sr1), dr2 (o3), drU (oU) DiagnosticReports
 *   sr1       a ServiceRequest of p1 (a type outside both restricted policies)
 *   b1 b2 bU  Binaries; d1 -> b1 + b2, d2 -> b2 + bB1 (B's), dU -> bU DocumentReferences
 *   prA       the performer Practitioner
 * Project B (registered through /auth/newuser + /auth/newproject) holds the same shapes with the
 * same family name and codes (so a leak would match): p1B, p2B, pHijackB, oB1, oB2, oHijackB, eB1,
 * drB1, bB1, dB1, prB.
 *
 * Roles: adminA, practA (criteria policy on %patient = p1, hidden Patient.telecom, read-only
 * Patient.birthDate, Binary b1 only), patientA (the usual %profile policy, no Binary) and adminB,
 * who runs every project-A case as the cross-project reader (and A's roles run project B's cases).
 *
 * Bots ($execute) do not exist yet (next issue): they are not part of this matrix.
 */

const t = useTestServer({ REGISTRATION_ENABLED: 'true' });

const PASSWORD = 'isolation-matrix-pw-1';
const LOINC = 'http://loinc.org';
const HR = '8867-4';
const WEIGHT = '29463-7';
const GLUCOSE = '2339-0';
const TEMP = '8310-5';
const IDS = 'urn:isomatrix';

type Role = 'adminA' | 'practA' | 'patientA' | 'adminB';
const ROLES: readonly Role[] = ['adminA', 'practA', 'patientA', 'adminB'];
/** A status, or (status 200) the exact set of fixture keys / groups the response holds. */
type Expected = number | string[];
// Response bodies are checked field by field; a loose type keeps the assertions readable.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = any;

const token = {} as Record<Role | 'practEdit' | 'practDeact', string>;
/** Fixture key -> `Type/id`. */
const F: Record<string, string> = {};
/** Fixture key -> versionId at creation (or at the last write a test made on purpose). */
const V: Record<string, string> = {};
/** Group key -> `Type/id` list (sets computed once from the fixtures). */
const G: Record<string, string[]> = {};
let projectA: string;
let projectB: string;
let secretB: string;
/** Everything of project B, by fixture key. */
const B_KEYS = ['prB', 'p1B', 'p2B', 'pHijackB', 'oB1', 'oB2', 'oHijackB', 'eB1', 'bB1', 'dB1', 'drB1', 'policyB', 'clientB', 'adminBProfile'];
const member = {} as Record<'practA' | 'patientA' | 'practEdit' | 'practDeact' | 'adminA' | 'adminB', ProjectMembership>;
const email = {} as Record<'practA' | 'patientA' | 'practEdit' | 'practDeact' | 'adminB', string>;

// ------------------------------------------------------------------------------------------ helpers

interface Reply {
  status: number;
  body: Json;
  headers: Headers;
}

/** `path` below /fhir/R4/ unless it starts with `/` (then below the server root). */
async function call(who: Role | 'practEdit' | 'practDeact' | 'none', method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Reply> {
  const url = path.startsWith('/') ? t.server.baseUrl + path.slice(1) : t.server.fhirUrl + path;
  const h: Record<string, string> = { ...headers };
  if (who !== 'none') {
    h.Authorization = `Bearer ${token[who]}`;
  }
  let payload: string | undefined;
  if (body !== undefined) {
    payload = typeof body === 'string' ? body : JSON.stringify(body);
    h['Content-Type'] ??= 'application/fhir+json';
  }
  const res = await fetch(url, { method, headers: h, body: payload });
  const text = await res.text();
  let parsed: Json = text;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    // raw content (Binary bytes)
  }
  return { status: res.status, body: parsed, headers: res.headers };
}

function id(key: string): string {
  const ref = F[key];
  if (!ref) {
    throw new Error(`no fixture ${key}`);
  }
  return ref.slice(ref.indexOf('/') + 1);
}

/** `{key}` -> id, `{v:key}` -> versionId, `{ref:key}` -> Type/id. */
function fill(template: string): string {
  return template.replace(/\{(v:|ref:)?([A-Za-z0-9]+)\}/g, (_m, kind: string | undefined, key: string) => {
    if (kind === 'v:') {
      return V[key];
    }
    if (kind === 'ref:') {
      return F[key];
    }
    return id(key);
  });
}

function expand(keys: string[]): string[] {
  return keys.flatMap((k) => G[k] ?? [F[k] ?? `missing fixture ${k}`]).sort();
}

/** The resources of a response as sorted `Type/id` (a history lists each resource once). */
function refsOf(body: Json): string[] {
  if (body?.resourceType === 'Bundle') {
    const refs = ((body.entry ?? []) as Json[])
      .filter((e) => e.resource && e.resource.resourceType !== 'OperationOutcome')
      .map((e) => `${e.resource.resourceType}/${e.resource.id}`);
    return (body.type === 'history' ? [...new Set(refs)] : refs).sort();
  }
  return body?.resourceType ? [`${body.resourceType}/${body.id}`] : [];
}

async function create(who: Role, key: string, resource: Resource): Promise<Json> {
  const r = await call(who, 'POST', resource.resourceType, resource);
  expect(r.status, `${key}: ${JSON.stringify(r.body)}`).toBe(201);
  F[key] = `${r.body.resourceType}/${r.body.id}`;
  V[key] = r.body.meta.versionId;
  return r.body;
}

function obs(key: string, subject: string, code: string, date: string, performer?: string): Resource {
  return {
    resourceType: 'Observation',
    identifier: [{ system: IDS, value: key }],
    status: 'final',
    code: { coding: [{ system: LOINC, code }] },
    subject: { reference: subject },
    performer: performer ? [{ reference: performer }] : undefined,
    effectiveDateTime: date,
    valueQuantity: { value: 70, unit: 'unit' },
  } as Resource;
}

function patient(key: string, given: string, birthDate: string, phone: string): Resource {
  return {
    resourceType: 'Patient',
    identifier: [{ system: IDS, value: key }],
    name: [{ family: 'Isomatrix', given: [given] }],
    birthDate,
    gender: 'female',
    telecom: [{ system: 'phone', value: phone }],
  } as Resource;
}

function doc(key: string, subject: string, binaries: string[]): Resource {
  return {
    resourceType: 'DocumentReference',
    identifier: [{ system: IDS, value: key }],
    status: 'current',
    subject: { reference: subject },
    content: binaries.map((b) => ({ attachment: { contentType: 'text/plain', url: b, title: `${key}.txt` } })),
  } as Resource;
}

function report(key: string, subject: string, results: string[], basedOn?: string): Resource {
  return {
    resourceType: 'DiagnosticReport',
    identifier: [{ system: IDS, value: key }],
    basedOn: basedOn ? [{ reference: basedOn }] : undefined,
    status: 'final',
    code: { text: 'panel' },
    subject: { reference: subject },
    result: results.map((reference) => ({ reference })),
  } as Resource;
}

function encounter(key: string, subject: string): Resource {
  return {
    resourceType: 'Encounter',
    identifier: [{ system: IDS, value: key }],
    status: 'finished',
    class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
    subject: { reference: subject },
  } as Resource;
}

function binary(text: string): Resource {
  return { resourceType: 'Binary', contentType: 'text/plain', data: Buffer.from(text).toString('base64') } as Resource;
}

async function invite(key: 'practA' | 'patientA' | 'practEdit' | 'practDeact', resourceType: string, firstName: string, membership: Partial<ProjectMembership>): Promise<void> {
  email[key as 'practA'] = `${unique(key.toLowerCase())}@example.com`;
  const r = await call('adminA', 'POST', `/admin/projects/${projectA}/invite`, {
    resourceType,
    firstName,
    lastName: 'Isomatrix',
    email: email[key as 'practA'],
    password: PASSWORD,
    membership,
  }, { 'Content-Type': 'application/json' });
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  member[key] = r.body;
  const client = await t.server.signIn(email[key as 'practA'], PASSWORD);
  token[key] = client.getAccessToken() as string;
}

/** Asserts the resource is exactly at its recorded version (as its own project's admin sees it). */
async function unchanged(key: string, who: Role = 'adminA'): Promise<Json> {
  const r = await call(who, 'GET', F[key], undefined, { Accept: 'application/fhir+json' });
  expect(r.status, `${key} still readable by ${who}`).toBe(200);
  expect(r.body.meta.versionId, `${key} unchanged`).toBe(V[key]);
  return r.body;
}

/** Every Patient resource anywhere in a response (entries, nested bundles). */
function patientsIn(body: Json): Json[] {
  const found: Json[] = [];
  const walk = (node: Json): void => {
    if (Array.isArray(node)) {
      node.forEach(walk);
    } else if (node && typeof node === 'object') {
      if (node.resourceType === 'Patient') {
        found.push(node);
      }
      Object.values(node).forEach(walk);
    }
  };
  walk(body);
  return found;
}

function gql(query: string): { query: string } {
  return { query: fill(query) };
}

// ------------------------------------------------------------------------------------------ fixtures

beforeAll(async () => {
  projectA = t.server.projectId;
  token.adminA = t.server.admin.accessToken;

  // Project B, registered like a new customer would.
  email.adminB = `${unique('adminb')}@example.com`;
  const newUser = await call('none', 'POST', '/auth/newuser', { firstName: 'Bianca', lastName: 'Admin', email: email.adminB, password: PASSWORD });
  expect(newUser.status, JSON.stringify(newUser.body)).toBe(200);
  const newProject = await call('none', 'POST', '/auth/newproject', { login: newUser.body.login, projectName: 'Isolation B' });
  expect(newProject.status, JSON.stringify(newProject.body)).toBe(200);
  expect(typeof newProject.body.code).toBe('string');
  token.adminB = (await t.server.signIn(email.adminB, PASSWORD)).getAccessToken() as string;
  const meB = await call('adminB', 'GET', '/auth/me');
  projectB = meB.body.project.id;
  member.adminB = meB.body.membership;
  F.adminBProfile = meB.body.membership.profile.reference;
  expect(projectB).not.toBe(projectA);
  expect(meB.body.membership.admin).toBe(true);
  member.adminA = (await call('adminA', 'GET', '/auth/me')).body.membership;

  // B's data: the same family name, birth dates and codes as A's.
  await create('adminB', 'prB', { resourceType: 'Practitioner', name: [{ family: 'Performer', given: ['Bert'] }] } as Resource);
  await create('adminB', 'p1B', patient('bp1', 'Bea', '1970-01-01', '555-0201'));
  await create('adminB', 'p2B', patient('bp2', 'Bruno', '1980-02-02', '555-0202'));
  await create('adminB', 'pHijackB', patient('bph', 'Bodil', '1990-03-03', '555-0203'));
  await create('adminB', 'oB1', obs('ob1', F.p1B, HR, '2024-03-01', F.prB));
  await create('adminB', 'oB2', obs('ob2', F.p2B, GLUCOSE, '2024-03-02', F.prB));
  await create('adminB', 'oHijackB', obs('obh', F.p1B, WEIGHT, '2024-03-03'));
  await create('adminB', 'eB1', encounter('eb1', F.p1B));
  await create('adminB', 'bB1', binary('B1 secret'));
  await create('adminB', 'dB1', doc('db1', F.p1B, [F.bB1]));
  await create('adminB', 'drB1', report('drb1', F.p1B, [F.oB1]));
  await create('adminB', 'policyB', { resourceType: 'AccessPolicy', name: 'B policy', resource: [{ resourceType: 'Patient' }] } as Resource);
  const clientB = await call('adminB', 'POST', `/admin/projects/${projectB}/client`, { name: 'B client' }, { 'Content-Type': 'application/json' });
  expect(clientB.status, JSON.stringify(clientB.body)).toBe(201);
  F.clientB = `ClientApplication/${clientB.body.id}`;
  V.clientB = clientB.body.meta.versionId;
  secretB = clientB.body.secret;

  // A's data.
  await create('adminA', 'prA', { resourceType: 'Practitioner', name: [{ family: 'Performer', given: ['Anna'] }] } as Resource);
  await create('adminA', 'p1', patient('ap1', 'Alma', '1970-01-01', '555-0101'));
  await create('adminA', 'p2', patient('ap2', 'Arno', '1980-02-02', '555-0102'));
  await create('adminA', 'b1', binary('A1 secret'));
  await create('adminA', 'b2', binary('A2 secret'));
  await create('adminA', 'bU', binary('AU secret'));
  await create('adminA', 'practPolicy', {
    resourceType: 'AccessPolicy',
    name: 'practitioner of %patient',
    resource: [
      {
        resourceType: 'Patient',
        criteria: 'Patient?_id=%patient.id',
        interaction: ['read', 'vread', 'search', 'history', 'update'],
        hiddenFields: ['telecom'],
        readonlyFields: ['birthDate'],
      },
      { resourceType: 'Observation', criteria: 'Observation?subject=%patient' },
      { resourceType: 'Encounter', criteria: 'Encounter?subject=%patient', readonly: true },
      { resourceType: 'DiagnosticReport', criteria: 'DiagnosticReport?subject=%patient', readonly: true },
      { resourceType: 'DocumentReference', criteria: 'DocumentReference?subject=%patient', readonly: true },
      { resourceType: 'Binary', criteria: `Binary?_id=${id('b1')}`, readonly: true },
      { resourceType: 'Practitioner', readonly: true },
    ],
  } as AccessPolicy);
  await create('adminA', 'patientPolicy', {
    resourceType: 'AccessPolicy',
    name: 'patient portal',
    resource: [
      { resourceType: 'Patient', criteria: 'Patient?_id=%profile.id', interaction: ['read', 'vread', 'search', 'history', 'update'] },
      { resourceType: 'Observation', criteria: 'Observation?subject=%profile', readonly: true },
      // %patient defaults to the profile of a Patient user
      { resourceType: 'Encounter', criteria: 'Encounter?subject=%patient', readonly: true },
      { resourceType: 'DiagnosticReport', criteria: 'DiagnosticReport?subject=%profile', readonly: true },
      { resourceType: 'DocumentReference', criteria: 'DocumentReference?subject=%profile', readonly: true },
      { resourceType: 'Practitioner', readonly: true },
    ],
  } as AccessPolicy);
  await create('adminA', 'editPolicy', {
    resourceType: 'AccessPolicy',
    name: 'edited later',
    resource: [
      { resourceType: 'Patient', criteria: `Patient?_id=${id('p1')}`, readonly: true },
      { resourceType: 'Observation', criteria: `Observation?subject=${F.p1}`, readonly: true },
    ],
  } as AccessPolicy);

  await invite('practA', 'Practitioner', 'Piet', {
    access: [{ policy: { reference: F.practPolicy }, parameter: [{ name: 'patient', valueReference: { reference: F.p1 } }] }],
  });
  await invite('patientA', 'Patient', 'Ada', { accessPolicy: { reference: F.patientPolicy } });
  await invite('practEdit', 'Practitioner', 'Eddie', { accessPolicy: { reference: F.editPolicy } });
  await invite('practDeact', 'Practitioner', 'Dora', {});
  F.pU = member.patientA.profile?.reference as string;
  F.practAProfile = member.practA.profile?.reference as string;
  V.pU = (await call('adminA', 'GET', F.pU)).body.meta.versionId;

  await create('adminA', 'o1', obs('ao1', F.p1, HR, '2024-01-01', F.prA));
  await create('adminA', 'o2', obs('ao2', F.p1, WEIGHT, '2024-01-02', F.prA));
  await create('adminA', 'o3', obs('ao3', F.p2, GLUCOSE, '2024-01-03', F.prA));
  await create('adminA', 'oU', obs('aou', F.pU, HR, '2024-02-01', F.prA));
  // Project A's own Observation pointing at B's ids: chains, includes and GraphQL must not follow it into B.
  await create('adminA', 'oX', obs('aox', F.p1B, TEMP, '2023-06-01', F.prB));
  await create('adminA', 'e1', encounter('ae1', F.p1));
  await create('adminA', 'e2', encounter('ae2', F.p2));
  await create('adminA', 'eU', encounter('aeu', F.pU));
  await create('adminA', 'd1', doc('ad1', F.p1, [F.b1, F.b2]));
  await create('adminA', 'd2', doc('ad2', F.p2, [F.b2, F.bB1]));
  await create('adminA', 'dU', doc('adu', F.pU, [F.bU]));
  // a ServiceRequest: a type neither practA's nor patientA's policy names, referenced from dr1
  await create('adminA', 'sr1', { resourceType: 'ServiceRequest', status: 'active', intent: 'order', code: { text: 'panel' }, subject: { reference: F.p1 } } as Resource);
  await create('adminA', 'dr1', report('adr1', F.p1, [F.o1, F.o2, F.o3], F.sr1));
  await create('adminA', 'dr2', report('adr2', F.p2, [F.o3]));
  await create('adminA', 'drU', report('adru', F.pU, [F.oU]));

  const practitioners = await call('adminA', 'GET', 'Practitioner?_count=100');
  G.practitionersA = refsOf(practitioners.body);
  // the bootstrap admin's profile, prA and the four invited practitioners' profiles
  expect(G.practitionersA).toHaveLength(5);
  G.patientsA = [F.p1, F.p2, F.pU];
  G.obsA = [F.o1, F.o2, F.o3, F.oU, F.oX];
  G.patientsB = [F.p1B, F.p2B, F.pHijackB];
  G.obsB = [F.oB1, F.oB2, F.oHijackB];
});

// ------------------------------------------------------------------------------------------ matrix

interface Case {
  /** `METHOD path` with `{key}` placeholders; also the test name. */
  request: string;
  body?: string;
  headers?: Record<string, string>;
  /** adminA, practA, patientA, adminB */
  expect: [Expected, Expected, Expected, Expected];
}

const FORM = { 'Content-Type': 'application/x-www-form-urlencoded' };
const FHIR_ACCEPT = { Accept: 'application/fhir+json' };

/** Every read and search feature over project A's ids; adminB is the other project's admin. */
const A_CASES: Case[] = [
  // read
  { request: 'GET Patient/{p1}', expect: [['p1'], ['p1'], 404, 404] },
  { request: 'GET Patient/{p2}', expect: [['p2'], 404, 404, 404] },
  { request: 'GET Patient/{pU}', expect: [['pU'], 404, ['pU'], 404] },
  { request: 'GET Observation/{o1}', expect: [['o1'], ['o1'], 404, 404] },
  { request: 'GET Observation/{o3}', expect: [['o3'], 404, 404, 404] },
  { request: 'GET Observation/{oU}', expect: [['oU'], 404, ['oU'], 404] },
  { request: 'GET Encounter/{e1}', expect: [['e1'], ['e1'], 404, 404] },
  { request: 'GET Encounter/{eU}', expect: [['eU'], 404, ['eU'], 404] },
  { request: 'GET DiagnosticReport/{dr1}', expect: [['dr1'], ['dr1'], 404, 404] },
  { request: 'GET DocumentReference/{dU}', expect: [['dU'], 404, ['dU'], 404] },
  { request: 'GET Practitioner/{prA}', expect: [['prA'], ['prA'], ['prA'], 404] },
  { request: 'GET Condition/{o1}', expect: [404, 403, 403, 404] },
  // vread
  { request: 'GET Observation/{o1}/_history/{v:o1}', expect: [['o1'], ['o1'], 404, 404] },
  { request: 'GET Observation/{o3}/_history/{v:o3}', expect: [['o3'], 404, 404, 404] },
  { request: 'GET Patient/{pU}/_history/{v:pU}', expect: [['pU'], 404, ['pU'], 404] },
  // history: instance, type, system
  { request: 'GET Patient/{p1}/_history', expect: [['p1'], ['p1'], 404, 404] },
  { request: 'GET Patient/{p2}/_history', expect: [['p2'], 404, 404, 404] },
  { request: 'GET Observation/{oU}/_history', expect: [['oU'], 404, ['oU'], 404] },
  { request: 'GET Patient/_history', expect: [['patientsA'], ['p1'], ['pU'], ['patientsB']] },
  { request: 'GET Observation/_history', expect: [['obsA'], ['o1', 'o2'], ['oU'], ['obsB']] },
  { request: 'GET Condition/_history', expect: [[], 403, 403, []] },
  // search: plain, token, string, date, _id, negation
  { request: 'GET Patient', expect: [['patientsA'], ['p1'], ['pU'], ['patientsB']] },
  { request: 'GET Patient?name=Isomatrix', expect: [['patientsA'], ['p1'], ['pU'], ['patientsB']] },
  { request: 'GET Patient?given=Alma', expect: [['p1'], ['p1'], [], []] },
  { request: 'GET Patient?birthdate=1970-01-01', expect: [['p1'], ['p1'], [], ['p1B']] },
  { request: 'GET Patient?_id={p1},{p2},{pU},{p1B}', expect: [['patientsA'], ['p1'], ['pU'], ['p1B']] },
  { request: 'GET Patient?_id:not={p1}', expect: [['p2', 'pU'], [], ['pU'], ['patientsB']] },
  { request: 'GET Observation?code=http://loinc.org|8867-4', expect: [['o1', 'oU'], ['o1'], ['oU'], ['oB1']] },
  { request: 'GET Observation?_id={o1},{o2},{o3},{oU}', expect: [['o1', 'o2', 'o3', 'oU'], ['o1', 'o2'], ['oU'], []] },
  { request: 'GET Observation?subject:missing=false', expect: [['obsA'], ['o1', 'o2'], ['oU'], ['obsB']] },
  { request: 'GET Condition', expect: [[], 403, 403, []] },
  { request: 'GET DocumentReference', expect: [['d1', 'd2', 'dU'], ['d1'], ['dU'], ['dB1']] },
  { request: 'GET Encounter', expect: [['e1', 'e2', 'eU'], ['e1'], ['eU'], ['eB1']] },
  { request: 'GET Practitioner', expect: [['practitionersA'], ['practitionersA'], ['practitionersA'], ['prB', 'adminBProfile']] },
  // reference
  { request: 'GET Observation?subject=Patient/{p1}', expect: [['o1', 'o2'], ['o1', 'o2'], [], []] },
  { request: 'GET Observation?subject=Patient/{p2}', expect: [['o3'], [], [], []] },
  { request: 'GET Observation?subject:Patient={p1}', expect: [['o1', 'o2'], ['o1', 'o2'], [], []] },
  { request: 'GET Observation?patient={pU}', expect: [['oU'], [], ['oU'], []] },
  // chains
  { request: 'GET Observation?subject:Patient.name=Isomatrix', expect: [['o1', 'o2', 'o3', 'oU'], ['o1', 'o2'], ['oU'], ['obsB']] },
  { request: 'GET Observation?subject:Patient.birthdate=1970-01-01', expect: [['o1', 'o2'], ['o1', 'o2'], [], ['oB1', 'oHijackB']] },
  { request: 'GET Observation?performer:Practitioner.given=Anna', expect: [['o1', 'o2', 'o3', 'oU'], ['o1', 'o2'], ['oU'], []] },
  { request: 'GET Observation?performer:Practitioner.given=Bert', expect: [[], [], [], ['oB1', 'oB2']] },
  { request: 'GET DiagnosticReport?result.code=2339-0', expect: [['dr1', 'dr2'], [], [], []] },
  { request: 'GET DiagnosticReport?result.code=8867-4', expect: [['dr1', 'drU'], ['dr1'], ['drU'], ['drB1']] },
  // _has
  { request: 'GET Patient?_has:Observation:subject:code=8867-4', expect: [['p1', 'pU'], ['p1'], ['pU'], ['p1B']] },
  { request: 'GET Patient?_has:Observation:subject:code=2339-0', expect: [['p2'], [], [], ['p2B']] },
  { request: 'GET Patient?_has:Observation:subject:code=8310-5', expect: [[], [], [], []] },
  { request: 'GET Practitioner?_has:Observation:performer:code=2339-0', expect: [['prA'], [], [], ['prB']] },
  { request: 'GET Practitioner?_has:Observation:performer:code=8867-4', expect: [['prA'], ['prA'], ['prA'], ['prB']] },
  // chains, _has and includes into a type outside the policy (ServiceRequest)
  { request: 'GET DiagnosticReport?based-on:ServiceRequest.status=active', expect: [['dr1'], [], [], []] },
  { request: 'GET Patient?_has:ServiceRequest:subject:status=active', expect: [['p1'], [], [], []] },
  { request: 'GET DiagnosticReport?_id={dr1}&_include=DiagnosticReport:based-on', expect: [['dr1', 'sr1'], ['dr1'], [], []] },
  // naming a type outside the policy in _revinclude is refused like naming it in _type (patientA's search finds nothing to revinclude from)
  { request: 'GET Patient?_id={p1}&_revinclude=ServiceRequest:subject', expect: [['p1', 'sr1'], 403, [], []] },
  { request: 'GET Patient/{p1}/ServiceRequest', expect: [['sr1'], 403, 404, 404] },
  { request: 'GET ServiceRequest/{sr1}', expect: [['sr1'], 403, 403, 404] },
  // _include / _revinclude
  { request: 'GET Observation?_id={o1},{o3},{oX}&_include=Observation:subject', expect: [['o1', 'o3', 'oX', 'p1', 'p2'], ['o1', 'p1'], [], []] },
  { request: 'GET Observation?_id={oX}&_include=Observation:performer', expect: [['oX'], [], [], []] },
  { request: 'GET Observation?code=8867-4&_include=Observation:performer', expect: [['o1', 'oU', 'prA'], ['o1', 'prA'], ['oU', 'prA'], ['oB1', 'prB']] },
  { request: 'GET DiagnosticReport?_id={dr1}&_include=DiagnosticReport:result', expect: [['dr1', 'o1', 'o2', 'o3'], ['dr1', 'o1', 'o2'], [], []] },
  {
    request: 'GET DiagnosticReport?_id={dr1}&_include=DiagnosticReport:result&_include:iterate=Observation:subject',
    expect: [['dr1', 'o1', 'o2', 'o3', 'p1', 'p2'], ['dr1', 'o1', 'o2', 'p1'], [], []],
  },
  {
    request: 'GET Patient?_id={p1},{p2}&_revinclude=Observation:subject&_revinclude:iterate=DiagnosticReport:result',
    expect: [['p1', 'p2', 'o1', 'o2', 'o3', 'dr1', 'dr2'], ['p1', 'o1', 'o2', 'dr1'], [], []],
  },
  { request: 'GET Patient?_revinclude=Observation:subject', expect: [['patientsA', 'o1', 'o2', 'o3', 'oU'], ['p1', 'o1', 'o2'], ['pU', 'oU'], ['patientsB', 'obsB']] },
  { request: 'GET Practitioner?_id={prA}&_revinclude=Observation:performer', expect: [['prA', 'o1', 'o2', 'o3', 'oU'], ['prA', 'o1', 'o2'], ['prA', 'oU'], []] },
  // _compartment, _filter
  { request: 'GET Observation?_compartment=Patient/{p2}', expect: [['o3'], [], [], []] },
  { request: 'GET Encounter?_compartment=Patient/{p1}', expect: [['e1'], ['e1'], [], []] },
  { request: 'GET Observation?_filter=subject eq Patient/{p1} or code eq 2339-0', expect: [['o1', 'o2', 'o3'], ['o1', 'o2'], [], ['oB2']] },
  // system search over several types
  { request: 'GET ?_type=Patient,Observation', expect: [['patientsA', 'obsA'], ['p1', 'o1', 'o2'], ['pU', 'oU'], ['patientsB', 'obsB']] },
  { request: 'GET ?_type=Patient,Condition', expect: [['patientsA'], 403, 403, ['patientsB']] },
  // POST _search
  { request: 'POST Observation/_search', body: 'subject=Patient/{p1}', headers: FORM, expect: [['o1', 'o2'], ['o1', 'o2'], [], []] },
  { request: 'POST Patient/_search', body: '_id={p2},{pU}', headers: FORM, expect: [['p2', 'pU'], [], ['pU'], []] },
  { request: 'GET ?_type=Observation,Encounter&_compartment=Patient/{p1}', expect: [['o1', 'o2', 'e1'], ['o1', 'o2', 'e1'], [], []] },
  // operations
  { request: 'GET Observation/$lastn?max=1', expect: [['oU', 'o2', 'o3', 'oX'], ['o1', 'o2'], ['oU'], ['obsB']] },
  { request: 'GET Observation/$lastn?subject=Patient/{p1}&max=5', expect: [['o1', 'o2'], ['o1', 'o2'], [], []] },
  { request: 'GET Patient/{p1}/Observation', expect: [['o1', 'o2'], ['o1', 'o2'], 404, 404] },
  { request: 'GET Patient/{p2}/Observation', expect: [['o3'], 404, 404, 404] },
  { request: 'GET Patient/{pU}/Observation', expect: [['oU'], 404, ['oU'], 404] },
  { request: 'GET Patient/{p1}/$everything', expect: [['p1', 'o1', 'o2', 'e1', 'dr1', 'd1', 'sr1'], ['p1', 'o1', 'o2', 'e1', 'dr1', 'd1'], 404, 404] },
  // with _type naming only types of the policy, $everything works for the restricted roles; naming one outside it is refused
  { request: 'GET Patient/{p1}/$everything?_type=Patient,Observation,Encounter', expect: [['p1', 'o1', 'o2', 'e1'], ['p1', 'o1', 'o2', 'e1'], 404, 404] },
  { request: 'GET Patient/{pU}/$everything?_type=Patient,Observation,Encounter', expect: [['pU', 'oU', 'eU'], 404, ['pU', 'oU', 'eU'], 404] },
  { request: 'GET Patient/{p1}/$everything?_type=Observation,Condition', expect: [['o1', 'o2'], 403, 404, 404] },
  { request: 'GET Patient/{p2}/$everything', expect: [['p2', 'o3', 'e2', 'dr2', 'd2'], 404, 404, 404] },
  { request: 'GET Patient/{pU}/$everything', expect: [['pU', 'oU', 'eU', 'drU', 'dU'], 404, ['pU', 'oU', 'eU', 'drU', 'dU'], 404] },
  // Binary
  { request: 'GET Binary/{b1}', headers: FHIR_ACCEPT, expect: [['b1'], ['b1'], 403, 404] },
  { request: 'GET Binary/{b2}', headers: FHIR_ACCEPT, expect: [['b2'], 404, 403, 404] },
  { request: 'GET Binary/{bU}', headers: FHIR_ACCEPT, expect: [['bU'], 404, 403, 404] },
  { request: 'GET Binary/{b1}/_history/{v:b1}', headers: FHIR_ACCEPT, expect: [['b1'], ['b1'], 403, 404] },
];

/** Project B's ids, read by every role of A (nothing) and by B's admin (the query is meaningful). */
const B_CASES: Case[] = [
  { request: 'GET Patient/{p1B}', expect: [404, 404, 404, ['p1B']] },
  { request: 'GET Observation/{oB1}', expect: [404, 404, 404, ['oB1']] },
  { request: 'GET Observation/{oB1}/_history/{v:oB1}', expect: [404, 404, 404, ['oB1']] },
  { request: 'GET Observation/{oB1}/_history', expect: [404, 404, 404, ['oB1']] },
  { request: 'GET Patient/{p1B}/_history', expect: [404, 404, 404, ['p1B']] },
  { request: 'GET Encounter/{eB1}', expect: [404, 404, 404, ['eB1']] },
  { request: 'GET DocumentReference/{dB1}', expect: [404, 404, 404, ['dB1']] },
  { request: 'GET Practitioner/{prB}', expect: [404, 404, 404, ['prB']] },
  { request: 'GET Binary/{bB1}', headers: FHIR_ACCEPT, expect: [404, 404, 403, ['bB1']] },
  { request: 'GET AccessPolicy/{policyB}', expect: [404, 403, 403, ['policyB']] },
  { request: 'GET ClientApplication/{clientB}', expect: [404, 403, 403, ['clientB']] },
  { request: 'GET Patient?_id={p1B}', expect: [[], [], [], ['p1B']] },
  { request: 'GET Patient?given=Bea', expect: [[], [], [], ['p1B']] },
  { request: 'GET Observation?subject=Patient/{p1B}', expect: [['oX'], [], [], ['oB1', 'oHijackB']] },
  { request: 'GET Observation?subject:Patient.given=Bea', expect: [[], [], [], ['oB1', 'oHijackB']] },
  { request: 'GET Observation?_id={oB1}&_include=Observation:subject', expect: [[], [], [], ['oB1', 'p1B']] },
  { request: 'GET Patient?_id={p1B}&_revinclude=Observation:subject', expect: [[], [], [], ['p1B', 'oB1', 'oHijackB']] },
  { request: 'GET DiagnosticReport?_id={drB1}&_include=DiagnosticReport:result', expect: [[], [], [], ['drB1', 'oB1']] },
  { request: 'GET Observation?_compartment=Patient/{p1B}', expect: [['oX'], [], [], ['oB1', 'oHijackB']] },
  { request: 'GET Patient/{p1B}/Observation', expect: [404, 404, 404, ['oB1', 'oHijackB']] },
  { request: 'GET Patient/{p1B}/$everything', expect: [404, 404, 404, ['p1B', 'oB1', 'oHijackB', 'eB1', 'drB1', 'dB1']] },
  { request: 'GET Observation/$lastn?subject=Patient/{p1B}&max=5', expect: [['oX'], [], [], ['oB1', 'oHijackB']] },
  { request: 'GET ?_type=Patient,Observation&_id={p1B},{oB1}', expect: [[], [], [], ['p1B', 'oB1']] },
];

async function runCase(role: Role, c: Case, expected: Expected): Promise<void> {
  const space = c.request.indexOf(' ');
  const method = c.request.slice(0, space);
  const path = fill(c.request.slice(space + 1));
  const r = await call(role, method, path, c.body === undefined ? undefined : fill(c.body), c.headers);
  const what = `${role} ${method} ${path}: ${JSON.stringify(r.body).slice(0, 600)}`;
  if (typeof expected === 'number') {
    expect(r.status, what).toBe(expected);
    expect(r.body?.resourceType, what).toBe('OperationOutcome');
  } else {
    expect(r.status, what).toBe(200);
    expect(refsOf(r.body), what).toEqual(expand(expected));
  }
}

function show(expected: Expected): string {
  return typeof expected === 'number' ? String(expected) : `[${expected.join(', ')}]`;
}

describe('project A: every read and search feature, per role (adminB is the other project)', () => {
  for (const c of A_CASES) {
    ROLES.forEach((role, i) => {
      test(`${c.request} as ${role} -> ${show(c.expect[i])}`, async () => {
        await runCase(role, c, c.expect[i]);
      });
    });
  }
});

describe("project B's ids: A's roles reach nothing of them, B's admin everything", () => {
  for (const c of B_CASES) {
    ROLES.forEach((role, i) => {
      test(`${c.request} as ${role} -> ${show(c.expect[i])}`, async () => {
        await runCase(role, c, c.expect[i]);
      });
    });
  }
});

describe('counts and paging see only the visible rows', () => {
  const totals: [Role, number][] = [
    ['adminA', 5],
    ['practA', 2],
    ['patientA', 1],
    ['adminB', 3],
  ];
  for (const [role, total] of totals) {
    test(`Observation?_total=accurate&_count=1 as ${role} -> total ${total}`, async () => {
      const r = await call(role, 'GET', 'Observation?_total=accurate&_count=1');
      expect(r.status).toBe(200);
      expect(r.body.total).toBe(total);
      expect(r.body.entry).toHaveLength(1);
    });
    test(`Observation?_summary=count as ${role} -> total ${total}`, async () => {
      const r = await call(role, 'GET', 'Observation?_summary=count');
      expect(r.status).toBe(200);
      expect(r.body.total).toBe(total);
      expect(r.body.entry ?? []).toEqual([]);
    });
    test(`GraphQL ObservationConnection count as ${role} -> ${total}`, async () => {
      const r = await call(role, 'POST', '$graphql', { query: '{ ObservationConnection { count edges { resource { id } } } }' }, { 'Content-Type': 'application/json' });
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      expect(r.body.data.ObservationConnection.count).toBe(total);
      expect(r.body.data.ObservationConnection.edges).toHaveLength(total);
    });
    test(`Observation?_count=0&_total=accurate as ${role} -> total ${total}, no entries`, async () => {
      const r = await call(role, 'GET', 'Observation?_count=0&_total=accurate');
      expect(r.status).toBe(200);
      expect(r.body.total).toBe(total);
      expect(r.body.entry ?? []).toEqual([]);
    });
  }

  const pages: [Role, string[]][] = [
    ['adminA', ['obsA']],
    ['practA', ['o1', 'o2']],
    ['patientA', ['oU']],
    ['adminB', ['obsB']],
  ];
  for (const [role, keys] of pages) {
    test(`walking Observation?_count=1 by next links as ${role} yields exactly ${keys.join(', ')}`, async () => {
      const seen: string[] = [];
      let url: string | undefined = 'Observation?_count=1';
      for (let i = 0; url && i < 20; i++) {
        const r = await call(role, 'GET', url.startsWith('http') ? url.slice(t.server.fhirUrl.length) : url);
        expect(r.status).toBe(200);
        seen.push(...refsOf(r.body));
        url = ((r.body.link ?? []) as Json[]).find((l) => l.relation === 'next')?.url;
      }
      expect(seen.sort()).toEqual(expand(keys));
    });
  }
});

// ------------------------------------------------------------------------------------------ GraphQL

describe('GraphQL', () => {
  async function graphql(role: Role, query: string): Promise<Json> {
    const r = await call(role, 'POST', '$graphql', gql(query), { 'Content-Type': 'application/json' });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    return r.body;
  }
  const ids = (list: Json[] | null | undefined): string[] => (list ?? []).map((x) => x.id).sort();
  const idsOf = (...keys: string[]): string[] => keys.map(id).sort();

  const lists: [Role, string, string[]][] = [
    ['adminA', '{ PatientList { id } }', ['p1', 'p2', 'pU']],
    ['practA', '{ PatientList { id } }', ['p1']],
    ['patientA', '{ PatientList { id } }', ['pU']],
    ['adminB', '{ PatientList { id } }', ['p1B', 'p2B', 'pHijackB']],
    ['adminA', '{ ObservationList(code: "8867-4") { id } }', ['o1', 'oU']],
    ['practA', '{ ObservationList(code: "8867-4") { id } }', ['o1']],
    ['patientA', '{ ObservationList(code: "8867-4") { id } }', ['oU']],
    ['adminB', '{ ObservationList(code: "8867-4") { id } }', ['oB1']],
    ['adminA', '{ PatientList(given: "Bea") { id } }', []],
    ['adminB', '{ PatientList(given: "Alma") { id } }', []],
    ['practA', '{ ObservationList(subject: "Patient/{p2}") { id } }', []],
    ['adminA', '{ ObservationList(subject: "Patient/{p2}") { id } }', ['o3']],
    ['adminA', '{ PatientList(_id: "{p1B}") { id } }', []],
  ];
  for (const [role, query, keys] of lists) {
    test(`${query} as ${role} -> [${keys.join(', ')}]`, async () => {
      const body = await graphql(role, query);
      const list = Object.values(body.data ?? {})[0] as Json[];
      expect(ids(list), JSON.stringify(body)).toEqual(idsOf(...keys));
    });
  }

  test('practA: PatientList never returns the hidden telecom; birthDate is there', async () => {
    const body = await graphql('practA', '{ PatientList { id birthDate telecom { value } } }');
    expect(body.data.PatientList).toEqual([{ id: id('p1'), birthDate: '1970-01-01', telecom: null }]);
    expect(JSON.stringify(body)).not.toContain('555-0101');
  });

  test('adminA: the same query shows telecom (the field exists)', async () => {
    const body = await graphql('adminA', '{ Patient(id: "{p1}") { telecom { value } } }');
    expect(body.data.Patient.telecom).toEqual([{ value: '555-0101' }]);
  });

  test('single reads outside the policy or project are null', async () => {
    expect((await graphql('practA', '{ Patient(id: "{p2}") { id } }')).data?.Patient ?? null).toBeNull();
    expect((await graphql('patientA', '{ Observation(id: "{o1}") { id } }')).data?.Observation ?? null).toBeNull();
    expect((await graphql('adminA', '{ Patient(id: "{p1B}") { id } }')).data?.Patient ?? null).toBeNull();
    expect((await graphql('adminB', '{ Observation(id: "{o1}") { id } }')).data?.Observation ?? null).toBeNull();
  });

  test('practA: a reference into a type outside the policy resolves to nothing (dr1.basedOn -> sr1)', async () => {
    const body = await graphql('practA', '{ DiagnosticReport(id: "{dr1}") { basedOn { reference resource { ... on ServiceRequest { id status } } } } }');
    expect(body.data.DiagnosticReport.basedOn).toEqual([{ reference: F.sr1, resource: null }]);
  });

  test('practA: nested references resolve only to visible resources (dr1.result -> o1, o2, not o3)', async () => {
    const body = await graphql('practA', '{ DiagnosticReport(id: "{dr1}") { result { reference resource { ... on Observation { id } } } } }');
    const results = body.data.DiagnosticReport.result as Json[];
    expect(results.map((r) => r.reference)).toEqual([F.o1, F.o2, F.o3]);
    expect(results.map((r) => r.resource?.id ?? null)).toEqual([id('o1'), id('o2'), null]);
  });

  test('adminA: the same nested query resolves all three', async () => {
    const body = await graphql('adminA', '{ DiagnosticReport(id: "{dr1}") { result { resource { ... on Observation { id } } } } }');
    expect((body.data.DiagnosticReport.result as Json[]).map((r) => r.resource?.id ?? null)).toEqual([id('o1'), id('o2'), id('o3')]);
  });

  test("adminA: oX's references into project B resolve to nothing", async () => {
    const body = await graphql(
      'adminA',
      '{ Observation(id: "{oX}") { subject { reference resource { ... on Patient { id name { given } } } } performer { resource { ... on Practitioner { id } } } } }'
    );
    expect(body.data.Observation.subject.reference).toBe(F.p1B);
    expect(body.data.Observation.subject.resource ?? null).toBeNull();
    expect(body.data.Observation.performer[0].resource ?? null).toBeNull();
    expect(JSON.stringify(body)).not.toContain('Bea');
  });

  test('practA: reverse references from a visible patient list only visible Observations', async () => {
    const body = await graphql('practA', '{ Patient(id: "{p1}") { ObservationList(_reference: subject) { id } } }');
    expect(ids(body.data.Patient.ObservationList)).toEqual(idsOf('o1', 'o2'));
  });

  test('patientA: ObservationList with a nested subject shows only its own', async () => {
    const body = await graphql('patientA', '{ ObservationList { id subject { resource { ... on Patient { id } } } } }');
    expect(body.data.ObservationList).toEqual([{ id: id('oU'), subject: { resource: { id: id('pU') } } }]);
  });

  test('practA: a type outside the policy is refused in GraphQL too', async () => {
    const r = await call('practA', 'POST', '$graphql', gql('{ ConditionList { id } }'), { 'Content-Type': 'application/json' });
    const text = JSON.stringify(r.body);
    // either the request or the field fails as forbidden; never a list
    expect(r.body?.data?.ConditionList ?? null, text).toBeNull();
    expect(text).toMatch(/[Ff]orbidden/);
  });
});

// ------------------------------------------------------------------------------------------ Binary URLs

describe('signed storage URLs only for readable Binaries', () => {
  const signed = (binaryKey: string): RegExp => {
    const base = t.server.baseUrl.replace(/[.*+?^$()|[\]\\]/g, '\\$&');
    return new RegExp(`^${base}storage/${id(binaryKey)}/${V[binaryKey]}\\?Expires=\\d+&Signature=[\\w-]+$`);
  };

  test('practA reads d1: b1 (readable) is signed and fetchable without a token, b2 (not readable) stays Binary/id', async () => {
    const r = await call('practA', 'GET', F.d1);
    expect(r.status).toBe(200);
    const [first, second] = (r.body.content as Json[]).map((c) => c.attachment.url as string);
    expect(first).toMatch(signed('b1'));
    expect(second).toBe(F.b2);
    const content = await fetch(first);
    expect(content.status).toBe(200);
    expect(await content.text()).toBe('A1 secret');
  });

  test("a signature for b1 does not open b2 (same URL with b2's id and version)", async () => {
    const r = await call('practA', 'GET', F.d1);
    const url = r.body.content[0].attachment.url as string;
    const forged = url.replace(`storage/${id('b1')}/${V.b1}`, `storage/${id('b2')}/${V.b2}`);
    const res = await fetch(forged);
    expect(res.status).toBe(403);
    expect(await res.text()).not.toContain('A2 secret');
  });

  test('practA searching DocumentReference gets the same rewriting', async () => {
    const r = await call('practA', 'GET', 'DocumentReference');
    expect(refsOf(r.body)).toEqual([F.d1]);
    const urls = (r.body.entry[0].resource.content as Json[]).map((c) => c.attachment.url);
    expect(urls[0]).toMatch(signed('b1'));
    expect(urls[1]).toBe(F.b2);
  });

  test('patientA (no Binary access) reads dU: bU is not signed', async () => {
    const r = await call('patientA', 'GET', F.dU);
    expect(r.status).toBe(200);
    expect(r.body.content[0].attachment.url).toBe(F.bU);
  });

  test("adminA reads d2: its own b2 is signed, B's bB1 is not", async () => {
    const r = await call('adminA', 'GET', F.d2);
    const urls = (r.body.content as Json[]).map((c) => c.attachment.url);
    expect(urls[0]).toMatch(signed('b2'));
    expect(urls[1]).toBe(F.bB1);
  });

  test('adminB reads dB1: bB1 is signed and serves B1 content', async () => {
    const r = await call('adminB', 'GET', F.dB1);
    const url = r.body.content[0].attachment.url as string;
    expect(url).toMatch(signed('bB1'));
    expect(await (await fetch(url)).text()).toBe('B1 secret');
  });

  test('raw Binary reads: practA gets b1 bytes, b2 is 404; patientA 403; adminB 404 on A, 200 on its own', async () => {
    const raw = async (role: Role, key: string): Promise<[number, string]> => {
      const res = await fetch(t.server.fhirUrl + F[key], { headers: { Authorization: `Bearer ${token[role]}` } });
      return [res.status, await res.text()];
    };
    expect(await raw('practA', 'b1')).toEqual([200, 'A1 secret']);
    expect((await raw('practA', 'b2'))[0]).toBe(404);
    expect((await raw('patientA', 'bU'))[0]).toBe(403);
    expect((await raw('adminB', 'b1'))[0]).toBe(404);
    expect(await raw('adminB', 'bB1')).toEqual([200, 'B1 secret']);
    expect((await raw('adminA', 'bB1'))[0]).toBe(404);
  });
});

// ------------------------------------------------------------------------------------------ hidden fields

describe('hidden fields are never returned to practA (Patient.telecom)', () => {
  const paths = [
    'Patient/{p1}',
    'Patient/{p1}/_history/{v:p1}',
    'Patient/{p1}/_history',
    'Patient/_history',
    '_history',
    'Patient?_id={p1}',
    'Patient?_id={p1}&_elements=telecom,name',
    'Observation?_id={o1}&_include=Observation:subject',
    'Patient?_revinclude=Observation:subject',
    'Patient/{p1}/$everything',
    '?_type=Patient,Observation',
  ];
  for (const path of paths) {
    test(`GET ${path}`, async () => {
      const r = await call('practA', 'GET', fill(path));
      const text = JSON.stringify(r.body);
      expect(r.status, text.slice(0, 500)).toBe(200);
      expect(patientsIn(r.body).map((p) => p.id)).toContain(id('p1'));
      expect(patientsIn(r.body).filter((p) => 'telecom' in p)).toEqual([]);
      expect(text).not.toContain('555-0101');
    });
  }

  test('the same fields reach adminA (control)', async () => {
    const r = await call('adminA', 'GET', fill('Patient?_id={p1}'));
    expect(JSON.stringify(r.body)).toContain('555-0101');
  });

  test('practA: system history lists exactly the resources of its policy', async () => {
    const r = await call('practA', 'GET', '_history?_count=1000');
    expect(r.status).toBe(200);
    expect(refsOf(r.body)).toEqual(expand(['p1', 'o1', 'o2', 'e1', 'dr1', 'd1', 'b1', 'practitionersA']));
  });

  test('patientA: system history lists exactly its own record', async () => {
    const r = await call('patientA', 'GET', '_history?_count=1000');
    expect(r.status).toBe(200);
    expect(refsOf(r.body)).toEqual(expand(['pU', 'oU', 'eU', 'drU', 'dU', 'practitionersA']));
  });

  test("adminA: system history holds A's fixtures and none of B's ids", async () => {
    const r = await call('adminA', 'GET', '_history?_count=1000');
    const refs = refsOf(r.body);
    const bIds = B_KEYS.map((k) => F[k]);
    expect(refs.filter((ref) => bIds.includes(ref))).toEqual([]);
    expect(refs).toEqual(expect.arrayContaining(expand(['patientsA', 'obsA', 'e1', 'e2', 'eU', 'd1', 'd2', 'dU', 'dr1', 'dr2', 'drU', 'b1', 'b2', 'bU'])));
    expect(refs.filter((ref) => ref.startsWith('Project/'))).toEqual([`Project/${projectA}`]);
  });

  test("adminB: system history holds none of A's ids", async () => {
    const r = await call('adminB', 'GET', '_history?_count=1000');
    const refs = refsOf(r.body);
    const aIds = Object.keys(F).filter((k) => !B_KEYS.includes(k)).map((k) => F[k]);
    expect(refs.filter((ref) => aIds.includes(ref))).toEqual([]);
    expect(refs).toEqual(expect.arrayContaining(expand(['patientsB', 'obsB', 'eB1', 'dB1', 'drB1', 'bB1'])));
  });
});

// ------------------------------------------------------------------------------------------ admin types

describe('project-admin types and routes', () => {
  const refusedForNonAdmins = [
    'GET ProjectMembership',
    'GET ProjectMembership/{mPractA}',
    'GET ClientApplication',
    'GET AccessPolicy',
    'GET AccessPolicy/{practPolicy}',
    'GET Project',
    'GET Project/{projectA}',
    'GET Bot',
    'GET User',
    'GET Login',
    'GET JsonWebKey',
    'GET ProjectMembership/_history',
    'POST AccessPolicy',
    'PUT ProjectMembership/{mPractA}',
  ];
  const target = (template: string): [string, string] => {
    const [method, path] = template.split(' ');
    return [method, fill(path.replace('{mPractA}', member.practA.id as string).replace('{projectA}', projectA))];
  };
  for (const role of ['practA', 'patientA'] as const) {
    for (const request of refusedForNonAdmins) {
      test(`${request} as ${role} -> 403`, async () => {
        const [method, path] = target(request);
        const body =
          method === 'POST'
            ? { resourceType: 'AccessPolicy', name: 'self-granted', resource: [{ resourceType: '*' }] }
            : method === 'PUT'
              ? { ...member.practA, admin: true, accessPolicy: undefined, access: undefined }
              : undefined;
        const r = await call(role, method, path, body);
        expect(r.status, JSON.stringify(r.body)).toBe(403);
      });
    }
  }

  test('practA did not become admin nor lose its policy', async () => {
    const r = await call('adminA', 'GET', `ProjectMembership/${member.practA.id}`);
    expect(r.body.admin).toBe(false);
    expect(r.body.meta.versionId).toBe(member.practA.meta?.versionId);
    expect((await call('practA', 'GET', fill('Patient/{p2}'))).status).toBe(404);
  });

  test("adminA: ProjectMembership lists only A's memberships", async () => {
    const r = await call('adminA', 'GET', 'ProjectMembership?_count=100');
    expect(r.status).toBe(200);
    const list = (r.body.entry as Json[]).map((e) => e.resource);
    expect(list.every((m) => m.project.reference === `Project/${projectA}`)).toBe(true);
    expect(list.map((m) => m.id)).toEqual(
      expect.arrayContaining([member.adminA.id, member.practA.id, member.patientA.id, member.practEdit.id, member.practDeact.id])
    );
    expect(list.map((m) => m.id)).not.toContain(member.adminB.id);
  });

  test('adminA: Project lists only project A; project B is not found', async () => {
    expect(refsOf((await call('adminA', 'GET', 'Project')).body)).toEqual([`Project/${projectA}`]);
    expect((await call('adminA', 'GET', `Project/${projectB}`)).status).toBe(404);
    expect(refsOf((await call('adminB', 'GET', 'Project')).body)).toEqual([`Project/${projectB}`]);
  });

  test("adminA: AccessPolicy lists A's three policies, not B's", async () => {
    const r = await call('adminA', 'GET', 'AccessPolicy');
    expect(refsOf(r.body)).toEqual(expand(['practPolicy', 'patientPolicy', 'editPolicy']));
  });

  test('adminA: User and Login stay out of reach (403)', async () => {
    expect((await call('adminA', 'GET', 'User')).status).toBe(403);
    expect((await call('adminA', 'GET', 'Login')).status).toBe(403);
  });

  test('adminA cannot make its project super admin (read-only field kept)', async () => {
    const project = (await call('adminA', 'GET', `Project/${projectA}`)).body;
    const r = await call('adminA', 'PUT', `Project/${projectA}`, { ...project, superAdmin: true, name: project.name });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect((await call('adminA', 'GET', `Project/${projectA}`)).body.superAdmin).toBeUndefined();
    // still a plain project admin: the other project stays invisible
    expect((await call('adminA', 'GET', fill('Patient/{p1B}'))).status).toBe(404);
  });

  test("adminA: PUT Project/<B's id> is refused and B's project is unchanged", async () => {
    const before = (await call('adminB', 'GET', `Project/${projectB}`)).body;
    const r = await call('adminA', 'PUT', `Project/${projectB}`, { resourceType: 'Project', id: projectB, name: 'Taken over' });
    expect(r.status, JSON.stringify(r.body)).toBe(403);
    const after = (await call('adminB', 'GET', `Project/${projectB}`)).body;
    expect(after.meta.versionId).toBe(before.meta.versionId);
    expect(after.name).toBe('Isolation B');
  });
});

describe('admin API routes', () => {
  const inviteBody = (): Json => ({ resourceType: 'Practitioner', firstName: 'Mallory', lastName: 'Isomatrix', email: `${unique('mallory')}@example.com`, password: PASSWORD });
  const JSON_CT = { 'Content-Type': 'application/json' };

  const refused: [string, Role, () => string][] = [
    ['practA invites into A', 'practA', () => `/admin/projects/${projectA}/invite`],
    ['patientA invites into A', 'patientA', () => `/admin/projects/${projectA}/invite`],
    ['adminB invites into A', 'adminB', () => `/admin/projects/${projectA}/invite`],
    ['adminA invites into B', 'adminA', () => `/admin/projects/${projectB}/invite`],
    ['adminA invites into a project that does not exist', 'adminA', () => `/admin/projects/${randomUUID()}/invite`],
    ['adminA creates a client in B', 'adminA', () => `/admin/projects/${projectB}/client`],
    ['adminA creates a bot in B', 'adminA', () => `/admin/projects/${projectB}/bot`],
    ['adminB creates a client in A', 'adminB', () => `/admin/projects/${projectA}/client`],
    ['practA creates a client in A', 'practA', () => `/admin/projects/${projectA}/client`],
    ['patientA creates a bot in A', 'patientA', () => `/admin/projects/${projectA}/bot`],
  ];
  for (const [name, role, path] of refused) {
    test(`${name} -> 403, nothing created`, async () => {
      const body = { ...inviteBody(), name: 'Mallory app' };
      const membershipsB = refsOf((await call('adminB', 'GET', 'ProjectMembership?_count=100')).body);
      const membershipsA = refsOf((await call('adminA', 'GET', 'ProjectMembership?_count=100')).body);
      const r = await call(role, 'POST', path(), body, JSON_CT);
      expect(r.status, JSON.stringify(r.body)).toBe(403);
      expect(await t.server.services.auth.directory.userByEmail(body.email)).toBeUndefined();
      expect(refsOf((await call('adminB', 'GET', 'ProjectMembership?_count=100')).body)).toEqual(membershipsB);
      expect(refsOf((await call('adminA', 'GET', 'ProjectMembership?_count=100')).body)).toEqual(membershipsA);
    });
  }

  test('adminA invites into its own project (control) -> 200, a membership of A', async () => {
    const r = await call('adminA', 'POST', `/admin/projects/${projectA}/invite`, inviteBody(), JSON_CT);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.project.reference).toBe(`Project/${projectA}`);
  });

  test("$rotate-secret: adminA on B's client -> 404, secret unchanged; non-admins 403", async () => {
    const r = await call('adminA', 'POST', `ClientApplication/${id('clientB')}/$rotate-secret`);
    expect(r.status, JSON.stringify(r.body)).toBe(404);
    const client = await unchanged('clientB', 'adminB');
    expect(client.secret).toBe(secretB);
    const own = await call('adminA', 'POST', `/admin/projects/${projectA}/client`, { name: 'A client' }, JSON_CT);
    expect(own.status).toBe(201);
    expect((await call('practA', 'POST', `ClientApplication/${own.body.id}/$rotate-secret`)).status).toBe(403);
    expect((await call('patientA', 'POST', `ClientApplication/${own.body.id}/$rotate-secret`)).status).toBe(403);
    expect((await call('adminB', 'POST', `ClientApplication/${own.body.id}/$rotate-secret`)).status).toBe(404);
  });

  test("B's client credentials (Basic) see B's data only", async () => {
    const basic = { Authorization: `Basic ${Buffer.from(`${id('clientB')}:${secretB}`).toString('base64')}` };
    const read = await fetch(t.server.fhirUrl + F.p1, { headers: basic });
    expect(read.status).toBe(404);
    const search = await fetch(t.server.fhirUrl + 'Patient?name=Isomatrix', { headers: basic });
    expect(search.status).toBe(200);
    expect(refsOf(await search.json())).toEqual(expand(['patientsB']));
  });
});

// ------------------------------------------------------------------------------------------ tokens

describe('tokens follow the membership and policy as they are now', () => {
  test('policy edits by the admin apply to the next request of an existing token', async () => {
    expect(refsOf((await call('practEdit', 'GET', 'Patient')).body)).toEqual([F.p1]);
    expect((await call('practEdit', 'GET', F.p2)).status).toBe(404);
    expect(refsOf((await call('practEdit', 'GET', 'Observation')).body)).toEqual(expand(['o1', 'o2']));

    const policy = (await call('adminA', 'GET', F.editPolicy)).body;
    const widened = await call('adminA', 'PUT', F.editPolicy, {
      ...policy,
      resource: [{ resourceType: 'Patient', criteria: `Patient?_id=${id('p1')},${id('p2')}`, readonly: true }],
    });
    expect(widened.status, JSON.stringify(widened.body)).toBe(200);
    expect(refsOf((await call('practEdit', 'GET', 'Patient')).body)).toEqual(expand(['p1', 'p2']));
    expect((await call('practEdit', 'GET', F.p2)).status).toBe(200);
    expect((await call('practEdit', 'GET', 'Observation')).status).toBe(403);
    expect((await call('practEdit', 'PUT', F.p2, { ...(await call('adminA', 'GET', F.p2)).body, gender: 'male' })).status).toBe(403);

    // a deleted policy grants nothing (never everything)
    expect((await call('adminA', 'DELETE', F.editPolicy)).status).toBe(200);
    expect((await call('practEdit', 'GET', 'Patient')).status).toBe(403);
    expect((await call('practEdit', 'GET', F.p1)).status).toBe(403);
  });

  test('membership edits apply at once: removing the policy gives the whole project (and only it)', async () => {
    const m = (await call('adminA', 'GET', `ProjectMembership/${member.practEdit.id}`)).body;
    const { accessPolicy: _dropped, ...rest } = m;
    const r = await call('adminA', 'PUT', `ProjectMembership/${member.practEdit.id}`, rest);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const mine = refsOf((await call('practEdit', 'GET', 'Patient?_count=100')).body);
    expect(mine).toEqual(refsOf((await call('adminA', 'GET', 'Patient?_count=100')).body));
    expect(mine).toEqual(expect.arrayContaining(expand(['patientsA'])));
    expect((await call('practEdit', 'GET', F.p1B)).status).toBe(404);
    // still no admin types
    expect((await call('practEdit', 'GET', 'ProjectMembership')).status).toBe(403);
  });

  test('a deactivated membership: its token is refused (401) and it cannot sign in again', async () => {
    expect((await call('practDeact', 'GET', 'Patient')).status).toBe(200);
    const m = (await call('adminA', 'GET', `ProjectMembership/${member.practDeact.id}`)).body;
    const r = await call('adminA', 'PUT', `ProjectMembership/${member.practDeact.id}`, { ...m, active: false });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const refused = await call('practDeact', 'GET', 'Patient');
    expect(refused.status).toBe(401);
    expect(refused.headers.get('www-authenticate')).toMatch(/^Bearer /);
    expect((await call('practDeact', 'GET', F.p1)).status).toBe(401);
    expect((await call('practDeact', 'POST', '$graphql', { query: '{ PatientList { id } }' }, { 'Content-Type': 'application/json' })).status).toBe(401);
    expect((await call('practDeact', 'GET', '/auth/me')).status).toBe(401);
    const login = await call('none', 'POST', '/auth/login', { email: email.practDeact, password: PASSWORD });
    expect(login.status).toBe(200);
    expect(login.body.code).toBeUndefined();
    expect(login.body.memberships).toBeUndefined();
  });
});

describe('sign-in routes that act on a login (launch patient picker, scopes)', () => {
  const codeFor = async (who: string, extra: Record<string, string> = {}): Promise<string> => {
    // The picker answers only sign-ins that asked for a launch patient.
    const r = await call('none', 'POST', '/auth/login', { email: who, password: PASSWORD, scope: 'openid launch/patient', ...extra });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    return r.body.code;
  };

  test('/auth/patients lists only the patients the login may see', async () => {
    const list = async (who: string): Promise<string[]> => {
      const r = await call('none', 'POST', '/auth/patients', { code: await codeFor(who) });
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      return refsOf(r.body);
    };
    expect(await list(email.practA)).toEqual([F.p1]);
    expect(await list(email.patientA)).toEqual([F.pU]);
    expect(await list(email.adminB)).toEqual(expand(['patientsB']));
  });

  test('/auth/patients with a name finds nothing outside the login', async () => {
    const r = await call('none', 'POST', '/auth/patients', { code: await codeFor(email.practA), name: 'Arno' });
    expect(refsOf(r.body)).toEqual([]);
    const b = await call('none', 'POST', '/auth/patients', { code: await codeFor(email.adminB), name: 'Alma' });
    expect(refsOf(b.body)).toEqual([]);
  });

  test('/auth/launch-patient refuses a patient outside the policy or the project (404)', async () => {
    const code = await codeFor(email.practA);
    expect((await call('none', 'POST', '/auth/launch-patient', { code, patient: id('p2') })).status).toBe(404);
    expect((await call('none', 'POST', '/auth/launch-patient', { code, patient: id('p1B') })).status).toBe(404);
    expect((await call('none', 'POST', '/auth/launch-patient', { code: await codeFor(email.adminB), patient: id('p1') })).status).toBe(404);
    expect((await call('none', 'POST', '/auth/launch-patient', { code, patient: id('p1') })).status).toBe(200);
  });

  test('SMART scopes only narrow the policy: practA with user/Observation.rs', async () => {
    const client = t.server.anonymous();
    const login = await client.startLogin({ email: email.practA, password: PASSWORD, scope: 'openid user/Observation.rs' });
    await client.processCode(login.code as string);
    const scoped = client.getAccessToken() as string;
    const get = (path: string): Promise<Response> => fetch(t.server.fhirUrl + path, { headers: { Authorization: `Bearer ${scoped}` } });
    expect(refsOf(await (await get('Observation')).json())).toEqual(expand(['o1', 'o2']));
    expect((await get(F.o3)).status).toBe(404);
    expect((await get(F.oB1)).status).toBe(404);
    expect((await get('Patient')).status).toBe(403);
    const write = await fetch(t.server.fhirUrl + 'Observation', {
      method: 'POST',
      headers: { Authorization: `Bearer ${scoped}`, 'Content-Type': 'application/fhir+json' },
      body: JSON.stringify(obs('scoped', F.p1, HR, '2024-06-01')),
    });
    expect(write.status).toBe(403);
  });

  test('SMART scopes cannot widen: patientA asking for user/*.cruds still sees only its own record', async () => {
    const client = t.server.anonymous();
    const login = await client.startLogin({ email: email.patientA, password: PASSWORD, scope: 'openid user/*.cruds' });
    await client.processCode(login.code as string);
    const scoped = client.getAccessToken() as string;
    const get = (path: string): Promise<Response> => fetch(t.server.fhirUrl + path, { headers: { Authorization: `Bearer ${scoped}` } });
    expect(refsOf(await (await get('Observation')).json())).toEqual([F.oU]);
    expect(refsOf(await (await get('Patient')).json())).toEqual([F.pU]);
    expect((await get('Condition')).status).toBe(403);
    expect((await get('ProjectMembership')).status).toBe(403);
    const write = await fetch(t.server.fhirUrl + 'Observation', {
      method: 'POST',
      headers: { Authorization: `Bearer ${scoped}`, 'Content-Type': 'application/fhir+json' },
      body: JSON.stringify(obs('scoped-pu', F.pU, HR, '2024-06-01')),
    });
    expect(write.status).toBe(403);
  });
});

// ------------------------------------------------------------------------------------------ writes

describe('writes inside and outside the policy', () => {
  beforeAll(async () => {
    await create('adminA', 'w1', obs('w1', F.p1, HR, '2024-05-01'));
    await create('adminA', 'w2', obs('w2', F.p2, HR, '2024-05-02'));
    await create('adminA', 'w3', obs('w3', F.p1, HR, '2024-05-03'));
    await create('adminA', 'w4', obs('w4', F.p2, HR, '2024-05-04'));
    await create('adminA', 'w5', obs('w5', F.p2, HR, '2024-05-05'));
    await create('adminA', 'w6', obs('w6', F.p2, HR, '2024-05-06'));
    await create('adminA', 'w7', obs('w7', F.p2, HR, '2024-05-08'));
    await create('adminA', 'wU', obs('wU', F.pU, HR, '2024-05-07'));
  });

  const PATCH = { 'Content-Type': 'application/json-patch+json' };
  const byIdentifier = async (who: Role, value: string): Promise<string[]> =>
    refsOf((await call(who, 'GET', `Observation?identifier=${IDS}|${value}`)).body);

  test('practA creates an Observation of p1 -> 201', async () => {
    const r = await call('practA', 'POST', 'Observation', obs('c-ok', F.p1, HR, '2024-06-01'));
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    expect(await byIdentifier('adminA', 'c-ok')).toEqual([`Observation/${r.body.id}`]);
  });

  test('practA creates an Observation of p2 -> 403, nothing stored', async () => {
    const r = await call('practA', 'POST', 'Observation', obs('c-p2', F.p2, HR, '2024-06-01'));
    expect(r.status, JSON.stringify(r.body)).toBe(403);
    expect(await byIdentifier('adminA', 'c-p2')).toEqual([]);
  });

  test("practA creates an Observation of B's patient -> 403, nothing stored in either project", async () => {
    const r = await call('practA', 'POST', 'Observation', obs('c-b', F.p1B, HR, '2024-06-01'));
    expect(r.status, JSON.stringify(r.body)).toBe(403);
    expect(await byIdentifier('adminA', 'c-b')).toEqual([]);
    expect(await byIdentifier('adminB', 'c-b')).toEqual([]);
  });

  test('practA update-as-create with a new id: subject p2 -> 403 (nothing), subject p1 -> 201', async () => {
    const outside = randomUUID();
    const r = await call('practA', 'PUT', `Observation/${outside}`, { ...obs('uc-p2', F.p2, HR, '2024-06-01'), id: outside });
    expect(r.status, JSON.stringify(r.body)).toBe(403);
    expect((await call('adminA', 'GET', `Observation/${outside}`)).status).toBe(404);
    const inside = randomUUID();
    const ok = await call('practA', 'PUT', `Observation/${inside}`, { ...obs('uc-p1', F.p1, HR, '2024-06-01'), id: inside });
    expect(ok.status, JSON.stringify(ok.body)).toBe(201);
  });

  test('practA updates w1 (inside) -> 200; the admin sees the new value', async () => {
    const current = (await call('practA', 'GET', F.w1)).body;
    const r = await call('practA', 'PUT', F.w1, { ...current, valueQuantity: { value: 99, unit: 'unit' } });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    V.w1 = r.body.meta.versionId;
    expect((await unchanged('w1')).valueQuantity.value).toBe(99);
  });

  test('practA moves w1 to p2 by PUT -> 403, unchanged', async () => {
    const current = (await call('practA', 'GET', F.w1)).body;
    const r = await call('practA', 'PUT', F.w1, { ...current, subject: { reference: F.p2 } });
    expect(r.status, JSON.stringify(r.body)).toBe(403);
    expect((await unchanged('w1')).subject.reference).toBe(F.p1);
  });

  test("practA moves w1 to B's patient by PATCH -> 403, unchanged", async () => {
    const r = await call('practA', 'PATCH', F.w1, [{ op: 'replace', path: '/subject/reference', value: F.p1B }], PATCH);
    expect(r.status, JSON.stringify(r.body)).toBe(403);
    expect((await unchanged('w1')).subject.reference).toBe(F.p1);
  });

  test('practA patches w1 inside the policy -> 200', async () => {
    const r = await call('practA', 'PATCH', F.w1, [{ op: 'replace', path: '/status', value: 'amended' }], PATCH);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    V.w1 = r.body.meta.versionId;
    expect((await unchanged('w1')).status).toBe('amended');
  });

  test('practA PUT / PATCH / DELETE of w2 (invisible, p2) -> 404, unchanged', async () => {
    const w2 = (await call('adminA', 'GET', F.w2)).body;
    expect((await call('practA', 'PUT', F.w2, { ...w2, subject: { reference: F.p1 } })).status).toBe(404);
    expect((await call('practA', 'PATCH', F.w2, [{ op: 'replace', path: '/status', value: 'cancelled' }], PATCH)).status).toBe(404);
    expect((await call('practA', 'DELETE', F.w2)).status).toBe(404);
    expect((await unchanged('w2')).subject.reference).toBe(F.p2);
  });

  test('practA deletes w3 (inside) -> 200; 410 for those who could see it, 404 for the others', async () => {
    const r = await call('practA', 'DELETE', F.w3);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect((await call('adminA', 'GET', F.w3)).status).toBe(410);
    // the policy is judged on the current row, which a deleted resource no longer matches: 404 for practA too
    expect((await call('practA', 'GET', F.w3)).status).toBe(404);
    // a deleted resource outside the policy or project must not answer 410 (that tells it existed)
    expect((await call('patientA', 'GET', F.w3)).status).toBe(404);
    expect((await call('adminB', 'GET', F.w3)).status).toBe(404);
    expect((await call('adminB', 'GET', `${F.w3}/_history`)).status).toBe(404);
  });

  test('practA: read-only types refuse writes (403), nothing changed', async () => {
    const e1 = (await call('practA', 'GET', F.e1)).body;
    expect((await call('practA', 'PUT', F.e1, { ...e1, status: 'cancelled' })).status).toBe(403);
    expect((await call('practA', 'PATCH', F.e1, [{ op: 'replace', path: '/status', value: 'cancelled' }], PATCH)).status).toBe(403);
    expect((await call('practA', 'DELETE', F.e1)).status).toBe(403);
    expect((await call('practA', 'POST', 'Encounter', encounter('new-e', F.p1))).status).toBe(403);
    expect((await call('practA', 'POST', 'DiagnosticReport', report('new-dr', F.p1, [F.o1]))).status).toBe(403);
    expect((await call('practA', 'POST', 'Practitioner', { resourceType: 'Practitioner', name: [{ family: 'New' }] })).status).toBe(403);
    await unchanged('e1');
    await unchanged('dr1');
  });

  test('practA: types outside the policy refuse writes (403)', async () => {
    expect((await call('practA', 'POST', 'Condition', { resourceType: 'Condition', subject: { reference: F.p1 } })).status).toBe(403);
    expect((await call('practA', 'POST', 'Binary', 'x', { 'Content-Type': 'text/plain' })).status).toBe(403);
    expect((await call('practA', 'PUT', F.b1, 'overwritten', { 'Content-Type': 'text/plain' })).status).toBe(403);
    // Binary is read-only for practA: refused as a type (403) before any row is looked at, visible or not
    expect((await call('practA', 'PUT', F.b2, 'overwritten', { 'Content-Type': 'text/plain' })).status).toBe(403);
    expect((await call('practA', 'PUT', `Binary/${randomUUID()}`, 'new', { 'Content-Type': 'text/plain' })).status).toBe(403);
    await unchanged('b1');
    await unchanged('b2');
  });

  test('practA: Patient interactions are limited to read/search/history/update', async () => {
    expect((await call('practA', 'POST', 'Patient', patient('new-p', 'Nina', '2000-01-01', '555-0999'))).status).toBe(403);
    expect((await call('practA', 'DELETE', F.p1)).status).toBe(403);
    expect((await call('adminA', 'GET', F.p1)).status).toBe(200);
    expect(refsOf((await call('adminA', 'GET', 'Patient?given=Nina')).body)).toEqual([]);
  });

  test('practA: readonlyFields (birthDate) keep their value, hiddenFields (telecom) are neither shown nor lost', async () => {
    const seen = (await call('practA', 'GET', F.p1)).body;
    expect(seen.telecom).toBeUndefined();
    expect(seen.birthDate).toBe('1970-01-01');
    const r = await call('practA', 'PUT', F.p1, { ...seen, gender: 'male', birthDate: '1999-09-09', telecom: [{ system: 'phone', value: 'HACKED' }] });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.gender).toBe('male');
    expect(r.body.birthDate).toBe('1970-01-01');
    expect(JSON.stringify(r.body)).not.toContain('telecom');
    const stored = (await call('adminA', 'GET', F.p1)).body;
    expect(stored.gender).toBe('male');
    expect(stored.birthDate).toBe('1970-01-01');
    expect(stored.telecom).toEqual([{ system: 'phone', value: '555-0101' }]);

    const patched = await call('practA', 'PATCH', F.p1, [{ op: 'replace', path: '/birthDate', value: '2001-01-01' }, { op: 'replace', path: '/gender', value: 'female' }], PATCH);
    expect(patched.status, JSON.stringify(patched.body)).toBe(200);
    expect(patched.body.birthDate).toBe('1970-01-01');
    expect(patched.body.telecom).toBeUndefined();
    const afterPatch = (await call('adminA', 'GET', F.p1)).body;
    expect(afterPatch.birthDate).toBe('1970-01-01');
    expect(afterPatch.gender).toBe('female');
    expect(afterPatch.telecom).toEqual([{ system: 'phone', value: '555-0101' }]);
    // and the new versions, read back through history, still hide telecom
    const history = await call('practA', 'GET', `${F.p1}/_history`);
    expect(history.body.entry.length).toBeGreaterThanOrEqual(3);
    expect(JSON.stringify(history.body)).not.toContain('555-0101');
  });

  test('patientA: readonly Observations and interaction-limited Patient', async () => {
    expect((await call('patientA', 'POST', 'Observation', obs('pu-new', F.pU, HR, '2024-06-01'))).status).toBe(403);
    const wU = (await call('patientA', 'GET', F.wU)).body;
    expect((await call('patientA', 'PUT', F.wU, { ...wU, status: 'cancelled' })).status).toBe(403);
    expect((await call('patientA', 'DELETE', F.wU)).status).toBe(403);
    await unchanged('wU');
    // Observation is read-only for patientA: a write is refused as such (403), whether the target is visible or not
    expect((await call('patientA', 'PUT', F.w1, { resourceType: 'Observation', id: id('w1'), status: 'final', code: { text: 'x' } })).status).toBe(403);
    expect((await call('patientA', 'DELETE', F.w1)).status).toBe(403);
    await unchanged('w1');

    const own = (await call('patientA', 'GET', F.pU)).body;
    const updated = await call('patientA', 'PUT', F.pU, { ...own, gender: 'other' });
    expect(updated.status, JSON.stringify(updated.body)).toBe(200);
    V.pU = updated.body.meta.versionId;
    expect((await call('patientA', 'DELETE', F.pU)).status).toBe(403);
    expect((await call('patientA', 'POST', 'Patient', patient('pu-p', 'Pia', '2000-01-01', '555-0998'))).status).toBe(403);
    expect((await call('patientA', 'PUT', F.p1, { ...(await call('adminA', 'GET', F.p1)).body, gender: 'unknown' })).status).toBe(404);
    expect((await call('adminA', 'GET', F.p1)).body.gender).toBe('female');
    expect((await call('patientA', 'POST', 'Binary', 'x', { 'Content-Type': 'text/plain' })).status).toBe(403);
    await unchanged('pU');
  });
});

describe('GraphQL mutations follow the same rules', () => {
  const mutate = (role: Role, query: string): Promise<Reply> => call(role, 'POST', '$graphql', gql(query), { 'Content-Type': 'application/json' });
  const byIdentifier = async (who: Role, value: string): Promise<string[]> =>
    refsOf((await call(who, 'GET', `Observation?identifier=${IDS}|${value}`)).body);
  const createObs = (value: string, subject: string): string =>
    `mutation { ObservationCreate(res: { resourceType: "Observation", status: "final", code: { text: "gql" }, identifier: [{ system: "${IDS}", value: "${value}" }], subject: { reference: "${subject}" } }) { id } }`;

  test('practA ObservationCreate of p2 -> forbidden, nothing stored; of p1 -> created', async () => {
    const refused = await mutate('practA', createObs('gql-p2', F.p2));
    expect(refused.body.data?.ObservationCreate ?? null, JSON.stringify(refused.body)).toBeNull();
    expect(refused.body.errors?.[0]?.message).toBe('The Observation would be outside your access policy');
    expect(await byIdentifier('adminA', 'gql-p2')).toEqual([]);
    const ok = await mutate('practA', createObs('gql-p1', F.p1));
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);
    expect(await byIdentifier('adminA', 'gql-p1')).toEqual([`Observation/${ok.body.data.ObservationCreate.id}`]);
  });

  test('patientA ObservationCreate of its own record -> forbidden (read-only)', async () => {
    const refused = await mutate('patientA', createObs('gql-pu', F.pU));
    expect(refused.body.data?.ObservationCreate ?? null, JSON.stringify(refused.body)).toBeNull();
    expect(await byIdentifier('adminA', 'gql-pu')).toEqual([]);
  });

  test('practA ObservationDelete of o3 (invisible) -> not found, o3 unchanged', async () => {
    const r = await mutate('practA', 'mutation { ObservationDelete(id: "{o3}") { id } }');
    expect(JSON.stringify(r.body)).toMatch(/[Nn]ot found/);
    await unchanged('o3');
  });

  test('practA PatientUpdate of p1: birthDate kept, telecom kept and not shown', async () => {
    const r = await mutate(
      'practA',
      'mutation { PatientUpdate(id: "{p1}", res: { resourceType: "Patient", id: "{p1}", name: [{ family: "Isomatrix", given: ["Alma"] }], identifier: [{ system: "' +
        IDS +
        '", value: "ap1" }], gender: "female", birthDate: "2002-02-02" }) { id birthDate telecom { value } } }'
    );
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.data.PatientUpdate).toEqual({ id: id('p1'), birthDate: '1970-01-01', telecom: null });
    const stored = (await call('adminA', 'GET', F.p1)).body;
    expect(stored.birthDate).toBe('1970-01-01');
    expect(stored.telecom).toEqual([{ system: 'phone', value: '555-0101' }]);
  });

  test('practA PatientUpdate of p2 (invisible) -> not found, p2 unchanged', async () => {
    const r = await mutate('practA', 'mutation { PatientUpdate(id: "{p2}", res: { resourceType: "Patient", id: "{p2}", gender: "male" }) { id } }');
    expect(r.body.data?.PatientUpdate ?? null, JSON.stringify(r.body)).toBeNull();
    await unchanged('p2');
  });

  test("adminB ObservationDelete / ObservationPatch of A's ids -> not found, unchanged", async () => {
    const del = await mutate('adminB', 'mutation { ObservationDelete(id: "{o2}") { id } }');
    expect(JSON.stringify(del.body)).toMatch(/[Nn]ot found/);
    const patch = await mutate('adminB', 'mutation { ObservationPatch(id: "{o2}", patch: [{ op: "replace", path: "/status", value: "cancelled" }]) { id } }');
    expect(patch.body.data?.ObservationPatch ?? null, JSON.stringify(patch.body)).toBeNull();
    await unchanged('o2');
  });
});

describe('transaction and batch Bundles', () => {
  const entry = (resource: Resource, fullUrl?: string): Json => ({ fullUrl, resource, request: { method: 'POST', url: resource.resourceType } });
  const byIdentifier = async (value: string): Promise<string[]> =>
    refsOf((await call('adminA', 'GET', `Observation?identifier=${IDS}|${value}`)).body);

  test('practA transaction: allowed + outside-policy create -> 403, neither stored', async () => {
    const r = await call('practA', 'POST', '', {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [entry(obs('tx-1', F.p1, HR, '2024-07-01')), entry(obs('tx-2', F.p2, HR, '2024-07-01'))],
    });
    expect(r.status, JSON.stringify(r.body)).toBe(403);
    expect(await byIdentifier('tx-1')).toEqual([]);
    expect(await byIdentifier('tx-2')).toEqual([]);
  });

  test('practA transaction: allowed create + update of an invisible resource -> 404, nothing stored', async () => {
    const w2 = (await call('adminA', 'GET', F.w2)).body;
    const r = await call('practA', 'POST', '', {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [entry(obs('tx-3', F.p1, HR, '2024-07-01')), { resource: { ...w2, status: 'cancelled' }, request: { method: 'PUT', url: F.w2 } }],
    });
    expect(r.status, JSON.stringify(r.body)).toBe(404);
    expect(await byIdentifier('tx-3')).toEqual([]);
    await unchanged('w2');
  });

  test('practA transaction: Observation + DiagnosticReport (read-only type) -> 403, nothing stored', async () => {
    const r = await call('practA', 'POST', '', {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [entry(obs('tx-4', F.p1, HR, '2024-07-01'), 'urn:uuid:0b5e6b8e-2d5c-4d1a-9c57-8d3c0b0e0a01'), entry(report('tx-dr', F.p1, ['urn:uuid:0b5e6b8e-2d5c-4d1a-9c57-8d3c0b0e0a01']))],
    });
    expect(r.status, JSON.stringify(r.body)).toBe(403);
    expect(await byIdentifier('tx-4')).toEqual([]);
  });

  test('practA transaction: a conditional create matching only w7 (invisible) creates a new one; w7 unchanged', async () => {
    const r = await call('practA', 'POST', '', {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [{ resource: obs('w7', F.p1, HR, '2024-07-01'), request: { method: 'POST', url: 'Observation', ifNoneExist: `identifier=${IDS}|w7` } }],
    });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.entry[0].response.status.slice(0, 3)).toBe('201');
    expect(r.body.entry[0].response.location).not.toContain(id('w7'));
    await unchanged('w7');
  });

  test('practA transaction: all entries inside the policy -> 200, all stored', async () => {
    const r = await call('practA', 'POST', '', {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [entry(obs('tx-5', F.p1, HR, '2024-07-01')), entry(obs('tx-6', F.p1, WEIGHT, '2024-07-01'))],
    });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect((r.body.entry as Json[]).map((e) => e.response.status.slice(0, 3))).toEqual(['201', '201']);
    expect(await byIdentifier('tx-5')).toHaveLength(1);
    expect(await byIdentifier('tx-6')).toHaveLength(1);
  });

  test('patientA transaction: own Patient update + Observation create (read-only) -> 403, Patient unchanged', async () => {
    const own = (await call('patientA', 'GET', F.pU)).body;
    const r = await call('patientA', 'POST', '', {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [{ resource: { ...own, gender: 'male' }, request: { method: 'PUT', url: F.pU } }, entry(obs('tx-pu', F.pU, HR, '2024-07-01'))],
    });
    expect(r.status, JSON.stringify(r.body)).toBe(403);
    await unchanged('pU');
    expect(await byIdentifier('tx-pu')).toEqual([]);
  });

  test('adminA transaction touching B ids -> fails, B unchanged', async () => {
    const r = await call('adminA', 'POST', '', {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        { request: { method: 'DELETE', url: F.oB2 } },
        { resource: [{ op: 'replace', path: '/status', value: 'cancelled' }], request: { method: 'PATCH', url: F.oB1 } },
      ],
    });
    expect(r.status, JSON.stringify(r.body)).toBe(404);
    await unchanged('oB1', 'adminB');
    await unchanged('oB2', 'adminB');
  });

  test('practA batch: each entry judged on its own', async () => {
    const r = await call('practA', 'POST', '', {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [
        entry(obs('bt-1', F.p1, HR, '2024-07-01')),
        entry(obs('bt-2', F.p2, HR, '2024-07-01')),
        { request: { method: 'GET', url: F.p2 } },
        { request: { method: 'GET', url: F.p1 } },
        { request: { method: 'GET', url: `Observation?subject=${F.p2}` } },
        { request: { method: 'DELETE', url: F.w2 } },
        { request: { method: 'GET', url: 'Condition' } },
        { request: { method: 'GET', url: F.p1B } },
      ],
    });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const entries = r.body.entry as Json[];
    expect(entries.map((e) => e.response.status.slice(0, 3))).toEqual(['201', '403', '404', '200', '200', '404', '403', '404']);
    expect(entries[3].resource.id).toBe(id('p1'));
    expect(entries[3].resource.telecom).toBeUndefined();
    expect(entries[4].resource.entry ?? []).toEqual([]);
    expect(JSON.stringify(r.body)).not.toContain('555-010');
    expect(await byIdentifier('bt-1')).toHaveLength(1);
    expect(await byIdentifier('bt-2')).toEqual([]);
    await unchanged('w2');
  });

  test('adminB batch reading A ids -> 404 per entry', async () => {
    const r = await call('adminB', 'POST', '', {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [{ request: { method: 'GET', url: F.p1 } }, { request: { method: 'GET', url: `Observation?subject=${F.p1}` } }, { request: { method: 'GET', url: F.p1B } }],
    });
    expect(r.status).toBe(200);
    const entries = r.body.entry as Json[];
    expect(entries.map((e) => e.response.status.slice(0, 3))).toEqual(['404', '200', '200']);
    expect(entries[1].resource.entry ?? []).toEqual([]);
    expect(entries[2].resource.id).toBe(id('p1B'));
  });
});

describe('conditional writes never match what the caller cannot see', () => {
  test('practA conditional create whose criteria match only o3 (invisible) creates a new one', async () => {
    const r = await call('practA', 'POST', 'Observation', obs('ao3', F.p1, HR, '2024-08-01'), { 'If-None-Exist': `identifier=${IDS}|ao3` });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    expect(r.body.id).not.toBe(id('o3'));
    expect(r.body.subject.reference).toBe(F.p1);
    await unchanged('o3');
  });

  test('practA conditional update whose criteria match only w4 (invisible) creates, w4 unchanged', async () => {
    const r = await call('practA', 'PUT', `Observation?identifier=${IDS}|w4`, obs('w4', F.p1, HR, '2024-08-01'));
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    expect(r.body.id).not.toBe(id('w4'));
    expect((await unchanged('w4')).subject.reference).toBe(F.p2);
  });

  test('practA conditional delete whose criteria match only w6 (invisible) deletes nothing', async () => {
    const r = await call('practA', 'DELETE', `Observation?identifier=${IDS}|w6`);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    await unchanged('w6');
  });

  test('practA conditional patch whose criteria match only w5 (invisible) -> 404, unchanged', async () => {
    const r = await call('practA', 'PATCH', `Observation?identifier=${IDS}|w5`, [{ op: 'replace', path: '/status', value: 'cancelled' }], {
      'Content-Type': 'application/json-patch+json',
    });
    expect(r.status, JSON.stringify(r.body)).toBe(404);
    await unchanged('w5');
  });

  test("adminA conditional create / update on B's identifiers create in A; B unchanged", async () => {
    const created = await call('adminA', 'POST', 'Observation', obs('ob1', F.p1, HR, '2024-08-01'), { 'If-None-Exist': `identifier=${IDS}|ob1` });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    expect(created.body.id).not.toBe(id('oB1'));
    const updated = await call('adminA', 'PUT', `Observation?identifier=${IDS}|ob2`, obs('ob2', F.p1, HR, '2024-08-01'));
    expect(updated.status, JSON.stringify(updated.body)).toBe(201);
    expect(updated.body.id).not.toBe(id('oB2'));
    const deleted = await call('adminA', 'DELETE', `Observation?identifier=${IDS}|obh`);
    expect(deleted.status).toBe(200);
    await unchanged('oB1', 'adminB');
    await unchanged('oB2', 'adminB');
    await unchanged('oHijackB', 'adminB');
  });

  test('conditional references resolve only within what the caller sees', async () => {
    const invisible = await call('practA', 'POST', 'Observation', { ...obs('cr-1', F.p1, HR, '2024-08-01'), subject: { reference: `Patient?identifier=${IDS}|ap2` } });
    expect(invisible.status, JSON.stringify(invisible.body)).toBe(400);
    expect(JSON.stringify(invisible.body)).toContain('matched no resource');
    const visible = await call('practA', 'POST', 'Observation', { ...obs('cr-2', F.p1, HR, '2024-08-01'), subject: { reference: `Patient?identifier=${IDS}|ap1` } });
    expect(visible.status, JSON.stringify(visible.body)).toBe(201);
    expect(visible.body.subject.reference).toBe(F.p1);
    const otherProject = await call('adminA', 'POST', 'Observation', { ...obs('cr-3', F.p1, HR, '2024-08-01'), subject: { reference: `Patient?identifier=${IDS}|bp1` } });
    expect(otherProject.status, JSON.stringify(otherProject.body)).toBe(400);
  });
});

// ------------------------------------------------------------------------------------------ cross-project writes

describe("writes by id into the other project's ids never touch it", () => {
  test("adminA PUT Patient/<B's pHijackB> creates A's own copy; B's is unchanged", async () => {
    const r = await call('adminA', 'PUT', F.pHijackB, { ...patient('hijack', 'Hijack', '2000-01-01', '555-0666'), id: id('pHijackB') });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const b = await unchanged('pHijackB', 'adminB');
    expect(b.name[0].given).toEqual(['Bodil']);
    expect(refsOf((await call('adminB', 'GET', 'Patient?given=Hijack')).body)).toEqual([]);
    expect((await call('adminA', 'GET', F.pHijackB)).body.name[0].given).toEqual(['Hijack']);
  });

  test('an id held by both projects resolves within each project only (chains, includes, _has, GraphQL)', async () => {
    // A now has its own Patient/<pHijackB id> (named Hijack); B's is named Bodil
    const o = await call('adminA', 'POST', 'Observation', obs('dup-ref', F.pHijackB, TEMP, '2024-09-02'));
    expect(o.status).toBe(201);
    const given = async (role: Role, path: string): Promise<string[]> =>
      patientsIn((await call(role, 'GET', path)).body).map((p) => p.name[0].given[0]);
    expect(refsOf((await call('adminA', 'GET', 'Observation?subject:Patient.given=Bodil')).body)).toEqual([]);
    expect(refsOf((await call('adminA', 'GET', 'Observation?subject:Patient.given=Hijack')).body)).toEqual([`Observation/${o.body.id}`]);
    expect(await given('adminA', `Observation?_id=${o.body.id}&_include=Observation:subject`)).toEqual(['Hijack']);
    expect(refsOf((await call('adminB', 'GET', `Patient?_has:Observation:subject:code=${TEMP}`)).body)).toEqual([]);
    expect(refsOf((await call('adminB', 'GET', `Patient?_id=${id('pHijackB')}&_revinclude=Observation:subject`)).body)).toEqual([F.pHijackB]);
    const g = await call('adminA', 'POST', '$graphql', { query: `{ Observation(id: "${o.body.id}") { subject { resource { ... on Patient { name { given } } } } } }` }, { 'Content-Type': 'application/json' });
    expect(g.body.data.Observation.subject.resource.name).toEqual([{ given: ['Hijack'] }]);
    expect((await call('adminB', 'GET', F.pHijackB)).body.name[0].given).toEqual(['Bodil']);
  });

  test("practA PUT Observation/<B's oHijackB> with subject p1 creates in A; B's unchanged", async () => {
    const r = await call('practA', 'PUT', F.oHijackB, { ...obs('hijack-o', F.p1, HR, '2024-09-01'), id: id('oHijackB') });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    expect((await unchanged('oHijackB', 'adminB')).subject.reference).toBe(F.p1B);
  });

  test("patientA PUT Patient/<B's p2B> -> 403; B unchanged", async () => {
    const r = await call('patientA', 'PUT', F.p2B, { ...patient('x', 'X', '2000-01-01', '555-0777'), id: id('p2B') });
    expect(r.status, JSON.stringify(r.body)).toBe(403);
    await unchanged('p2B', 'adminB');
    expect((await call('adminA', 'GET', F.p2B)).status).toBe(404);
  });

  test('PATCH and DELETE of B ids from A -> 404; B unchanged', async () => {
    const patch = [{ op: 'replace', path: '/gender', value: 'male' }];
    for (const role of ['adminA', 'practA'] as const) {
      expect((await call(role, 'PATCH', F.p1B, patch, { 'Content-Type': 'application/json-patch+json' })).status).toBe(404);
      expect((await call(role, 'DELETE', F.oB1)).status).toBe(404);
    }
    expect((await call('adminA', 'DELETE', F.bB1)).status).toBe(404);
    expect((await call('adminA', 'DELETE', F.policyB)).status).toBe(404);
    await unchanged('p1B', 'adminB');
    await unchanged('oB1', 'adminB');
    await unchanged('bB1', 'adminB');
    await unchanged('policyB', 'adminB');
  });

  test("adminA raw PUT Binary/<B's bB1> creates A's own Binary; B's bytes unchanged", async () => {
    const r = await call('adminA', 'PUT', F.bB1, 'taken over', { 'Content-Type': 'text/plain' });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    await unchanged('bB1', 'adminB');
    const raw = await fetch(t.server.fhirUrl + F.bB1, { headers: { Authorization: `Bearer ${token.adminB}` } });
    expect(await raw.text()).toBe('B1 secret');
  });

  test('adminB PATCH / DELETE / PUT of A ids: 404, 404, and a copy in B; A unchanged', async () => {
    expect((await call('adminB', 'PATCH', F.p2, [{ op: 'replace', path: '/gender', value: 'male' }], { 'Content-Type': 'application/json-patch+json' })).status).toBe(404);
    expect((await call('adminB', 'DELETE', F.o2)).status).toBe(404);
    expect((await call('adminB', 'DELETE', F.practPolicy)).status).toBe(404);
    const put = await call('adminB', 'PUT', F.o1, { ...obs('b-copy', F.p1B, HR, '2024-09-01'), id: id('o1') });
    expect(put.status, JSON.stringify(put.body)).toBe(201);
    await unchanged('p2');
    await unchanged('o2');
    await unchanged('practPolicy');
    expect((await unchanged('o1')).subject.reference).toBe(F.p1);
    // and the practitioner keeps seeing A's o1, not B's copy
    expect((await call('practA', 'GET', F.o1)).body.subject.reference).toBe(F.p1);
  });
});

describe('identity resources written in one project never act in the other', () => {
  const login = (emailAddress: string, password: string, projectId?: string): Promise<Reply> =>
    call('none', 'POST', '/auth/login', { email: emailAddress, password, projectId });

  test("a ProjectMembership that adminA stores under the id of B's admin membership, naming project B, gives adminA nothing in B", async () => {
    const before = await call('adminB', 'GET', `ProjectMembership/${member.adminB.id}`);
    // (the write itself is not refused today: the forged row is stored in A and ignored by sign-in)
    await call('adminA', 'PUT', `ProjectMembership/${member.adminB.id}`, {
      resourceType: 'ProjectMembership',
      id: member.adminB.id,
      project: { reference: `Project/${projectB}` },
      user: member.adminA.user,
      profile: member.adminA.profile,
      admin: true,
    });
    const own = await call('adminB', 'GET', `ProjectMembership/${member.adminB.id}`);
    expect(own.body.user).toEqual(member.adminB.user);
    expect(own.body.meta.versionId).toBe(before.body.meta.versionId);
    const intoB = await login(t.server.admin.email, t.server.admin.password, projectB);
    expect(intoB.status).toBe(200);
    expect(intoB.body.code).toBeUndefined();
    expect(intoB.body.memberships).toBeUndefined();
    const chooser = await login(t.server.admin.email, t.server.admin.password);
    expect(((chooser.body.memberships ?? []) as Json[]).map((m) => m.project.reference)).not.toContain(`Project/${projectB}`);
    // B's admin still signs in to B as before
    expect((await login(email.adminB, PASSWORD)).body.code).toEqual(expect.any(String));
  });

  test('a ProjectMembership in A naming project B (fresh id) gives its user nothing in B', async () => {
    await call('adminA', 'POST', 'ProjectMembership', {
      resourceType: 'ProjectMembership',
      project: { reference: `Project/${projectB}` },
      user: member.practA.user,
      profile: member.practA.profile,
      admin: true,
    });
    const intoB = await login(email.practA, PASSWORD, projectB);
    expect(intoB.status).toBe(200);
    expect(intoB.body.code).toBeUndefined();
    // practA still has exactly one membership: a code for project A at once
    const plain = await login(email.practA, PASSWORD);
    expect(plain.body.code).toEqual(expect.any(String));
    const list = (await call('adminB', 'GET', 'ProjectMembership?_count=100')).body.entry as Json[];
    expect(list.map((e) => e.resource.user.reference)).not.toContain(member.practA.user?.reference);
  });

  test("a ClientApplication that adminA stores under B's client id does not lock B's client out", async () => {
    await call('adminA', 'PUT', F.clientB, { resourceType: 'ClientApplication', id: id('clientB'), name: 'shadow', secret: 'shadow-secret-0123456789' });
    const basic = (secret: string): string => `Basic ${Buffer.from(`${id('clientB')}:${secret}`).toString('base64')}`;
    const asB = await fetch(t.server.fhirUrl + 'Patient?name=Isomatrix', { headers: { Authorization: basic(secretB) } });
    expect(asB.status).toBe(200);
    expect(refsOf(await asB.json())).toEqual(expand(['patientsB']));
    const token = await fetch(`${t.server.baseUrl}oauth2/token`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded', Authorization: basic(secretB) },
      body: 'grant_type=client_credentials',
    });
    expect(token.status).toBe(200);
    // and the shadow's secret opens nothing
    const asShadow = await fetch(t.server.fhirUrl + 'Patient', { headers: { Authorization: basic('shadow-secret-0123456789') } });
    expect(asShadow.status).toBe(401);
  });
});
