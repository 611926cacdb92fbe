import { OperationOutcomeError } from '@medplum/core';
import type { Bundle, OperationOutcome, Patient } from '@medplum/fhirtypes';
import { describe, expect, test } from 'vitest';
import { FHIR_JSON, startTestServer, unique, useTestServer } from './harness.ts';

const t = useTestServer();

function newPatient(family = unique('fam')): Patient {
  return { resourceType: 'Patient', name: [{ family, given: ['Eleni'] }], birthDate: '1980-02-29', gender: 'female' };
}

describe('create, read, update, delete', () => {
  test('create assigns id, versionId and lastUpdated; read returns the same resource', async () => {
    const created = await t.medplum.createResource(newPatient());
    expect(created.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(created.meta?.versionId).toMatch(/^[0-9a-f-]{36}$/);
    expect(Date.parse(created.meta?.lastUpdated as string)).toBeGreaterThan(Date.now() - 60_000);
    const read = await t.medplum.readResource('Patient', created.id as string);
    expect(read).toEqual(created);
  });

  test('create ignores a client-supplied id and meta.versionId', async () => {
    const created = await t.medplum.createResource({ ...newPatient(), id: 'client-chosen', meta: { versionId: 'v1' } });
    expect(created.id).not.toBe('client-chosen');
    expect(created.meta?.versionId).not.toBe('v1');
  });

  test('response headers: 201, Location with version, ETag, Last-Modified', async () => {
    const res = await t.server.fhir('Patient', { method: 'POST', headers: FHIR_JSON, body: JSON.stringify(newPatient()) });
    expect(res.status).toBe(201);
    const body = (await res.json()) as Patient;
    expect(res.headers.get('location')).toBe(`${t.server.fhirUrl}Patient/${body.id}/_history/${body.meta?.versionId}`);
    expect(res.headers.get('etag')).toBe(`W/"${body.meta?.versionId}"`);
    expect(new Date(res.headers.get('last-modified') as string).getTime()).toBe(
      Math.floor(Date.parse(body.meta?.lastUpdated as string) / 1000) * 1000
    );
    expect(res.headers.get('content-type')).toBe('application/fhir+json; charset=utf-8');
  });

  test('update makes a new version; vread returns each version', async () => {
    const v1 = await t.medplum.createResource(newPatient());
    const v2 = await t.medplum.updateResource({ ...v1, gender: 'other' });
    expect(v2.meta?.versionId).not.toBe(v1.meta?.versionId);
    expect(v2.gender).toBe('other');
    const old = await t.medplum.readVersion('Patient', v1.id as string, v1.meta?.versionId as string);
    expect(old.gender).toBe('female');
    const current = await t.medplum.readVersion('Patient', v1.id as string, v2.meta?.versionId as string);
    expect(current.gender).toBe('other');
  });

  test('an update that changes nothing keeps the version', async () => {
    const v1 = await t.medplum.createResource(newPatient());
    const same = await t.medplum.updateResource({ ...v1 });
    expect(same.meta?.versionId).toBe(v1.meta?.versionId);
    const history = await t.medplum.readHistory('Patient', v1.id as string);
    expect(history.entry).toHaveLength(1);
  });

  test('If-Match with a stale version answers 412 and changes nothing', async () => {
    const v1 = await t.medplum.createResource(newPatient());
    const v2 = await t.medplum.updateResource({ ...v1, gender: 'male' });
    const res = await t.server.fhir(`Patient/${v1.id}`, {
      method: 'PUT',
      headers: { ...FHIR_JSON, 'If-Match': `W/"${v1.meta?.versionId}"` },
      body: JSON.stringify({ ...v1, gender: 'unknown' }),
    });
    expect(res.status).toBe(412);
    expect(((await res.json()) as OperationOutcome).resourceType).toBe('OperationOutcome');
    const current = await t.medplum.readResource('Patient', v1.id as string);
    expect(current.meta?.versionId).toBe(v2.meta?.versionId);
    expect(current.gender).toBe('male');

    const ok = await t.server.fhir(`Patient/${v1.id}`, {
      method: 'PUT',
      headers: { ...FHIR_JSON, 'If-Match': `W/"${v2.meta?.versionId}"` },
      body: JSON.stringify({ ...v2, gender: 'unknown' }),
    });
    expect(ok.status).toBe(200);
  });

  test('update as create with a client id (PUT to a new id)', async () => {
    const id = unique('pat');
    const res = await t.server.fhir(`Patient/${id}`, {
      method: 'PUT',
      headers: FHIR_JSON,
      body: JSON.stringify({ ...newPatient(), id }),
    });
    expect(res.status).toBe(201);
    expect(((await res.json()) as Patient).id).toBe(id);
  });

  test('parallel PUTs creating the same new id: one 201, the rest updates, no conflicts', async () => {
    const id = unique('race');
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        t.server.fhir(`Patient/${id}`, {
          method: 'PUT',
          headers: FHIR_JSON,
          body: JSON.stringify({ ...newPatient(), id, birthDate: `19${50 + i}-01-01` }),
        })
      )
    );
    const statuses = results.map((r) => r.status);
    expect(statuses.filter((s) => s === 201)).toHaveLength(1);
    expect(statuses.filter((s) => s === 200)).toHaveLength(9);
  });

  test('delete: read answers 410, vread of old versions still works, history shows the delete', async () => {
    const v1 = await t.medplum.createResource(newPatient());
    await t.medplum.deleteResource('Patient', v1.id as string);
    const res = await t.server.fhir(`Patient/${v1.id}`);
    expect(res.status).toBe(410);
    const outcome = (await res.json()) as OperationOutcome;
    expect(outcome.issue[0].code).toBe('deleted');
    const old = await t.medplum.readVersion('Patient', v1.id as string, v1.meta?.versionId as string);
    expect(old.id).toBe(v1.id);
    const history = await t.medplum.readHistory('Patient', v1.id as string);
    expect(history.entry?.map((e) => e.request?.method)).toEqual(['DELETE', 'POST']);
    expect(history.entry?.[0].resource).toBeUndefined();
    // a deleted resource is not found by search
    const found = await t.medplum.searchResources('Patient', { _id: v1.id as string });
    expect(found).toHaveLength(0);
    // deleting again is idempotent; deleting an unknown id is 404
    expect((await t.server.fhir(`Patient/${v1.id}`, { method: 'DELETE' })).status).toBe(200);
    expect((await t.server.fhir(`Patient/${unique('nope')}`, { method: 'DELETE' })).status).toBe(404);
  });

  test('read of an unknown id is 404 with an OperationOutcome; MedplumClient throws OperationOutcomeError', async () => {
    await expect(t.medplum.readResource('Patient', unique('missing'))).rejects.toThrow(OperationOutcomeError);
    const res = await t.server.fhir(`Patient/${unique('missing')}`);
    expect(res.status).toBe(404);
    expect(((await res.json()) as OperationOutcome).issue[0].code).toBe('not-found');
  });
});

