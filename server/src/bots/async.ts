import type { AsyncJob, Bot } from '@medplum/fhirtypes';
import type { Directory } from '../auth/directory.ts';
import type { LoginStore } from '../auth/logins.ts';
import type { Job } from '../jobs/queue.ts';
import type { JobHandler } from '../jobs/runner.ts';
import type { BotExecutor } from './executor.ts';
import type { BotRunResult } from './runtime.ts';

/** The payload of an `$execute` with `Prefer: respond-async`. */
export interface AsyncExecutePayload {
  [key: string]: unknown;
  botId: string;
  asyncJobId: string;
  input: unknown;
  contentType: string;
  requester?: string;
  callerLoginId?: string;
}

/**
 * Runs an asynchronous `$execute` and records the outcome in its AsyncJob (`completed` with the
 * answer in `output`, or `error`), which `GET /fhir/R4/job/{id}/status` reports.
 */
export function asyncExecuteHandler(directory: Directory, logins: LoginStore, executor: BotExecutor): JobHandler {
  return async (job: Job): Promise<void> => {
    const payload = job.payload as AsyncExecutePayload;
    const repo = directory.repo(job.projectId);
    const asyncJob = (await directory.find<AsyncJob>('AsyncJob', payload.asyncJobId, job.projectId))?.resource;
    const bot = (await directory.find<Bot>('Bot', payload.botId, job.projectId))?.resource;
    if (!asyncJob) {
      return;
    }
    if (!bot) {
      await repo.updateResource<AsyncJob>({ ...asyncJob, status: 'error', output: errorOutput(`Bot/${payload.botId} not found`) });
      return;
    }
    await repo.updateResource<AsyncJob>({ ...asyncJob, status: 'active' });
    const callerLogin = payload.callerLoginId ? await logins.get(payload.callerLoginId) : undefined;
    const result = await executor
      .execute({
        bot,
        projectId: job.projectId,
        input: payload.input,
        contentType: payload.contentType,
        requester: payload.requester ? { reference: payload.requester } : undefined,
        callerLogin: callerLogin && !callerLogin.revoked ? callerLogin : undefined,
      })
      // e.g. no deployed code: the AsyncJob must end in `error`, not stay active for ever
      .catch((err: unknown) => ({ ok: false, error: err instanceof Error ? err.message : String(err), logs: '', durationMs: 0 }) as BotRunResult);
    const current = (await directory.find<AsyncJob>('AsyncJob', payload.asyncJobId, job.projectId))?.resource ?? asyncJob;
    await repo.updateResource<AsyncJob>({
      ...current,
      status: result.ok ? 'completed' : 'error',
      transactionTime: new Date().toISOString(),
      output: result.ok
        ? {
            resourceType: 'Parameters',
            parameter: [
              { name: 'responseBody', valueString: result.body ?? '' },
              { name: 'contentType', valueString: result.contentType ?? 'application/json' },
            ],
          }
        : errorOutput(result.error ?? 'Bot failed'),
    });
  };
}

function errorOutput(text: string): AsyncJob['output'] {
  return {
    resourceType: 'Parameters',
    parameter: [{ name: 'outcome', resource: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'processing', details: { text } }] } }],
  };
}
