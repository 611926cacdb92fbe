/**
 * The FHIR workloads against the ermis server, each with the bench client's bearer token: the CRUD
 * mix, Blaze's two-entry transaction, the Synthea-shaped import, the search mix, read by id.
 */
import { randomUUID } from 'node:crypto';
import type { Bundle, BundleEntry, Resource } from '@medplum/fhirtypes';
import pg from 'pg';
import { changed, CRUD_TYPES, crudResource } from '../lib/crud-resources.ts';
import type { CrudType } from '../lib/crud-resources.ts';
import { HttpTarget } from '../lib/http.ts';
import { measure } from '../lib/measure.ts';
import type { CpuGroups } from '../lib/processes.ts';
import type { Row } from '../lib/results.ts';
import { Rng } from '../lib/rng.ts';
import { SEARCH_PARAMS, searchRequest } from '../lib/search-mix.ts';
import { patientBundle, sharedResources } from '../lib/synthea-bundles.ts';
import type { SharedReferences } from '../lib/synthea-bundles.ts';
import type { ModeConfig } from '../run.ts';

export interface FhirTarget {
  fhirUrl: string;
  token: string;
  groups: CpuGroups;
}

export async function crudMix(target: FhirTarget, mode: ModeConfig): Promise<Row> {
  const connections = mode.crudConnections;
  const http = new HttpTarget(target.fhirUrl, connections, target.token);
  let n = 0;
  try {
    return await measure({
      id: 'crud',
      kind: 'ermis',
      workload: 'CRUD mix (crud.js): create, read, update, delete of 9 linked resources',
      connections,
      unit: 'req/s',
      groups: target.groups,
      load: {
        workers: connections,
        warmupMs: mode.warmupMs,
        durationMs: mode.windowMs,
        iteration: async (_w, timed) => {
          const made = new Map<CrudType, Resource>();
          const ref = (t: CrudType): string => `${t}/${made.get(t)?.id}`;
          const iteration = n++;
          for (const type of CRUD_TYPES) {
            made.set(type, await timed(`create ${type}`, () => http.json<Resource>('POST', type, crudResource(type, ref, iteration), [201])));
          }
          for (const type of CRUD_TYPES) {
            made.set(type, await timed(`read ${type}`, () => http.json<Resource>('GET', ref(type), undefined, [200])));
          }
          for (const type of CRUD_TYPES) {
            const resource = made.get(type) as Resource;
            await timed(`update ${type}`, () => http.request('PUT', ref(type), changed(resource), [200]));
          }
          for (const type of [...CRUD_TYPES].reverse()) {
            await timed(`delete ${type}`, () => http.request('DELETE', ref(type), undefined, [200, 204]));
          }
        },
      },
    });
  } finally {
    await http.close();
  }
}

/** Blaze's load test: a transaction of a Patient and an Observation referencing it by `urn:uuid`. */
export async function blazeTransaction(target: FhirTarget, mode: ModeConfig, connections: number): Promise<Row> {
  const http = new HttpTarget(target.fhirUrl, connections, target.token);
  try {
    return await measure({
      id: connections === 1 ? 'tx-1' : connections === 8 ? 'tx-8' : 'tx-32',
      kind: 'ermis',
      workload: 'transaction: Patient + Observation with a urn:uuid reference (Blaze transaction.js)',
      connections,
      unit: 'tx/s',
      groups: target.groups,
      load: {
        workers: connections,
        warmupMs: mode.warmupMs,
        durationMs: mode.txWindowMs,
        iteration: (_w, timed) => timed('transaction', () => http.request('POST', '', twoEntryTransaction(), [200])).then(() => undefined),
      },
    });
  } finally {
    await http.close();
  }
}

