import type { Binary, DocumentReference, OperationOutcome } from '@medplum/fhirtypes';
import { randomUUID } from 'node:crypto';
import { describe, expect, test } from 'vitest';
import { FHIR_JSON, startTestServer, useTestServer } from './harness.ts';

const t = useTestServer();

const PDF_BYTES = Buffer.concat([Buffer.from('%PDF-1.4\n'), Buffer.from([0x00, 0xff, 0x10, 0x80]), Buffer.from('\n%%EOF')]);

describe('Binary', () => {
  test('raw upload keeps the bytes and the Content-Type; the created Binary carries a fetchable url', async () => {
    const res = await t.server.fhir('Binary', { method: 'POST', headers: { 'Content-Type': 'application/pdf' }, body: PDF_BYTES });
    expect(res.status).toBe(201);
    const binary = (await res.json()) as Binary & { url: string };
    expect(binary.resourceType).toBe('Binary');
    expect(binary.contentType).toBe('application/pdf');
    expect(binary.data).toBeUndefined();
    expect(binary.url).toMatch(new RegExp(`^${t.server.baseUrl}storage/${binary.id}/${binary.meta?.versionId}\\?Expires=\\d+&Signature=`));

    const raw = await t.server.fhir(`Binary/${binary.id}`);
    expect(raw.headers.get('content-type')).toBe('application/pdf');
    expect(Buffer.from(await raw.arrayBuffer())).toEqual(PDF_BYTES);

    // the signed URL needs no credentials
    const viaUrl = await fetch(binary.url);
    expect(viaUrl.status).toBe(200);
    expect(Buffer.from(await viaUrl.arrayBuffer())).toEqual(PDF_BYTES);
  });

  test('a tampered or expired signature is refused', async () => {
    const binary = await t.medplum.createBinary({ data: 'hello', contentType: 'text/plain' });
    const url = new URL(binary.url as string);
    const signature = url.searchParams.get('Signature') as string;
    // change the first character (to one it is not: 'x' alone would leave 1 in 64 signatures intact)
    url.searchParams.set('Signature', (signature[0] === 'x' ? 'y' : 'x') + signature.slice(1));
    expect((await fetch(url)).status).toBe(403);
    url.searchParams.set('Expires', '1000');
    expect((await fetch(url)).status).toBe(403);
  });

  test('Accept: application/fhir+json returns the Binary resource with base64 data', async () => {
    const binary = await t.medplum.createBinary({ data: 'Καλημέρα', contentType: 'text/plain; charset=utf-8' });
    const res = await t.server.fhir(`Binary/${binary.id}`, { headers: { Accept: 'application/fhir+json' } });
    const json = (await res.json()) as Binary;
    expect(Buffer.from(json.data as string, 'base64').toString('utf8')).toBe('Καλημέρα');
    expect(json.contentType).toBe('text/plain; charset=utf-8');
  });

  test('a Binary posted as FHIR JSON stores its data the same way', async () => {
    const data = Buffer.from('a,b\n1,2\n').toString('base64');
    const res = await t.server.fhir('Binary', { method: 'POST', headers: FHIR_JSON, body: JSON.stringify({ resourceType: 'Binary', contentType: 'text/csv', data }) });
    expect(res.status).toBe(201);
    const binary = (await res.json()) as Binary;
    const raw = await t.server.fhir(`Binary/${binary.id}`);
    expect(raw.headers.get('content-type')).toBe('text/csv');
    expect(await raw.text()).toBe('a,b\n1,2\n');
  });

  test('PUT replaces the content; each version keeps its own bytes', async () => {
    const first = await t.medplum.createBinary({ data: 'version one', contentType: 'text/plain' });
    const res = await t.server.fhir(`Binary/${first.id}`, { method: 'PUT', headers: { 'Content-Type': 'text/plain' }, body: 'version two' });
    expect(res.status).toBe(200);
    expect(await (await t.server.fhir(`Binary/${first.id}`)).text()).toBe('version two');
    expect(await (await t.server.fhir(`Binary/${first.id}/_history/${first.meta?.versionId}`)).text()).toBe('version one');
  });

  test('attachment URLs: stored as Binary/{id}, returned as signed URLs', async () => {
    const attachment = await t.medplum.createAttachment({ data: PDF_BYTES, contentType: 'application/pdf', filename: 'ecg.pdf' });
    expect(attachment.url).toContain('/storage/');
    const doc = await t.medplum.createResource<DocumentReference>({
      resourceType: 'DocumentReference',
      status: 'current',
      content: [{ attachment }],
    });
    const binaryId = new URL(attachment.url as string).pathname.split('/')[2]; // /storage/{id}/{versionId}
    const { rows } = await t.server.services.pool.query<{ content: string }>(
      `SELECT content FROM resource WHERE resource_type = 'DocumentReference' AND id = $1`,
      [doc.id]
    );
    expect(JSON.parse(rows[0].content).content[0].attachment.url).toBe(`Binary/${binaryId}`);
    const read = await t.medplum.readResource('DocumentReference', doc.id as string);
    const url = read.content[0].attachment.url as string;
    expect(url).toMatch(/\/storage\/.+Signature=/);
    expect(Buffer.from(await (await fetch(url)).arrayBuffer())).toEqual(PDF_BYTES);
  });

  test('an oversized raw upload is refused and nothing is stored', async () => {
    const small = await startTestServer({ MAX_BINARY_BYTES: '1024' });
    try {
      const before = await small.rowCounts();
      const res = await small.fhir('Binary', { method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body: Buffer.alloc(4096) });
      expect(res.status).toBe(413);
      expect(((await res.json()) as OperationOutcome).resourceType).toBe('OperationOutcome');
      expect(await small.rowCounts()).toEqual(before);
    } finally {
      await small.stop();
    }
  });

  test('each PUT of new bytes makes a new version, even when the metadata is the same', async () => {
    const first = await t.medplum.createBinary({ data: 'FIRST', contentType: 'text/plain' });
    for (const body of ['FIFTH', 'SIXTH']) {
      const res = await t.server.fhir(`Binary/${first.id}`, { method: 'PUT', headers: { 'Content-Type': 'text/plain' }, body });
      expect(res.status).toBe(200);
      expect(await (await t.server.fhir(`Binary/${first.id}`)).text()).toBe(body);
    }
  });

  test('raw PUT: If-Match in any form is checked; a PUT to a new id creates (201)', async () => {
    const binary = await t.medplum.createBinary({ data: 'x', contentType: 'text/plain' });
    for (const ifMatch of ['"wrong"', 'W/"wrong"', 'wrong']) {
      const res = await t.server.fhir(`Binary/${binary.id}`, { method: 'PUT', headers: { 'Content-Type': 'text/plain', 'If-Match': ifMatch }, body: 'y' });
      expect(res.status).toBe(412);
    }
    expect(await (await t.server.fhir(`Binary/${binary.id}`)).text()).toBe('x');
    const fresh = await t.server.fhir(`Binary/new-${binary.id}`, { method: 'PUT', headers: { 'Content-Type': 'text/plain' }, body: 'z' });
    expect(fresh.status).toBe(201);
  });

  test('an empty upload is a Binary with no bytes', async () => {
    const res = await t.server.fhir('Binary', { method: 'POST', headers: { 'Content-Type': 'text/plain' }, body: '' });
    expect(res.status).toBe(201);
    const binary = (await res.json()) as Binary;
    const raw = await t.server.fhir(`Binary/${binary.id}`);
    expect(raw.status).toBe(200);
    expect((await raw.arrayBuffer()).byteLength).toBe(0);
  });

  test('JSON Binary data must be valid base64', async () => {
    const before = await t.server.rowCounts();
    const res = await t.server.fhir('Binary', { method: 'POST', headers: FHIR_JSON, body: JSON.stringify({ resourceType: 'Binary', contentType: 'text/plain', data: 'not base64!' }) });
    expect(res.status).toBe(400);
    expect(await t.server.rowCounts()).toEqual(before);
  });

  test('uploaded HTML is served so that it cannot run as a page of this origin', async () => {
    const html = await t.medplum.createBinary({ data: '<script>alert(1)</script>', contentType: 'text/html' });
    for (const res of [await t.server.fhir(`Binary/${html.id}`), await fetch(html.url as string)]) {
      expect(res.headers.get('content-security-policy')).toContain('sandbox');
      expect(res.headers.get('x-content-type-options')).toBe('nosniff');
      expect(res.headers.get('content-disposition')).toBe('attachment');
    }
  });

  test('only url elements of attachments are rewritten (not Bundle.entry.request.url)', async () => {
    const binary = await t.medplum.createBinary({ data: 'x', contentType: 'text/plain' });
    const history = (await (await t.server.fhir(`Binary/${binary.id}/_history`)).json()) as { entry: { request: { url: string } }[] };
    expect(history.entry[0].request.url).toBe('Binary');
  });

  test('signed URLs are issued only for Binaries the reader may read', async () => {
    const binary = await t.medplum.createBinary({ data: 'secret', contentType: 'text/plain' });
    const other = t.server.services.repo({ projectId: randomUUID(), readProjects: [], author: { reference: 'system' } });
    expect(await other.readableBinaries([binary.id as string])).toEqual(new Map());
    expect(await t.server.services.auth.directory.repo(t.server.projectId).readableBinaries([binary.id as string])).toEqual(new Map([[binary.id, binary.meta?.versionId]]));
    const doc = { resourceType: 'DocumentReference', content: [{ attachment: { contentType: 'text/plain', url: `Binary/${binary.id}` } }] };
    expect(t.server.services.attachments.toFetchable(structuredClone(doc), new Map()).content[0].attachment.url).toBe(`Binary/${binary.id}`);
  });

  test('reading an unknown Binary is 404; a deleted one 410', async () => {
    expect((await t.server.fhir('Binary/does-not-exist')).status).toBe(404);
    const binary = await t.medplum.createBinary({ data: 'x', contentType: 'text/plain' });
    await t.medplum.deleteResource('Binary', binary.id as string);
    expect((await t.server.fhir(`Binary/${binary.id}`)).status).toBe(410);
    expect((await fetch(binary.url as string)).status).toBe(404);
  });
});
