import type { Bundle, Observation, OperationOutcome, Patient } from '@medplum/fhirtypes';
import { describe, expect, test } from 'vitest';
import { FHIR_JSON, unique, useTestServer } from './harness.ts';

const t = useTestServer();

const SYSTEM = 'urn:oid:2.16.196.1.1';

function patient(value: string): Patient {
  return { resourceType: 'Patient', identifier: [{ system: SYSTEM, value }], name: [{ family: 'Georgiou' }] };
}

async function countByIdentifier(value: string): Promise<number> {
  const bundle = await t.medplum.search('Patient', { identifier: `${SYSTEM}|${value}`, _total: 'accurate' });
  return bundle.total as number;
}

describe('conditional create (If-None-Exist)', () => {
  test('creates once, then answers 200 with the existing resource', async () => {
    const value = unique('cc');
    const first = await t.server.fhir('Patient', {
      method: 'POST',
      headers: { ...FHIR_JSON, 'If-None-Exist': `identifier=${SYSTEM}|${value}` },
      body: JSON.stringify(patient(value)),
    });
    expect(first.status).toBe(201);
    const created = (await first.json()) as Patient;
    const second = await t.server.fhir('Patient', {
      method: 'POST',
      headers: { ...FHIR_JSON, 'If-None-Exist': `identifier=${SYSTEM}|${value}` },
      body: JSON.stringify(patient(value)),
    });
    expect(second.status).toBe(200);
    expect(((await second.json()) as Patient).id).toBe(created.id);
  });

  test('many parallel conditional creates with the same identifier make exactly one resource, without errors', async () => {
    const value = unique('race');
    const attempts = 40;
    const results = await Promise.all(
      Array.from({ length: attempts }, () =>
        t.server.fhir('Patient', {
          method: 'POST',
          headers: { ...FHIR_JSON, 'If-None-Exist': `identifier=${SYSTEM}|${value}` },
          body: JSON.stringify(patient(value)),
        })
      )
    );
    const statuses = results.map((r) => r.status).sort();
    expect(statuses.filter((s) => s === 201)).toHaveLength(1);
    expect(statuses.filter((s) => s === 200)).toHaveLength(attempts - 1);
    const ids = new Set(await Promise.all(results.map(async (r) => ((await r.json()) as Patient).id)));
    expect(ids.size).toBe(1);
    expect(await countByIdentifier(value)).toBe(1);
  });

  test('parallel MedplumClient.createResourceIfNoneExist calls agree on one resource', async () => {
    const value = unique('mc');
    const created = await Promise.all(
      Array.from({ length: 20 }, () => t.medplum.createResourceIfNoneExist(patient(value), `identifier=${SYSTEM}|${value}`))
    );
    expect(new Set(created.map((p) => p.id)).size).toBe(1);
  });

  test('criteria matching several resources answer 412 and create nothing', async () => {
    const family = unique('Twin');
    await t.medplum.createResource({ resourceType: 'Patient', name: [{ family }] });
    await t.medplum.createResource({ resourceType: 'Patient', name: [{ family }] });
    const before = await t.server.rowCounts();
    const res = await t.server.fhir('Patient', {
      method: 'POST',
      headers: { ...FHIR_JSON, 'If-None-Exist': `name=${family}` },
      body: JSON.stringify({ resourceType: 'Patient', name: [{ family }] }),
    });
    expect(res.status).toBe(412);
    expect(await t.server.rowCounts()).toEqual(before);
  });
});

describe('conditional update, delete and patch', () => {
  test('PUT Type?criteria creates when nothing matches and updates the match afterwards', async () => {
    const value = unique('cu');
    const created = await t.medplum.upsertResource(patient(value), { identifier: `${SYSTEM}|${value}` });
    const updated = await t.medplum.upsertResource({ ...patient(value), gender: 'male' }, { identifier: `${SYSTEM}|${value}` });
    expect(updated.id).toBe(created.id);
    expect(updated.gender).toBe('male');
    expect(await countByIdentifier(value)).toBe(1);
  });

  test('parallel conditional updates on a new identifier create one resource', async () => {
    const value = unique('cur');
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        t.server.fhir(`Patient?identifier=${encodeURIComponent(`${SYSTEM}|${value}`)}`, {
          method: 'PUT',
          headers: FHIR_JSON,
          body: JSON.stringify({ ...patient(value), birthDate: `19${String(50 + i)}-01-01` }),
        })
      )
    );
    expect(results.map((r) => r.status).filter((s) => s >= 400)).toEqual([]);
    expect(await countByIdentifier(value)).toBe(1);
  });

  test('DELETE Type?criteria deletes the single match; several matches answer 412', async () => {
    const value = unique('cd');
    const p = await t.medplum.createResource(patient(value));
    const res = await t.server.fhir(`Patient?identifier=${encodeURIComponent(`${SYSTEM}|${value}`)}`, { method: 'DELETE' });
    expect(res.status).toBe(200);
    expect((await t.server.fhir(`Patient/${p.id}`)).status).toBe(410);

    const family = unique('Many');
    await t.medplum.createResource({ resourceType: 'Patient', name: [{ family }] });
    await t.medplum.createResource({ resourceType: 'Patient', name: [{ family }] });
    expect((await t.server.fhir(`Patient?name=${family}`, { method: 'DELETE' })).status).toBe(412);
  });

  test('PATCH Type?criteria patches the single match', async () => {
    const value = unique('cp');
    const p = await t.medplum.createResource(patient(value));
    const res = await t.server.fhir(`Patient?identifier=${encodeURIComponent(`${SYSTEM}|${value}`)}`, {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/json-patch+json' },
      body: JSON.stringify([{ op: 'add', path: '/gender', value: 'female' }]),
    });
    expect(res.status).toBe(200);
    expect((await t.medplum.readResource('Patient', p.id as string)).gender).toBe('female');
  });
});