function twoEntryTransaction(): Bundle {
  const patient = `urn:uuid:${randomUUID()}`;
  return {
    resourceType: 'Bundle',
    type: 'transaction',
    entry: [
      { fullUrl: patient, resource: { resourceType: 'Patient', gender: 'female', birthDate: '1980-05-17' }, request: { method: 'POST', url: 'Patient' } },
      {
        fullUrl: `urn:uuid:${randomUUID()}`,
        resource: {
          resourceType: 'Observation',
          status: 'final',
          code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
          subject: { reference: patient },
          effectiveDateTime: '2026-11-21T10:00:00Z',
          valueQuantity: { value: 70, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
        },
        request: { method: 'POST', url: 'Observation' },
      },
    ],
  };
}

/** Creates the shared Organizations and Practitioners the patient bundles point at. */
export async function createSharedResources(target: FhirTarget): Promise<SharedReferences> {
  const http = new HttpTarget(target.fhirUrl, 4, target.token);
  try {
    const { organizations, practitioners } = sharedResources();
    const create = async (r: Resource): Promise<string> => `${r.resourceType}/${(await http.json<Resource>('POST', r.resourceType, r, [201])).id}`;
    return { organizations: await Promise.all(organizations.map(create)), practitioners: await Promise.all(practitioners.map(create)) };
  } finally {
    await http.close();
  }
}

/**
 * The import: `mode.importPatients` Synthea-shaped transaction Bundles posted by 8 connections
 * (bounded by `mode.importMaxMs`). Throughput counts the resources of committed Bundles.
 */
export async function syntheaImport(target: FhirTarget, mode: ModeConfig, shared: SharedReferences): Promise<Row> {
  const connections = mode.importConnections;
  const http = new HttpTarget(target.fhirUrl, connections, target.token);
  let nextPatient = 0;
  let resources = 0;
  let bundles = 0;
  try {
    const row = await measure({
      id: 'import',
      kind: 'ermis',
      workload: 'import: Synthea-shaped patient transaction Bundles (POST /, fresh ids)',
      connections,
      unit: 'resources/s',
      groups: target.groups,
      load: {
        workers: connections,
        warmupMs: 0,
        durationMs: mode.importMaxMs,
        maxIterations: mode.importPatients,
        iteration: async (_w, timed) => {
          const bundle = patientBundle(nextPatient++, mode.encountersPerPatient, shared);
          const response = await timed('transaction Bundle', () => http.json<Bundle>('POST', '', bundle, [200]));
          const entries = (response.entry ?? []) as BundleEntry[];
          if (entries.length !== bundle.entry?.length || entries.some((e) => !e.response?.status?.startsWith('201'))) {
            throw new Error(`transaction answered ${entries.length} entries for ${bundle.entry?.length}`);
          }
          resources += entries.length;
          bundles++;
        },
      },
      throughput: (load) => resources / load.seconds,
    });
    row.note = `${bundles.toLocaleString('en')} patients, ${resources.toLocaleString('en')} resources (${(resources / Math.max(1, bundles)).toFixed(0)} per Bundle)`;
    return row;
  } finally {
    await http.close();
  }
}

export async function searchMix(target: FhirTarget, mode: ModeConfig, dataNote: string): Promise<Row> {
  const connections = mode.searchConnections;
  const http = new HttpTarget(target.fhirUrl, connections, target.token);
  const rng = new Rng(5);
  try {
    return await measure({
      id: 'search-mix',
      kind: 'ermis',
      workload: 'search mix (search.js): string (:contains), date (all prefixes), token; _count=20',
      connections,
      unit: 'req/s',
      groups: target.groups,
      note: dataNote,
      load: {
        workers: connections,
        warmupMs: mode.warmupMs,
        durationMs: mode.windowMs,
        iteration: async (_w, timed) => {
          for (const spec of SEARCH_PARAMS) {
            const { op, path } = searchRequest(spec, rng);
            await timed(op, () => http.request('GET', path, undefined, [200]));
          }
        },
      },
    });
  } finally {
    await http.close();
  }
}

/** Type/id pairs of the project's current resources (AuditEvents aside), at most `limit`, in random order. */
export async function resourceIds(databaseUrl: string, limit: number, type?: string): Promise<string[]> {
  const db = new pg.Client({ connectionString: databaseUrl });
  await db.connect();
  try {
    const { rows } = await db.query<{ ref: string }>(
      `SELECT resource_type || '/' || id AS ref FROM resource
        WHERE NOT deleted AND resource_type = ANY($1) ORDER BY random() LIMIT $2`,
      [type ? [type] : ['Patient', 'Encounter', 'Observation', 'DiagnosticReport', 'Condition', 'Procedure', 'MedicationRequest', 'Immunization', 'Claim', 'ExplanationOfBenefit'], limit]
    );
    return rows.map((r) => r.ref);
  } finally {
    await db.end();
  }
}

export async function readById(target: FhirTarget, mode: ModeConfig, refs: string[], id: 'read-by-id' | 'scale-read', what: string): Promise<Row> {
  const connections = mode.readConnections;
  const http = new HttpTarget(target.fhirUrl, connections, target.token);
  const rng = new Rng(9);
  try {
    return await measure({
      id,
      kind: 'ermis',
      workload: `read by id: GET {type}/{id} ${what}`,
      connections,
      unit: 'req/s',
      groups: target.groups,
      note: `random over ${refs.length.toLocaleString('en')} ids`,
      load: {
        workers: connections,
        warmupMs: mode.warmupMs,
        durationMs: mode.windowMs,
        iteration: (_w, timed) => timed('read', () => http.request('GET', rng.pick(refs), undefined, [200])).then(() => undefined),
      },
    });
  } finally {
    await http.close();
  }
}

/** `Observation?subject=…&code=…&_sort=-date` over the 1M-Observation data set, one request at a time (latency). */
export async function scaleSearch(target: FhirTarget, databaseUrl: string, mode: ModeConfig, dataNote: string): Promise<Row> {
  const db = new pg.Client({ connectionString: databaseUrl });
  await db.connect();
  let pairs: { subject: string; code: string }[];
  try {
    // (patient, code) pairs that exist, drawn from a sample of the Observations.
    const { rows } = await db.query<{ content: string }>(
      `SELECT content FROM resource TABLESAMPLE SYSTEM (1) WHERE resource_type = 'Observation' AND NOT deleted LIMIT 2000`
    );
    pairs = rows.map((r) => JSON.parse(r.content) as { subject?: { reference?: string }; code?: { coding?: { system?: string; code?: string }[] } })
      .filter((o) => o.subject?.reference && o.code?.coding?.[0]?.code)
      .map((o) => ({ subject: o.subject?.reference as string, code: `${o.code?.coding?.[0]?.system}|${o.code?.coding?.[0]?.code}` }));
  } finally {
    await db.end();
  }
  if (!pairs.length) {
    throw new Error('no Observations to draw search values from');
  }
  const http = new HttpTarget(target.fhirUrl, 1, target.token);
  const rng = new Rng(3);
  try {
    return await measure({
      id: 'scale-search',
      kind: 'ermis',
      workload: 'search at 1M Observations: Observation?subject={patient}&code={loinc}&_sort=-date',
      connections: 1,
      unit: 'req/s',
      groups: target.groups,
      note: dataNote,
      load: {
        workers: 1,
        warmupMs: mode.warmupMs,
        durationMs: mode.windowMs,
        maxIterations: mode.scaleQueries,
        iteration: (_w, timed) => {
          const p = rng.pick(pairs);
          return timed('search', () => http.request('GET', `Observation?subject=${encodeURIComponent(p.subject)}&code=${encodeURIComponent(p.code)}&_sort=-date`, undefined, [200])).then(() => undefined);
        },
      },
    });
  } finally {
    await http.close();
  }
}
