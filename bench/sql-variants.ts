/**
 * SQL-only experiments behind the suggestions in SEARCH-SCALE.md: the SQL the server's compiler
 * produces for the two slow shapes, against hand-written alternatives, an extra index and better
 * planner statistics, on the same randomized inputs as bench/search-scale.ts. Every alternative's
 * result (the rids, in order) is compared with the server's, per input.
 *
 *   node bench/sql-variants.ts <database-url> [--queries 300] [--out bench/SQL-VARIANTS.md] [--keep-experiments]
 *
 * The temporary index and statistics targets are removed at the end (unless --keep-experiments),
 * so the database is left as generated. CREATE INDEX (without CONCURRENTLY) blocks writes to
 * sp_token while it builds: do not run this beside a load.
 */
import { parseSearchRequest } from '@medplum/core';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { loadFixtures, paramId, SHAPES } from './lib/queries.ts';
import { Rng } from './lib/rng.ts';
import { benchProjectId, benchRepo, serverSrcDir, startServices } from './lib/server.ts';
import { isExplainable, SqlCapture } from './lib/sql-capture.ts';
import { mean, ms, percentile } from './lib/stats.ts';

interface Options {
  databaseUrl: string;
  queries: number;
  warmup: number;
  out: string;
  keep: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { databaseUrl: '', queries: 300, warmup: 30, out: path.join(import.meta.dirname, 'SQL-VARIANTS.md'), keep: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--queries') {
      o.queries = Number(argv[++i]);
    } else if (a === '--out') {
      o.out = path.resolve(argv[++i]);
    } else if (a === '--keep-experiments') {
      o.keep = true;
    } else if (!a.startsWith('-')) {
      o.databaseUrl = a;
    } else {
      throw new Error(`unknown option ${a}`);
    }
  }
  if (!o.databaseUrl) {
    throw new Error('usage: node bench/sql-variants.ts <database-url> [--queries 300] [--out file] [--keep-experiments]');
  }
  return o;
}

interface Query {
  text: string;
  values: unknown[];
}

interface Input {
  url: string;
  server: Query;
  params: URLSearchParams;
}

interface VariantResult {
  name: string;
  description: string;
  times: number[];
  mismatches: number;
  slowest: { url: string; ms: number; plan: string };
}

const PARAMS: Record<string, number> = {};

async function run(db: pg.Client, q: Query): Promise<{ ms: number; rids: string }> {
  const t = performance.now();
  const { rows } = await db.query<{ rid: string }>(q.text, q.values);
  return { ms: performance.now() - t, rids: rows.map((r) => r.rid).join(',') };
}

async function measure(
  db: pg.Client,
  name: string,
  description: string,
  inputs: Input[],
  build: (input: Input) => Query,
  warmup: number,
  reference?: Map<string, string>
): Promise<VariantResult> {
  for (const input of inputs.slice(0, warmup)) {
    await run(db, build(input));
  }
  const times: number[] = [];
  let mismatches = 0;
  let slowest = { url: '', ms: -1, query: undefined as Query | undefined };
  for (const input of inputs) {
    const q = build(input);
    const r = await run(db, q);
    times.push(r.ms);
    if (reference) {
      const expected = reference.get(input.url);
      if (expected === undefined) {
        reference.set(input.url, r.rids); // the first variant measured is the reference
      } else if (expected !== r.rids) {
        mismatches++;
      }
    }
    if (r.ms > slowest.ms) {
      slowest = { url: input.url, ms: r.ms, query: q };
    }
  }
  const q = slowest.query as Query;
  const { rows } = await db.query<{ 'QUERY PLAN': string }>(`EXPLAIN (ANALYZE, BUFFERS) ${q.text}`, q.values);
  const plan = rows.map((r) => r['QUERY PLAN']).join('\n');
  console.log(`${name}: p50 ${ms(percentile(times, 50))} p95 ${ms(percentile(times, 95))} p99 ${ms(percentile(times, 99))} max ${ms(Math.max(...times))} ms; mismatches ${mismatches}`);
  return { name, description, times, mismatches, slowest: { url: slowest.url, ms: slowest.ms, plan } };
}

// ------------------------------------------------------------------ the alternatives

const VISIBLE = `r.resource_type = 'Observation' AND r.project_id = ANY($1::uuid[]) AND NOT r.deleted`;
const SORT_DATE_DESC = (p: string): string =>
  `(SELECT max(d.high) FROM sp_date d WHERE d.rid = r.rid AND d.param = ${p}) DESC NULLS LAST, r.rid ASC`;

