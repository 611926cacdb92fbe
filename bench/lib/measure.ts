/** A workload measured: closed-loop load with the CPU of each process group taken over the measured window. */
import { closedLoop } from './load.ts';
import type { LoadOptions, LoadResult } from './load.ts';
import { cpuMeter } from './processes.ts';
import type { CpuGroups, CpuUse } from './processes.ts';
import type { Row } from './results.ts';

export interface MeasureSpec extends Omit<Row, 'throughput' | 'load' | 'cpu'> {
  groups: CpuGroups;
  load: Omit<LoadOptions, 'onWindow'>;
  /** Throughput from the load result; default requests per second. */
  throughput?: (load: LoadResult) => number;
}

export async function measure(spec: MeasureSpec): Promise<Row> {
  let meter: { stop(): CpuUse } | undefined;
  let cpu: CpuUse | undefined;
  const load = await closedLoop({
    ...spec.load,
    onWindow: {
      start: () => (meter = cpuMeter(spec.groups)),
      end: () => (cpu = meter?.stop()),
    },
  });
  const { groups: _groups, load: _load, throughput, ...row } = spec;
  const result: Row = { ...row, throughput: throughput ? throughput(load) : load.throughput, load, cpu: cpu ?? { cores: {}, seconds: 0 } };
  console.log(
    `  ${row.workload} (${row.connections} conn): ${result.throughput.toFixed(0)} ${row.unit}, p50 ${load.p50.toFixed(1)} / p99 ${load.p99.toFixed(1)} ms, ${load.errors} errors` +
      (load.errorSamples.length ? `\n    first errors: ${load.errorSamples.join(' | ')}` : '')
  );
  return result;
}