describe('history', () => {
  test('instance history is newest first, with paging by _count and _offset', async () => {
    const v1 = await t.medplum.createResource(newPatient());
    let current = v1;
    for (const gender of ['male', 'other', 'unknown'] as const) {
      current = await t.medplum.updateResource({ ...current, gender });
    }
    const all = await t.medplum.readHistory('Patient', v1.id as string);
    expect(all.total).toBe(4);
    expect(all.entry?.map((e) => (e.resource as Patient).gender)).toEqual(['unknown', 'other', 'male', 'female']);
    const page = (await (await t.server.fhir(`Patient/${v1.id}/_history?_count=2&_offset=1`)).json()) as Bundle<Patient>;
    expect(page.entry?.map((e) => e.resource?.gender)).toEqual(['other', 'male']);
    // following next links walks every version exactly once
    const seen: string[] = [];
    let url: string | undefined = `${t.server.fhirUrl}Patient/${v1.id}/_history?_count=3`;
    while (url) {
      const bundle = (await (await fetch(url, { headers: t.server.authorization })).json()) as Bundle<Patient>;
      seen.push(...(bundle.entry ?? []).map((e) => e.resource?.gender as string));
      url = bundle.link?.find((l) => l.relation === 'next')?.url;
    }
    expect(seen).toEqual(['unknown', 'other', 'male', 'female']);
  });

  test('_since limits instance, type and system history', async () => {
    const v1 = await t.medplum.createResource(newPatient());
    await new Promise((r) => setTimeout(r, 20));
    const since = new Date().toISOString();
    const v2 = await t.medplum.updateResource({ ...v1, gender: 'male' });
    const instance = (await (await t.server.fhir(`Patient/${v1.id}/_history?_since=${since}`)).json()) as Bundle;
    expect(instance.entry?.map((e) => e.resource?.meta?.versionId)).toEqual([v2.meta?.versionId]);
    const type = (await (await t.server.fhir(`Patient/_history?_since=${since}&_count=1000`)).json()) as Bundle;
    expect(type.entry?.some((e) => e.resource?.meta?.versionId === v2.meta?.versionId)).toBe(true);
    expect(type.entry?.some((e) => e.resource?.meta?.versionId === v1.meta?.versionId)).toBe(false);
    expect(type.entry?.every((e) => e.resource === undefined || e.resource.resourceType === 'Patient')).toBe(true);
    const system = (await (await t.server.fhir(`_history?_since=${since}&_count=1000`)).json()) as Bundle;
    expect(system.type).toBe('history');
    expect(system.entry?.some((e) => e.resource?.meta?.versionId === v2.meta?.versionId)).toBe(true);
    expect((await t.server.fhir('_history?_since=not-a-date')).status).toBe(400);
  });
});

