import { applyPatch } from '@medplum/core';
import type { Operation } from '@medplum/core';
import type { Bundle, OperationOutcome, Parameters, Patient, Resource } from '@medplum/fhirtypes';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { loadDefinitions } from '../src/fhir/definitions.ts';
import { childElements, parseXml, resourceFromXml } from './fhir-xml.ts';
import type { XmlElement } from './fhir-xml.ts';
import { FHIR_JSON, unique, useTestServer } from './harness.ts';

// The public FHIR test cases (https://github.com/FHIR/fhir-test-cases), r4/patch.
const PATCH_CASES_DIR = join(import.meta.dirname, '../../../shared/testdata/fhir-test-cases/r4/patch');
const JSON_PATCH = { 'Content-Type': 'application/json-patch+json' };

// The XML converter needs the type definitions while the cases are collected, before any server starts.
loadDefinitions();

const t = useTestServer();

// ---------------------------------------------------------------- helpers

async function create<T extends Resource>(resource: T): Promise<{ status: number; body: T | OperationOutcome }> {
  const res = await t.server.fhir(resource.resourceType, { method: 'POST', headers: FHIR_JSON, body: JSON.stringify(resource) });
  return { status: res.status, body: (await res.json()) as T | OperationOutcome };
}

async function createOk<T extends Resource>(resource: T): Promise<T> {
  const { status, body } = await create(resource);
  expect(status, JSON.stringify(body)).toBe(201);
  return body as T;
}

