import type pg from 'pg';
import { CY_ID_SYSTEM, MRN_SYSTEM, PERIOD_END, PERIOD_START } from './fake.ts';
import type { Rng } from './rng.ts';

/** The query shapes of the search-at-scale bench and the facts from the data set they draw values from. */

// ------------------------------------------------------------------ fixtures from the data set

export interface PatientFixture {
  id: string;
  family: string;
  given: string;
  mrn: string;
  cyId: string;
  /** the code of one of this patient's observations, picked at random */
  ownCode: string | undefined;
}

export interface Fixtures {
  patients: PatientFixture[];
  /** most frequent Observation codes, most frequent first, with their counts */
  topCodes: { code: string; n: number }[];
  /** a sample of all codes in use (for queries on codes a patient may not have) */
  anyCodes: string[];
}

export async function paramId(db: pg.Client, type: string, code: string): Promise<number> {
  const { rows } = await db.query<{ id: number }>('SELECT id FROM search_param WHERE resource_type = $1 AND code = $2', [type, code]);
  if (!rows[0]) {
    throw new Error(`search parameter ${type}.${code} is not registered`);
  }
  return rows[0].id;
}

export async function loadFixtures(db: pg.Client, projectId: string, count: number): Promise<Fixtures> {
  await db.query('SELECT setseed(0.42)');
  const { rows } = await db.query<{ id: string; content: string }>(
    `SELECT id, content FROM resource WHERE resource_type = 'Patient' AND project_id = $1 AND NOT deleted ORDER BY random() LIMIT $2`,
    [projectId, count]
  );
  const subject = await paramId(db, 'Observation', 'subject');
  const code = await paramId(db, 'Observation', 'code');
  const own = await db.query<{ id: string; code: string }>(
    `SELECT p.id, (SELECT t.code FROM sp_reference s JOIN sp_token t ON t.rid = s.rid AND t.param = $2
                   WHERE s.param = $1 AND s.target_id = p.id AND s.target_type = 'Patient'
                   ORDER BY random() LIMIT 1) AS code
     FROM unnest($3::text[]) AS p(id)`,
    [subject, code, rows.map((r) => r.id)]
  );
  const ownCode = new Map(own.rows.map((r) => [r.id, r.code]));
  const patients = rows.map((r): PatientFixture => {
    const p = JSON.parse(r.content) as { name?: { family?: string; given?: string[] }[]; identifier?: { system?: string; value?: string }[] };
    return {
      id: r.id,
      family: p.name?.[0]?.family ?? '',
      given: p.name?.[0]?.given?.[0] ?? '',
      mrn: p.identifier?.find((i) => i.system === MRN_SYSTEM)?.value ?? '',
      cyId: p.identifier?.find((i) => i.system === CY_ID_SYSTEM)?.value ?? '',
      ownCode: ownCode.get(r.id) ?? undefined,
    };
  });
  const top = await db.query<{ code: string; n: string }>(
    'SELECT code, count(*) AS n FROM sp_token WHERE param = $1 GROUP BY code ORDER BY n DESC LIMIT 100',
    [code]
  );
  const any = await db.query<{ code: string }>('SELECT DISTINCT code FROM sp_token WHERE param = $1 LIMIT 3000', [code]);
  return {
    patients,
    topCodes: top.rows.map((r) => ({ code: r.code, n: Number(r.n) })),
    anyCodes: any.rows.map((r) => r.code),
  };
}

// ------------------------------------------------------------------ query shapes

export interface Shape {
  key: string;
  title: string;
  template: string;
  /** p95 budget in ms, when DESIGN.md sets one */
  budgetP95?: number;
  make(rng: Rng, f: Fixtures): string;
}

const enc = encodeURIComponent;

function day(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

export const SHAPES: Shape[] = [
  {
    key: 'subject-code-sort',
    title: 'Observations of one patient with one code, newest first',
    template: 'Observation?subject=Patient/{id}&code={loinc}&_sort=-date',
    budgetP95: 20,
    make(rng, f) {
      const p = rng.pick(f.patients);
      // mostly a code the patient has (a result trend); sometimes any code in use
      const code = p.ownCode && rng.chance(0.9) ? p.ownCode : rng.pick(f.anyCodes);
      return `Observation?subject=Patient/${p.id}&code=${enc(code)}&_sort=-date`;
    },
  },
  {
    key: 'patient-name',
    title: 'Patients by name',
    template: 'Patient?name={family | given | 4-letter prefix}',
    make(rng, f) {
      const p = rng.pick(f.patients);
      const r = rng.next();
      const name = r < 0.5 ? p.family : r < 0.75 ? p.given : p.family.slice(0, 4);
      return `Patient?name=${enc(name)}`;
    },
  },
  {
    key: 'patient-identifier',
    title: 'Patient by identifier',
    template: 'Patient?identifier={system|MRN} or ={national id}',
    make(rng, f) {
      const p = rng.pick(f.patients);
      return rng.chance(0.5) ? `Patient?identifier=${enc(`${MRN_SYSTEM}|${p.mrn}`)}` : `Patient?identifier=${enc(p.cyId)}`;
    },
  },
  {
    key: 'date-code',
    title: 'Observations with a common code since a date',
    template: 'Observation?date=ge{day}&code={one of the 100 most frequent codes}',
    make(rng, f) {
      const code = rng.pick(f.topCodes).code;
      const since = day(PERIOD_START + rng.next() * (PERIOD_END - PERIOD_START));
      return `Observation?date=ge${since}&code=${enc(code)}`;
    },
  },
  {
    key: 'chain-identifier',
    title: 'Observations by the identifier of their subject (2-link chain)',
    template: 'Observation?subject:Patient.identifier={system|MRN}',
    make(rng, f) {
      const p = rng.pick(f.patients);
      return `Observation?subject:Patient.identifier=${enc(`${MRN_SYSTEM}|${p.mrn}`)}`;
    },
  },
  {
    key: 'revinclude',
    title: 'One patient with all its Observations',
    template: 'Patient?_id={id}&_revinclude=Observation:subject',
    make(rng, f) {
      return `Patient?_id=${rng.pick(f.patients).id}&_revinclude=Observation:subject`;
    },
  },
];