describe('response conventions', () => {
  test('Prefer: return=minimal answers with an empty body; return=OperationOutcome with the outcome', async () => {
    const minimal = await t.server.fhir('Patient', {
      method: 'POST',
      headers: { ...FHIR_JSON, Prefer: 'return=minimal' },
      body: JSON.stringify(newPatient()),
    });
    expect(minimal.status).toBe(201);
    expect(await minimal.text()).toBe('');
    expect(minimal.headers.get('location')).toContain('/Patient/');
    const outcome = await t.server.fhir('Patient', {
      method: 'POST',
      headers: { ...FHIR_JSON, Prefer: 'return=OperationOutcome' },
      body: JSON.stringify(newPatient()),
    });
    expect(((await outcome.json()) as OperationOutcome).resourceType).toBe('OperationOutcome');
  });

  test('_summary and _elements subset the resource and tag it SUBSETTED', async () => {
    const p = await t.medplum.createResource({ ...newPatient(), text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">x</div>' } });
    const elements = (await (await t.server.fhir(`Patient/${p.id}?_elements=birthDate`)).json()) as Patient;
    expect(elements.birthDate).toBe('1980-02-29');
    expect(elements.name).toBeUndefined();
    expect(elements.meta?.tag?.some((t) => t.code === 'SUBSETTED')).toBe(true);
    const summary = (await (await t.server.fhir(`Patient/${p.id}?_summary=true`)).json()) as Patient;
    expect(summary.name).toBeDefined();
    expect(summary.text).toBeUndefined();
    const data = (await (await t.server.fhir(`Patient/${p.id}?_summary=data`)).json()) as Patient;
    expect(data.text).toBeUndefined();
    expect(data.gender).toBe('female');
    const text = (await (await t.server.fhir(`Patient/${p.id}?_summary=text`)).json()) as Patient;
    expect(text.text?.status).toBe('generated');
    expect(text.gender).toBeUndefined();
    const count = (await (await t.server.fhir(`Patient?_id=${p.id}&_summary=count`)).json()) as Bundle;
    expect(count.total).toBe(1);
    expect(count.entry ?? []).toHaveLength(0);
  });

  test('_pretty indents; Accept application/json is honoured; gzip when asked', async () => {
    const p = await t.medplum.createResource(newPatient());
    const pretty = await t.server.fhir(`Patient/${p.id}?_pretty=true`);
    expect(await pretty.text()).toContain('\n  "resourceType"');
    const json = await t.server.fhir(`Patient/${p.id}`, { headers: { Accept: 'application/json' } });
    expect(json.headers.get('content-type')).toBe('application/json; charset=utf-8');
    const { request } = await import('node:http');
    const encoding = await new Promise<string | undefined>((resolve, reject) => {
      const req = request(`${t.server.fhirUrl}StructureDefinition/Patient`, { headers: { 'Accept-Encoding': 'gzip', ...t.server.authorization } }, (res) => {
        res.resume();
        resolve(res.headers['content-encoding']);
      });
      req.on('error', reject);
      req.end();
    });
    expect(encoding).toBe('gzip');
  });

  test('meta.project and meta.author are returned only with X-Medplum: extended', async () => {
    const p = await t.medplum.createResource(newPatient());
    const plain = (await (await t.server.fhir(`Patient/${p.id}`)).json()) as Patient;
    expect(plain.meta?.project).toBeUndefined();
    const extended = (await (await t.server.fhir(`Patient/${p.id}`, { headers: { 'X-Medplum': 'extended' } })).json()) as Patient;
    expect(extended.meta?.project).toBe(t.server.projectId);
    // the author is the signed-in admin's profile
    const me = await t.medplum.get('auth/me');
    expect(extended.meta?.author?.reference).toBe(me.profile.resourceType + '/' + me.profile.id);
  });
});

describe('health', () => {
  test('GET /healthcheck reports the server and the database, on Node 24', async () => {
    const res = await fetch(t.server.baseUrl + 'healthcheck');
    expect(res.status).toBe(200);
    const body = (await res.json()) as { ok: boolean; postgres: boolean; redis?: boolean; runtime: string };
    expect(body).toMatchObject({ ok: true, postgres: true });
    expect(body.redis).toBeUndefined();
    expect(Number(body.runtime.slice(1).split('.')[0])).toBeGreaterThanOrEqual(24);
  });

  test('with REDIS_URL the health check reports Redis; an unreachable Redis makes it 503', async () => {
    const withRedis = await startTestServer({ REDIS_URL: process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379' });
    const down = await startTestServer({ REDIS_URL: 'redis://127.0.0.1:1' });
    try {
      let body: { ok: boolean; redis?: boolean } = { ok: false };
      for (let i = 0; i < 20 && !body.redis; i++) {
        body = (await (await fetch(withRedis.baseUrl + 'healthcheck')).json()) as typeof body;
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(body).toMatchObject({ ok: true, redis: true });
      const res = await fetch(down.baseUrl + 'healthcheck');
      expect(res.status).toBe(503);
      expect(await res.json()).toMatchObject({ ok: false, postgres: true, redis: false });
    } finally {
      await withRedis.stop();
      await down.stop();
    }
  });
});