describe('conditional references and conditional entries inside a transaction', () => {
  test('a reference written as Patient?identifier=... is stored as Patient/{id}', async () => {
    const value = unique('ref');
    const p = await t.medplum.createResource(patient(value));
    const obs = await t.medplum.createResource<Observation>({
      resourceType: 'Observation',
      status: 'final',
      code: { text: 'heart rate' },
      subject: { reference: `Patient?identifier=${SYSTEM}|${value}` },
    });
    expect(obs.subject?.reference).toBe(`Patient/${p.id}`);
  });

  test('a conditional reference that matches nothing is a 400 and nothing is written', async () => {
    const before = await t.server.rowCounts();
    const res = await t.server.fhir('Observation', {
      method: 'POST',
      headers: FHIR_JSON,
      body: JSON.stringify({
        resourceType: 'Observation',
        status: 'final',
        code: { text: 'x' },
        subject: { reference: `Patient?identifier=${SYSTEM}|${unique('none')}` },
      }),
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as OperationOutcome).issue[0].details?.text).toContain('matched no resource');
    expect(await t.server.rowCounts()).toEqual(before);
  });

  test('a transaction resolves a conditional reference to a patient created earlier in the same transaction', async () => {
    const value = unique('tx');
    const bundle: Bundle = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        { fullUrl: 'urn:uuid:0c3b1f66-2a8e-4f7e-9f55-5d0e0c1a0001', resource: patient(value), request: { method: 'POST', url: 'Patient', ifNoneExist: `identifier=${SYSTEM}|${value}` } },
        {
          resource: { resourceType: 'Observation', status: 'final', code: { text: 'ECG' }, subject: { reference: `Patient?identifier=${SYSTEM}|${value}` } },
          request: { method: 'POST', url: 'Observation' },
        },
      ],
    };
    const res = await t.server.fhir('', { method: 'POST', headers: FHIR_JSON, body: JSON.stringify(bundle) });
    expect(res.status).toBe(200);
    const response = (await res.json()) as Bundle;
    const patientId = response.entry?.[0].response?.location?.split('/')[1];
    const obsLocation = response.entry?.[1].response?.location as string;
    const obs = await t.medplum.readReference<Observation>({ reference: obsLocation.split('/_history')[0] });
    expect(obs.subject?.reference).toBe(`Patient/${patientId}`);
  });

  test('parallel transactions with the same conditional create make one patient', async () => {
    const value = unique('txrace');
    const bundle = (): Bundle => ({
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        { fullUrl: 'urn:uuid:0c3b1f66-2a8e-4f7e-9f55-5d0e0c1a0002', resource: patient(value), request: { method: 'POST', url: 'Patient', ifNoneExist: `identifier=${SYSTEM}|${value}` } },
        {
          resource: { resourceType: 'Observation', status: 'final', code: { text: 'BP' }, subject: { reference: 'urn:uuid:0c3b1f66-2a8e-4f7e-9f55-5d0e0c1a0002' } },
          request: { method: 'POST', url: 'Observation' },
        },
      ],
    });
    const results = await Promise.all(
      Array.from({ length: 12 }, () => t.server.fhir('', { method: 'POST', headers: FHIR_JSON, body: JSON.stringify(bundle()) }))
    );
    expect(results.map((r) => r.status)).toEqual(Array(12).fill(200));
    expect(await countByIdentifier(value)).toBe(1);
    // every Observation points at the one patient
    const [only] = await t.medplum.searchResources('Patient', { identifier: `${SYSTEM}|${value}` });
    const observations = await t.medplum.searchResources('Observation', { subject: `Patient/${only.id}`, _count: '100' });
    expect(observations).toHaveLength(12);
  });
});

describe('deadlocks', () => {
  test('transactions that update the same resources in opposite order all succeed, without deadlocks', async () => {
    const [a, b] = await Promise.all([t.medplum.createResource(patient(unique('dl'))), t.medplum.createResource(patient(unique('dl')))]);
    const update = (p: Patient, gender: Patient['gender']) => ({ resource: { ...p, meta: undefined, gender }, request: { method: 'PUT' as const, url: `Patient/${p.id}` } });
    const deadlocks = async (): Promise<number> => {
      const { rows } = await t.server.services.pool.query<{ n: string }>('SELECT deadlocks AS n FROM pg_stat_database WHERE datname = current_database()');
      return Number(rows[0].n);
    };
    const before = await deadlocks();
    const genders = ['male', 'female', 'other', 'unknown'] as const;
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) => {
        const g = genders[i % 4];
        const entry = i % 2 === 0 ? [update(a, g), update(b, g)] : [update(b, g), update(a, g)];
        return t.server.fhir('', { method: 'POST', headers: FHIR_JSON, body: JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry }) });
      })
    );
    expect(results.map((r) => r.status)).toEqual(Array(8).fill(200));
    // rows are locked up front in one order, so Postgres never had to break a deadlock
    // (its statistics are updated asynchronously: give them a moment)
    await new Promise((r) => setTimeout(r, 1000));
    expect((await deadlocks()) - before).toBe(0);
  });
});