/** PATCH; a string body is sent as is (to send malformed bodies), anything else as JSON. */
async function patch(
  resource: Resource,
  body: unknown,
  headers: Record<string, string>
): Promise<{ status: number; body: Resource | OperationOutcome }> {
  const res = await t.server.fhir(`${resource.resourceType}/${resource.id}`, {
    method: 'PATCH',
    headers,
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as Resource | OperationOutcome };
}

async function read<T extends Resource>(resource: T): Promise<T> {
  const res = await t.server.fhir(`${resource.resourceType}/${resource.id}`);
  expect(res.status).toBe(200);
  return (await res.json()) as T;
}

/** The comparison the test cases call for: everything but id and meta. */
function content(resource: Resource): Record<string, unknown> {
  const { id: _id, meta: _meta, ...rest } = resource;
  return rest;
}

function expectOutcome(body: Resource | OperationOutcome): OperationOutcome {
  expect(body.resourceType).toBe('OperationOutcome');
  const outcome = body as OperationOutcome;
  expect(outcome.issue.some((i) => i.severity === 'error' || i.severity === 'fatal')).toBe(true);
  return outcome;
}

/** A rejected write leaves the resource as it was: same version, same content, no new history entry. */
async function expectUnchanged(before: Resource): Promise<void> {
  const now = await read(before);
  expect(now.meta?.versionId).toBe(before.meta?.versionId);
  expect(now).toEqual(before);
  const history = (await (await t.server.fhir(`${before.resourceType}/${before.id}/_history`)).json()) as Bundle;
  expect(history.entry?.[0]?.resource?.meta?.versionId).toBe(before.meta?.versionId);
}

// ---------------------------------------------------------------- FHIRPath Patch: fhir-patch-tests.xml

interface FhirPatchCase {
  name: string;
  /** "both": a diff engine should also derive this diff; "forwards": applying it is all that is defined. */
  mode: string;
  input: Resource;
  diff: Parameters;
  output?: Resource;
  /** Set when the case expects the patch to be rejected. */
  error?: string;
}

function loadFhirPatchCases(): FhirPatchCase[] {
  const root = parseXml(readFileSync(join(PATCH_CASES_DIR, 'fhir-patch-tests.xml'), 'utf8'));
  const only = (el: XmlElement, name: string): XmlElement | undefined => {
    const found = childElements(el).filter((c) => c.name === name);
    if (found.length > 1) {
      throw new Error(`More than one <${name}>`);
    }
    return found[0];
  };
  const resourceIn = (el: XmlElement | undefined): Resource | undefined => {
    const inner = el ? childElements(el) : [];
    if (el && inner.length !== 1) {
      throw new Error(`<${el.name}> must hold one resource`);
    }
    return el ? resourceFromXml(inner[0]) : undefined;
  };
  return childElements(root).map((c) => {
    const known = ['input', 'diff', 'output', 'error'];
    const unknown = childElements(c).find((e) => !known.includes(e.name));
    if (c.name !== 'case' || unknown) {
      throw new Error(`Unexpected <${unknown?.name ?? c.name}> in ${c.attrs.name}`);
    }
    const error = only(c, 'error');
    return {
      name: c.attrs.name,
      mode: c.attrs.mode,
      input: resourceIn(only(c, 'input')) as Resource,
      diff: resourceIn(only(c, 'diff')) as Parameters,
      output: resourceIn(only(c, 'output')),
      error: error ? (error.attrs.msg ?? '') : undefined,
    };
  });
}

const fhirPatchCases = loadFhirPatchCases();

/**
 * Cases whose expected output is not a valid Patient, so a conformant server must refuse the patch:
 * "Servers SHALL return an error if the outcome of the patch operation is not a valid resource"
 * (https://hl7.org/fhir/R4/fhirpatch.html). Both leave a Patient.contact with neither name, telecom,
 * address nor organization, which breaks invariant pat-1. The test checks the claim by trying to
 * create the expected output directly.
 */
const INVALID_EXPECTED_OUTPUT: Record<string, string> = {
  'Delete Nested Primitive #2': 'pat-1',
  'Consecutive operations': 'pat-1',
};

interface Deviation {
  /** The FHIR rule @medplum/core's fhirpathPatchTypedValue / parseFhirPathPatchParameters does not follow. */
  rule: string;
  /** The server's current answer, asserted so that this test fails when the behaviour changes. */
  assertCurrent(result: { status: number; body: Resource | OperationOutcome }, created: Resource): Promise<void>;
}

/** The anonymous-type value ("part" instead of value[x]) is read as undefined and crashes the engine. */
async function rejectedWithTypeError(result: { status: number; body: Resource | OperationOutcome }, created: Resource) {
  expect(result.status).toBe(400);
  const outcome = expectOutcome(result.body);
  expect(outcome.issue[0].details?.text).toBe("Cannot read properties of undefined (reading 'value')");
  await expectUnchanged(created);
}

/** Known deviations of @medplum/core's FHIRPath Patch implementation (the server calls it as is). */
const CORE_DEVIATIONS: Record<string, Deviation> = {
  'Add Anonymous Type': {
    rule:
      'fhirpatch.html: to add an anonymous element (e.g. Patient.contact), "instead of providing a value, ' +
      'a set of parts that are values are provided"; core only reads value[x]',
    assertCurrent: rejectedWithTypeError,
  },
  'Consecutive operations': {
    // Its second operation adds an anonymous Patient.contact as parts. (Were that supported, the expected
    // output would still break pat-1, see INVALID_EXPECTED_OUTPUT, so the right answer is a 400 either way.)
    rule: 'fhirpatch.html: anonymous element values are given as parts; core only reads value[x]',
    assertCurrent: rejectedWithTypeError,
  },
};

describe('FHIRPath Patch: the FHIR test cases over HTTP', () => {
  test('the case file is read completely', () => {
    expect(fhirPatchCases).toHaveLength(33);
    for (const c of fhirPatchCases) {
      expect(c.input.resourceType, c.name).toBe('Patient');
      expect(c.diff.resourceType, c.name).toBe('Parameters');
      expect(['both', 'forwards'], c.name).toContain(c.mode);
      // each case expects either a result or an error, never both
      expect(c.output === undefined, c.name).toBe(c.error !== undefined);
    }
    expect(fhirPatchCases.filter((c) => c.error !== undefined).map((c) => c.name)).toEqual(['Operation on missing element']);
    const names = fhirPatchCases.map((c) => c.name);
    for (const listed of [...Object.keys(INVALID_EXPECTED_OUTPUT), ...Object.keys(CORE_DEVIATIONS)]) {
      expect(names).toContain(listed);
    }
  });

  // "mode" only matters to diff engines (can the diff be derived from input and output); a server applies
  // every case forwards.
  test.each(fhirPatchCases.map((c) => [c.name, c] as const))('%s', async (name, c) => {
    // The input must be a valid resource the server accepts. A client id is dropped: POST is a plain create.
    const { id: _id, ...input } = c.input;
    const created = await createOk(input as Resource);
    expect(content(created)).toEqual(content(c.input));

    // The expected output must be valid too, unless listed as not.
    if (c.output) {
      const { id: _outputId, ...output } = c.output;
      const attempt = await create(output as Resource);
      if (name in INVALID_EXPECTED_OUTPUT) {
        expect(attempt.status).toBe(400);
        expect(JSON.stringify(expectOutcome(attempt.body))).toContain(`Constraint ${INVALID_EXPECTED_OUTPUT[name]} not met`);
      } else {
        expect(attempt.status, JSON.stringify(attempt.body)).toBe(201);
      }
    }

    const result = await patch(created, c.diff, FHIR_JSON);

    const deviation = CORE_DEVIATIONS[name];
    if (deviation) {
      await deviation.assertCurrent(result, created);
      return;
    }
    if (c.error !== undefined || name in INVALID_EXPECTED_OUTPUT) {
      expect(result.status, JSON.stringify(result.body)).toBeGreaterThanOrEqual(400);
      expect(result.status).toBeLessThan(500);
      const outcome = expectOutcome(result.body);
      if (name in INVALID_EXPECTED_OUTPUT) {
        expect(JSON.stringify(outcome)).toContain(`Constraint ${INVALID_EXPECTED_OUTPUT[name]} not met`);
      }
      await expectUnchanged(created);
      return;
    }
    expect(result.status, JSON.stringify(result.body)).toBe(200);
    const output = c.output as Resource;
    expect(content(result.body)).toEqual(content(output));
    expect(result.body.id).toBe(created.id);
    // A patch that changes nothing keeps the version (as an update does); any change makes a new one.
    const changed = JSON.stringify(content(output)) !== JSON.stringify(content(c.input));
    expect(result.body.meta?.versionId !== created.meta?.versionId).toBe(changed);
    // What was returned is what was stored.
    expect(await read(created)).toEqual(result.body);
  });
});

// ---------------------------------------------------------------- JSON Patch: json-patch-tests.json

interface JsonPatchCase {
  comment: string;
  doc: unknown;
  patch: Operation[];
  expected?: unknown;
  error?: string;
}

const jsonPatchCases = JSON.parse(readFileSync(join(PATCH_CASES_DIR, 'json-patch-tests.json'), 'utf8')) as JsonPatchCase[];

// These documents are not FHIR resources, so the server cannot store them. They run in-process against
// @medplum/core's applyPatch, which is the function the server's repository applies to a JSON Patch body.
describe('JSON Patch: the FHIR test cases against applyPatch', () => {
  test('the case file is read completely', () => {
    expect(jsonPatchCases).toHaveLength(16);
    for (const c of jsonPatchCases) {
      expect(c.expected === undefined, c.comment).toBe(c.error !== undefined);
    }
  });

  test.each(jsonPatchCases.map((c) => [c.comment, c] as const))('%s', (_comment, c) => {
    const doc = structuredClone(c.doc);
    const results = applyPatch(doc, structuredClone(c.patch));
    if (c.error !== undefined) {
      expect(results.some((r) => r instanceof Error)).toBe(true);
    } else {
      expect(results).toEqual(c.patch.map(() => null));
      expect(doc).toEqual(c.expected);
    }
  });
});

// ---------------------------------------------------------------- JSON Patch over HTTP

describe('JSON Patch over HTTP', () => {
  function patient(): Patient {
    return {
      resourceType: 'Patient',
      name: [
        { family: unique('fam'), given: ['Eleni'] },
        { family: 'Papadopoulou', given: ['Lena'], use: 'maiden' },
      ],
      gender: 'female',
      birthDate: '1980-02-29',
      telecom: [{ system: 'phone', value: '+30 210 0000000' }],
    };
  }

  async function patchOk(before: Patient, ops: Operation[]): Promise<Patient> {
    const result = await patch(before, ops, JSON_PATCH);
    expect(result.status, JSON.stringify(result.body)).toBe(200);
    const after = result.body as Patient;
    expect(after.meta?.versionId).not.toBe(before.meta?.versionId);
    expect(await read(after)).toEqual(after);
    return after;
  }

  async function patchRejected(before: Patient, ops: unknown, status = 400): Promise<OperationOutcome> {
    const result = await patch(before, ops, JSON_PATCH);
    expect(result.status, JSON.stringify(result.body)).toBe(status);
    const outcome = expectOutcome(result.body);
    await expectUnchanged(before);
    return outcome;
  }

  test('add: a new element, an array item at an index, and at the end with -', async () => {
    const p = await createOk(patient());
    const after = await patchOk(p, [
      { op: 'add', path: '/active', value: true },
      { op: 'add', path: '/name/0/given/0', value: 'Maria' },
      { op: 'add', path: '/telecom/-', value: { system: 'email', value: 'e@example.org' } },
    ]);
    expect(after.active).toBe(true);
    expect(after.name?.[0].given).toEqual(['Maria', 'Eleni']);
    expect(after.telecom?.map((t) => t.system)).toEqual(['phone', 'email']);
  });

  test('remove: an element and an array item', async () => {
    const p = await createOk(patient());
    const after = await patchOk(p, [
      { op: 'remove', path: '/gender' },
      { op: 'remove', path: '/name/1' },
    ]);
    expect(after.gender).toBeUndefined();
    expect(after.name).toHaveLength(1);
    expect(after.name?.[0].family).toBe(p.name?.[0].family);
  });

  test('replace: a primitive and a whole complex value', async () => {
    const p = await createOk(patient());
    const after = await patchOk(p, [
      { op: 'replace', path: '/birthDate', value: '1981-03-01' },
      { op: 'replace', path: '/telecom/0', value: { system: 'phone', value: '+30 210 1111111', use: 'home' } },
    ]);
    expect(after.birthDate).toBe('1981-03-01');
    expect(after.telecom).toEqual([{ system: 'phone', value: '+30 210 1111111', use: 'home' }]);
  });

  test('move: reorders a list', async () => {
    const p = await createOk(patient());
    const after = await patchOk(p, [{ op: 'move', from: '/name/1', path: '/name/0' }]);
    expect(after.name?.map((n) => n.family)).toEqual(['Papadopoulou', p.name?.[0].family]);
  });

  test('copy: duplicates a value into another place', async () => {
    const p = await createOk(patient());
    const after = await patchOk(p, [{ op: 'copy', from: '/name/1/given/0', path: '/name/0/given/-' }]);
    expect(after.name?.[0].given).toEqual(['Eleni', 'Lena']);
    expect(after.name?.[1].given).toEqual(['Lena']);
  });

  test('test: a passing test lets the rest apply; a failing one rejects the whole patch', async () => {
    const p = await createOk(patient());
    const after = await patchOk(p, [
      { op: 'test', path: '/gender', value: 'female' },
      { op: 'replace', path: '/gender', value: 'other' },
    ]);
    expect(after.gender).toBe('other');

    await patchRejected(after, [
      { op: 'replace', path: '/birthDate', value: '1990-01-01' },
      { op: 'test', path: '/gender', value: 'female' },
    ]);
  });

  test('a patch whose result is not a valid resource is rejected', async () => {
    const p = await createOk(patient());
    const unknownElement = await patchRejected(p, [{ op: 'add', path: '/favouriteColour', value: 'blue' }]);
    expect(JSON.stringify(unknownElement)).toContain('favouriteColour');
    // a wrong type for a known element, and a code outside its required value set
    await patchRejected(p, [{ op: 'replace', path: '/birthDate', value: 19800229 }]);
    await patchRejected(p, [{ op: 'replace', path: '/gender', value: 'robot' }]);
  });

  test('a remove that empties a list does not leave an empty array behind', async () => {
    // FHIR JSON has no empty arrays (https://hl7.org/fhir/R4/json.html), so "name": [] is not a valid
    // Patient. The server may reject the patch or drop the emptied property, but must not store [].
    const p = await createOk({ ...patient(), name: [{ family: unique('fam') }] });
    const result = await patch(p, [{ op: 'remove', path: '/name/0' }], JSON_PATCH);
    if (result.status === 200) {
      expect((result.body as Patient).name).toBeUndefined();
      expect((await read(p)).name).toBeUndefined();
    } else {
      expect(result.status, JSON.stringify(result.body)).toBe(400);
      expectOutcome(result.body);
      await expectUnchanged(p);
    }
  });

  test('a patch may not change the id', async () => {
    const p = await createOk(patient());
    await patchRejected(p, [{ op: 'replace', path: '/id', value: unique('other') }]);
  });

  test('an operation on a missing path, or an unknown op, is rejected', async () => {
    const p = await createOk(patient());
    await patchRejected(p, [{ op: 'replace', path: '/maritalStatus/text', value: 'x' }]);
    await patchRejected(p, [{ op: 'remove', path: '/name/5' }]);
    await patchRejected(p, [{ op: 'frobnicate', path: '/gender' }]);
  });

  test('If-Match: a stale version answers 412 and changes nothing; the current version applies', async () => {
    const v1 = await createOk(patient());
    const v2 = await patchOk(v1, [{ op: 'replace', path: '/gender', value: 'male' }]);
    const ops = [{ op: 'replace', path: '/gender', value: 'unknown' }];
    const stale = await patch(v2, ops, { ...JSON_PATCH, 'If-Match': `W/"${v1.meta?.versionId}"` });
    expect(stale.status).toBe(412);
    expectOutcome(stale.body);
    await expectUnchanged(v2);

    const current = await patch(v2, ops, { ...JSON_PATCH, 'If-Match': `W/"${v2.meta?.versionId}"` });
    expect(current.status).toBe(200);
    expect((current.body as Patient).gender).toBe('unknown');
  });

  test('PATCH of a deleted resource answers 410; of an unknown id 404', async () => {
    const p = await createOk(patient());
    expect((await t.server.fhir(`Patient/${p.id}`, { method: 'DELETE' })).status).toBe(200);
    const ops = [{ op: 'replace', path: '/gender', value: 'male' }];
    const gone = await patch(p, ops, JSON_PATCH);
    expect(gone.status).toBe(410);
    expectOutcome(gone.body);
    expect((await t.server.fhir(`Patient/${p.id}`)).status).toBe(410);

    const missing = await patch({ resourceType: 'Patient', id: unique('missing') }, ops, JSON_PATCH);
    expect(missing.status).toBe(404);
    expectOutcome(missing.body);
  });

  test('a body that is not an array of operations is rejected', async () => {
    const p = await createOk(patient());
    await patchRejected(p, { op: 'replace', path: '/gender', value: 'male' });
    await patchRejected(p, '"replace"');
    await patchRejected(p, 'not json at all');
  });
});
