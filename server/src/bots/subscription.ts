import type { Bot, Resource, Subscription } from '@medplum/fhirtypes';
import type { Directory } from '../auth/directory.ts';
import type { Queryable } from '../db/pool.ts';
import type { Job } from '../jobs/queue.ts';
import { JobFailure } from '../jobs/runner.ts';
import type { JobHandler } from '../jobs/runner.ts';
import type { DeliveryPayload } from '../subscriptions/matcher.ts';
import type { BotExecutor } from './executor.ts';

/**
 * A subscription whose endpoint is `Bot/{id}`: the bot runs with the resource as input (or
 * `{deletedResource}` for a delete), as the resource's author when the bot has `runAsUser`
 * (otherwise as itself). A failed run is retried like a failed rest-hook.
 */
export function botSubscriptionHandler(db: Queryable, directory: Directory, executor: BotExecutor): JobHandler {
  return async (job: Job): Promise<void> => {
    const payload = job.payload as DeliveryPayload;
    const subscription = (await directory.find<Subscription>('Subscription', payload.subscriptionId, job.projectId))?.resource;
    const botId = subscription?.channel?.endpoint?.slice('Bot/'.length);
    if (!subscription || subscription.status !== 'active' || !botId) {
      return;
    }
    const bot = (await directory.find<Bot>('Bot', botId, job.projectId))?.resource;
    if (!bot) {
      throw new JobFailure(`Bot/${botId} not found`, true);
    }
    const versionId = payload.interaction === 'delete' ? undefined : payload.versionId;
    const { rows } = await db.query<{ content: string }>(
      versionId
        ? 'SELECT content FROM resource_history WHERE version_id = $1'
        : `SELECT content FROM resource_history WHERE project_id = $1 AND resource_type = $2 AND id = $3 AND operation <> 'D'
           ORDER BY last_updated DESC LIMIT 1`,
      versionId ? [versionId] : [job.projectId, payload.resourceType, payload.resourceId]
    );
    const resource = rows[0] ? (JSON.parse(rows[0].content) as Resource) : undefined;
    if (!resource) {
      return;
    }
    const author = resource.meta?.author?.reference;
    const runAsMembership = bot.runAsUser && author ? await directory.membershipOfProfile(author, job.projectId) : undefined;
    if (bot.runAsUser && !runAsMembership) {
      throw new JobFailure(`Bot/${bot.id} runs as the author, and ${author ?? 'the resource'} has no membership`, true);
    }
    const result = await executor.execute({
      bot,
      runAsMembership,
      projectId: job.projectId,
      input: payload.interaction === 'delete' ? { deletedResource: resource } : resource,
      contentType: 'application/fhir+json',
      requester: resource.meta?.author,
      headers: {
        'X-Medplum-Subscription': subscription.id,
        'X-Medplum-Interaction': payload.interaction,
        ...(payload.interaction === 'delete' ? { 'X-Medplum-Deleted-Resource': `${payload.resourceType}/${payload.resourceId}` } : {}),
      },
    });
    if (!result.ok) {
      throw new JobFailure(`Attempt ${job.attempts}: ${result.error ?? 'bot failed'}`);
    }
  };
}
