/** What one measured workload produces: a row of the report. */
import type { LoadResult } from './load.ts';
import type { CpuUse } from './processes.ts';

export type RowId =
  | 'pg-single'
  | 'pg-20'
  | 'bare-create'
  | 'bare-read'
  | 'mllp-echo-1'
  | 'mllp-echo-8'
  | 'crud'
  | 'tx-1'
  | 'tx-8'
  | 'tx-32'
  | 'import'
  | 'search-mix'
  | 'read-by-id'
  | 'oru-1'
  | 'oru-8'
  | 'adt-1'
  | 'adt-8'
  | 'scale-search'
  | 'scale-read';

export interface Row {
  id: RowId;
  kind: 'ceiling' | 'ermis';
  workload: string;
  connections: number;
  /** What `throughput` counts. */
  unit: 'req/s' | 'resources/s' | 'tx/s' | 'msg/s';
  throughput: number;
  load: LoadResult;
  cpu: CpuUse;
  /** Anything the reader needs to know about this run of the workload (data size, bounds hit). */
  note?: string;
}

/** A workload that could not run (the reason is reported in its place). */
export interface Skipped {
  id: RowId;
  workload: string;
  reason: string;
}