function subjectCode(projects: string[], input: Input, variant: 'no-or' | 'union' | 'materialized'): Query {
  const patient = (input.params.get('subject') ?? '').replace(/^Patient\//, '');
  const code = input.params.get('code') ?? '';
  const values = [projects, PARAMS.subject, patient, PARAMS.code, code, PARAMS.date];
  const token = `EXISTS (SELECT 1 FROM sp_token t WHERE t.rid = r.rid AND t.param = $4 AND t.code = $5)`;
  if (variant === 'no-or') {
    return {
      text: `SELECT r.rid FROM resource r WHERE ${VISIBLE}
        AND EXISTS (SELECT 1 FROM sp_reference s WHERE s.rid = r.rid AND s.param = $2 AND s.target_type = 'Patient' AND s.target_id = $3)
        AND ${token} ORDER BY ${SORT_DATE_DESC('$6')} LIMIT 21`,
      values,
    };
  }
  if (variant === 'union') {
    // same matches as the server's OR (either the parsed target or the reference text), each branch an index range
    return {
      text: `SELECT r.rid FROM resource r WHERE ${VISIBLE}
        AND r.rid IN (SELECT s.rid FROM sp_reference s WHERE s.param = $2 AND s.target_type = 'Patient' AND s.target_id = $3
                      UNION SELECT s.rid FROM sp_reference s WHERE s.param = $2 AND s.ref = 'Patient/' || $3)
        AND ${token} ORDER BY ${SORT_DATE_DESC('$6')} LIMIT 21`,
      values,
    };
  }
  return {
    text: `WITH anchor AS MATERIALIZED (
          SELECT DISTINCT s.rid FROM sp_reference s WHERE s.param = $2 AND s.target_type = 'Patient' AND s.target_id = $3)
        SELECT r.rid FROM anchor a JOIN resource r ON r.rid = a.rid WHERE ${VISIBLE}
        AND ${token} ORDER BY ${SORT_DATE_DESC('$6')} LIMIT 21`,
    values,
  };
}

/** The server's own date-code SQL with one more, implied condition: high >= start of the searched day. */
function dateCodeSargable(input: Input): Query {
  const text = input.server.text.replace(
    /EXISTS \(SELECT 1 FROM sp_date s WHERE s\.rid = r\.rid AND s\.param = (\$\d+) AND \(\(s\.high > (\$\d+)::timestamptz OR \(s\.low >= (\$\d+)::timestamptz/,
    (_m, param, high, low) =>
      `EXISTS (SELECT 1 FROM sp_date s WHERE s.rid = r.rid AND s.param = ${param} AND s.high >= ${low}::timestamptz AND ((s.high > ${high}::timestamptz OR (s.low >= ${low}::timestamptz`
  );
  if (text === input.server.text) {
    throw new Error('the date-code SQL no longer has the expected shape; update dateCodeSargable');
  }
  return { text, values: input.server.values };
}

/**
 * The server's date-code SQL with the code filter moved from an EXISTS into a derived table of
 * distinct rids that drives the join: with an index that yields a code's rows in rid order, the
 * plan walks them in `ORDER BY r.rid` order and stops after the page, instead of walking every
 * Observation by primary key (the Merge Semi Join in the server plan).
 */
function dateCodeTokenDriven(input: Query): Query {
  const m = /\s*AND EXISTS \(SELECT 1 FROM sp_token s WHERE s\.rid = r\.rid AND (s\.param = \$\d+ AND \(s\.code = \$\d+\))\)/.exec(input.text);
  if (!m || !/FROM resource r WHERE/.test(input.text)) {
    throw new Error('the date-code SQL no longer has the expected shape; update dateCodeTokenDriven');
  }
  const text = input.text
    .replace(m[0], '')
    .replace('FROM resource r WHERE', `FROM (SELECT DISTINCT s.rid FROM sp_token s WHERE ${m[1]}) c JOIN resource r ON r.rid = c.rid WHERE`);
  return { text, values: input.values };
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  const capture = new SqlCapture();
  capture.install();
  const services = await startServices(options.databaseUrl);
  const db = new pg.Client({ connectionString: options.databaseUrl, application_name: 'ermis-bench-variants' });
  await db.connect();
  const repo = benchRepo(services);
  const projects = [benchProjectId(services)];
  const experiments: string[] = [];
  try {
    PARAMS.subject = await paramId(db, 'Observation', 'subject');
    PARAMS.code = await paramId(db, 'Observation', 'code');
    PARAMS.date = await paramId(db, 'Observation', 'date');
    const fixtures = await loadFixtures(db, benchProjectId(services), 1500);

    /** The inputs of a shape (same seed as search-scale) with the SQL the server's compiler makes for each. */
    const inputsOf = async (key: string): Promise<Input[]> => {
      const shape = SHAPES.find((s) => s.key === key);
      if (!shape) {
        throw new Error(`no shape ${key}`);
      }
      const rng = new Rng(1000 + SHAPES.indexOf(shape));
      const inputs: Input[] = [];
      for (let i = 0; i < options.queries; i++) {
        const url = shape.make(rng, fixtures);
        capture.start();
        await repo.search(parseSearchRequest(url));
        const sql = capture.stop().filter(isExplainable);
        const main = sql.find((q) => /FROM resource r WHERE/.test(q.text)) ?? sql[0];
        inputs.push({
          url,
          server: { text: main.text.replace(/^SELECT r\.rid, r\.content|^SELECT r\.content/, 'SELECT r.rid'), values: main.values ?? [] },
          params: new URLSearchParams(url.slice(url.indexOf('?') + 1)),
        });
      }
      return inputs;
    };

    const sections: { title: string; results: VariantResult[]; note: string }[] = [];

    // -------- subject + code + _sort=-date
    const sc = await inputsOf('subject-code-sort');
    const scRef = new Map<string, string>();
    const scResults: VariantResult[] = [];
    const referenceForm = /OR s\.ref = /.test(sc[0]?.server.text ?? '') ? '`(target_id AND target_type) OR ref`' : '`target_id AND target_type`';
    scResults.push(await measure(db, 'server SQL', `as compiled by the server (reference as ${referenceForm}, each filter an EXISTS)`, sc, (i) => i.server, options.warmup, scRef));
    scResults.push(await measure(db, 'reference without OR', 'literal reference matched on `(param, target_type, target_id)` only', sc, (i) => subjectCode(projects, i, 'no-or'), options.warmup, scRef));
    scResults.push(await measure(db, 'reference as IN (… UNION …)', 'the same OR semantics, written as `r.rid IN (target branch UNION ref branch)`: two index ranges', sc, (i) => subjectCode(projects, i, 'union'), options.warmup, scRef));
    scResults.push(await measure(db, 'reference as materialized anchor', 'the reference rows first (`WITH … AS MATERIALIZED`), then resource rows and the code check per row', sc, (i) => subjectCode(projects, i, 'materialized'), options.warmup, scRef));

    // -------- date + code
    const dc = await inputsOf('date-code');
    const dcRef = new Map<string, string>();
    const dcResults: VariantResult[] = [];
    dcResults.push(await measure(db, 'server SQL', 'as compiled by the server (ORDER BY r.rid LIMIT 21)', dc, (i) => i.server, options.warmup, dcRef));
    dcResults.push(await measure(db, 'server SQL + implied `high >= start`', 'the same, with `s.high >= <start of day>` added to the date EXISTS so that a range condition exists', dc, dateCodeSargable, options.warmup, dcRef));
    dcResults.push(await measure(db, 'code filter drives (derived table)', '`FROM (SELECT DISTINCT rid FROM sp_token WHERE param AND code) c JOIN resource r`, the date filter stays an EXISTS', dc, (i) => dateCodeTokenDriven(i.server), options.warmup, dcRef));

    // -------- planner statistics on sp_token.code
    console.log('statistics target 5000 on sp_token.code, sp_reference.target_id; ANALYZE ...');
    let t = performance.now();
    experiments.push('stats');
    await db.query('ALTER TABLE sp_token ALTER COLUMN code SET STATISTICS 5000');
    await db.query('ALTER TABLE sp_reference ALTER COLUMN target_id SET STATISTICS 5000');
    await db.query('ANALYZE sp_token, sp_reference');
    const analyzeSeconds = (performance.now() - t) / 1000;
    scResults.push(await measure(db, 'server SQL, statistics target 5000', `\`ALTER TABLE sp_token ALTER COLUMN code SET STATISTICS 5000\` (and sp_reference.target_id), ANALYZE (${analyzeSeconds.toFixed(0)} s)`, sc, (i) => i.server, options.warmup, scRef));
    dcResults.push(await measure(db, 'server SQL, statistics target 5000', 'same statistics', dc, (i) => i.server, options.warmup, dcRef));

    // -------- index (param, code, rid): code rows in rid order
    console.log('CREATE INDEX sp_token_param_code_rid ON sp_token (param, code, rid) INCLUDE (system) ...');
    t = performance.now();
    experiments.push('index');
    await db.query('SET maintenance_work_mem = \'512MB\'');
    await db.query('CREATE INDEX bench_sp_token_param_code_rid ON sp_token (param, code, rid) INCLUDE (system)');
    const indexSeconds = (performance.now() - t) / 1000;
    const size = (await db.query<{ s: string }>("SELECT pg_size_pretty(pg_relation_size('bench_sp_token_param_code_rid')) AS s")).rows[0].s;
    scResults.push(await measure(db, 'server SQL, statistics + index (param, code, rid)', `plus \`CREATE INDEX … ON sp_token (param, code, rid) INCLUDE (system)\` (${indexSeconds.toFixed(0)} s, ${size})`, sc, (i) => i.server, options.warmup, scRef));
    scResults.push(await measure(db, 'reference as materialized anchor, statistics + index', 'the anchor variant with the same statistics and index', sc, (i) => subjectCode(projects, i, 'materialized'), options.warmup, scRef));
    dcResults.push(await measure(db, 'server SQL, statistics + index (param, code, rid)', 'same statistics and index', dc, (i) => i.server, options.warmup, dcRef));
    dcResults.push(await measure(db, 'server SQL + implied bound, statistics + index', 'both', dc, dateCodeSargable, options.warmup, dcRef));
    dcResults.push(await measure(db, 'code filter drives, statistics + index (param, code, rid)', 'the derived-table rewrite with the index that returns a code\'s rows in rid order', dc, (i) => dateCodeTokenDriven(i.server), options.warmup, dcRef));
    dcResults.push(await measure(db, 'code filter drives + implied bound, statistics + index', 'all three', dc, (i) => dateCodeTokenDriven(dateCodeSargable(i)), options.warmup, dcRef));

    sections.push({
      title: '`Observation?subject=Patient/{id}&code={loinc}&_sort=-date` (budget p95 ≤ 20 ms for the whole request)',
      results: scResults,
      note: '',
    });
    sections.push({ title: '`Observation?date=ge{day}&code={frequent code}`', results: dcResults, note: '' });

    const L: string[] = [];
    L.push('# SQL variants for the slow search shapes');
    L.push('');
    L.push(
      `Generated by \`bench/sql-variants.ts\` on ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC against \`${new URL(options.databaseUrl).pathname.slice(1)}\`; ` +
        `"server SQL" is what the compiler of ${process.env.ERMIS_SERVER_LABEL ?? serverSrcDir()} produces. ` +
        `SQL only (no HTTP, no JSON): each variant runs the same ${options.queries} inputs as bench/search-scale.ts (seed 1), one at a time, after ${options.warmup} warm-up queries, ` +
        'and its result (rids, in order) is compared with the server SQL\'s for every input ("mismatches"). Statistics and index are ' +
        (options.keep ? 'left in place.' : 'removed again at the end.')
    );
    L.push('');
    for (const section of sections) {
      L.push(`## ${section.title}`);
      L.push('');
      L.push('| variant | p50 ms | p95 ms | p99 ms | max ms | mean ms | mismatches |');
      L.push('|---|---:|---:|---:|---:|---:|---:|');
      for (const r of section.results) {
        L.push(
          `| **${r.name}**: ${r.description} | ${ms(percentile(r.times, 50))} | ${ms(percentile(r.times, 95))} | ${ms(percentile(r.times, 99))} | ${ms(Math.max(...r.times))} | ${ms(mean(r.times))} | ${r.mismatches} |`
        );
      }
      L.push('');
      for (const r of section.results) {
        L.push(`<details><summary>${r.name}: plan of the slowest input (${ms(r.slowest.ms)} ms): <code>${r.slowest.url}</code></summary>`);
        L.push('');
        L.push('```');
        L.push(r.slowest.plan);
        L.push('```');
        L.push('</details>');
        L.push('');
      }
    }
    writeFileSync(options.out, L.join('\n'));
    console.log(`wrote ${options.out}`);
  } finally {
    if (!options.keep) {
      if (experiments.includes('index')) {
        await db.query('DROP INDEX IF EXISTS bench_sp_token_param_code_rid');
      }
      if (experiments.includes('stats')) {
        await db.query('ALTER TABLE sp_token ALTER COLUMN code SET STATISTICS -1');
        await db.query('ALTER TABLE sp_reference ALTER COLUMN target_id SET STATISTICS -1');
        await db.query('ANALYZE sp_token, sp_reference');
      }
    }
    await db.end();
    await services.close();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
