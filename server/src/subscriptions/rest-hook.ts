import { createHmac } from 'node:crypto';
import { stringify } from '@medplum/core';
import type { Resource, Subscription } from '@medplum/fhirtypes';
import type { AuditLog } from '../auth/audit.ts';
import type { Directory } from '../auth/directory.ts';
import type { Queryable } from '../db/pool.ts';
import type { Job } from '../jobs/queue.ts';
import { JobFailure } from '../jobs/runner.ts';
import type { JobHandler } from '../jobs/runner.ts';
import type { DeliveryPayload } from './matcher.ts';
import { OutboundRefused } from './outbound.ts';
import { removeFields } from '../fhir/repo/access-rules.ts';
import type { OutboundPolicy } from './outbound.ts';

const SECRET_EXTENSIONS = [
  'https://www.medplum.com/fhir/StructureDefinition/subscription-secret',
  'https://www.medplum.com/fhir/StructureDefinition-subscriptionSecret',
];
const SUCCESS_CODES_EXTENSION = 'https://medplum.com/fhir/StructureDefinition/subscription-success-codes';

export interface RestHookDeps {
  db: Queryable;
  directory: Directory;
  outbound: OutboundPolicy;
  audit: AuditLog;
  timeoutMs: number;
}

/**
 * Delivers one subscription notification as Medplum does: `POST` the resource (or `{}` for a
 * delete) with `X-Medplum-Subscription`, `X-Medplum-Interaction`, `X-Medplum-Deleted-Resource`,
 * the channel's headers and an `X-Signature` HMAC-SHA256 of the body under the subscription
 * secret. An AuditEvent records every attempt.
 */
export function restHookHandler(deps: RestHookDeps): JobHandler {
  return async (job: Job): Promise<void> => {
    const payload = job.payload as DeliveryPayload;
    const subscription = (await deps.directory.find<Subscription>('Subscription', payload.subscriptionId, job.projectId))?.resource;
    if (!subscription || subscription.status !== 'active' || !subscription.channel?.endpoint) {
      return; // switched off or deleted since: nothing to deliver
    }
    if (job.attempts > 1 && payload.interaction !== 'delete') {
      // A retry of a version the resource has moved on from would take the receiver back in time.
      const { rows: current } = await deps.db.query<{ version_id: string }>(
        'SELECT version_id FROM resource WHERE project_id = $1 AND resource_type = $2 AND id = $3',
        [job.projectId, payload.resourceType, payload.resourceId]
      );
      if (current[0]?.version_id !== payload.versionId) {
        return;
      }
    }
    let body = '{}';
    if (payload.interaction !== 'delete') {
      const { rows } = await deps.db.query<{ content: string }>('SELECT content FROM resource_history WHERE version_id = $1', [payload.versionId]);
      if (!rows[0]) {
        return;
      }
      const resource = JSON.parse(rows[0].content) as Resource;
      // what the subscription's author may not see does not leave the server either
      removeFields(resource, payload.hiddenFields ?? []);
      body = stringify(resource);
    }
    const headers: Record<string, string> = {
      'Content-Type': 'application/fhir+json',
      'X-Medplum-Subscription': subscription.id as string,
      'X-Medplum-Interaction': payload.interaction,
    };
    if (payload.interaction === 'delete') {
      headers['X-Medplum-Deleted-Resource'] = `${payload.resourceType}/${payload.resourceId}`;
    }
    for (const header of subscription.channel.header ?? []) {
      const colon = header.indexOf(':');
      if (colon > 0) {
        headers[header.slice(0, colon).trim()] = header.slice(colon + 1).trim();
      }
    }
    const secret = subscription.extension?.find((e) => SECRET_EXTENSIONS.includes(e.url))?.valueString;
    if (secret) {
      headers['X-Signature'] = createHmac('sha256', secret).update(body).digest('hex');
    }
    const started = new Date();
    const record = (success: boolean, detail: string): void =>
      deps.audit.transmit(job.projectId, subscription, `${payload.resourceType}/${payload.resourceId}`, success, detail, started);
    let status: number;
    try {
      status = await deps.outbound.post(subscription.channel.endpoint, headers, body, deps.timeoutMs);
    } catch (err) {
      const message = `Attempt ${job.attempts}: ${(err as Error).message}`;
      record(false, message);
      throw new JobFailure(message, err instanceof OutboundRefused);
    }
    if (!isSuccess(status, subscription)) {
      const message = `Attempt ${job.attempts} received status ${status}`;
      record(false, message);
      throw new JobFailure(message);
    }
    record(true, `Attempt ${job.attempts} received status ${status}`);
  };
}

/** 200–399 unless the `subscription-success-codes` extension lists codes and ranges (`200,201-299`). */
export function isSuccess(status: number, subscription: Subscription): boolean {
  const spec = subscription.extension?.find((e) => e.url === SUCCESS_CODES_EXTENSION)?.valueString;
  if (!spec) {
    return status >= 200 && status < 400;
  }
  return spec.split(',').some((part) => {
    const [low, high] = part.trim().split('-').map(Number);
    return high === undefined ? status === low : status >= low && status <= high;
  });
}
