import { resourceMatchesSubscriptionCriteria } from '@medplum/core';
import type { Resource, Subscription } from '@medplum/fhirtypes';
import type pg from 'pg';
import type { Directory } from '../auth/directory.ts';
import type { Sessions } from '../auth/sessions.ts';
import type { EventHandler, OutboxEvent } from '../jobs/outbox.ts';
import type { NewJob } from '../jobs/queue.ts';
import { removeFields } from '../fhir/repo/access-rules.ts';

export const MAX_ATTEMPTS_EXTENSION = 'https://medplum.com/fhir/StructureDefinition/subscription-max-attempts';
const DEFAULT_MAX_ATTEMPTS = 4;
const ATTEMPTS_CAP = 50;

/** The payload of a subscription delivery job. */
export interface DeliveryPayload {
  [key: string]: unknown;
  subscriptionId: string;
  resourceType: string;
  resourceId: string;
  versionId: string;
  interaction: OutboxEvent['interaction'];
  /** Fields the subscription's author may not see, removed from what is delivered. */
  hiddenFields?: string[];
}

interface AuthorView {
  canSee(event: OutboxEvent): Promise<boolean>;
  hiddenFields(resourceType: string): string[];
}

/**
 * Finds, for each committed write, the project's active rest-hook and websocket Subscriptions it matches
 * (Medplum's rules: criteria, `fhir-path-criteria-expression` with %current/%previous,
 * `subscription-supported-interaction`) and whose author may read the resource, and makes one
 * delivery job each (a stored notification for websockets). Subscriptions are read from the database every batch, so one created on
 * another node counts from its commit on.
 */
export function subscriptionMatcher(directory: Directory, sessions: Sessions, onError: (err: unknown) => void): EventHandler {
  return async (events: OutboxEvent[], db: pg.PoolClient): Promise<NewJob[]> => {
    const projects = [...new Set(events.map((e) => e.projectId))];
    const { rows: subscriptionRows } = await db.query<{ project_id: string; content: string }>(
      `SELECT project_id, content FROM resource WHERE resource_type = 'Subscription' AND project_id = ANY($1::uuid[]) AND NOT deleted`,
      [projects]
    );
    const byProject = new Map<string, Subscription[]>();
    for (const row of subscriptionRows) {
      const subscription = JSON.parse(row.content) as Subscription;
      const channel = subscription.channel;
      if (subscription.status === 'active' && ((channel?.type === 'rest-hook' && channel.endpoint) || channel?.type === 'websocket')) {
        byProject.set(row.project_id, [...(byProject.get(row.project_id) ?? []), subscription]);
      }
    }
    const relevant = events.filter((e) => byProject.has(e.projectId));
    if (relevant.length === 0) {
      return [];
    }
    const versions = await loadVersions(db, relevant.flatMap((e) => [e.versionId, e.previousVersionId]).filter((v): v is string => !!v));
    const jobs: NewJob[] = [];
    const notifications: { event: OutboxEvent; subscription: Subscription; resource: Resource | undefined }[] = [];
    const readers = new Map<string, Promise<AuthorView>>();
    for (const event of relevant) {
      // A delete has no current content: it is matched on the version it deleted.
      const resource = versions.get(event.interaction === 'delete' ? (event.previousVersionId ?? '') : event.versionId);
      if (!resource) {
        continue;
      }
      const previous = event.previousVersionId && event.interaction !== 'delete' ? versions.get(event.previousVersionId) : undefined;
      for (const subscription of byProject.get(event.projectId) ?? []) {
        let view: AuthorView;
        try {
          const matches = await resourceMatchesSubscriptionCriteria({
            resource,
            subscription,
            context: { interaction: event.interaction },
            getPreviousResource: async () => previous,
          });
          if (!matches) {
            continue;
          }
          const author = subscription.meta?.author?.reference ?? 'system';
          let reader = readers.get(`${event.projectId}|${author}`);
          if (!reader) {
            reader = authorReader(directory, sessions, author, event.projectId);
            readers.set(`${event.projectId}|${author}`, reader);
          }
          view = await reader;
          if (!(await view.canSee(event))) {
            continue;
          }
        } catch (err) {
          onError(err);
          continue;
        }
        const hidden = view.hiddenFields(event.resourceType);
        if (subscription.channel?.type === 'websocket') {
          const shown = event.interaction === 'delete' ? undefined : structuredClone(resource);
          if (shown && hidden.length) {
            removeFields(shown, hidden);
          }
          notifications.push({ event, subscription, resource: shown });
          continue;
        }
        const payload: DeliveryPayload = {
          subscriptionId: subscription.id as string,
          resourceType: event.resourceType,
          resourceId: event.resourceId,
          versionId: event.versionId,
          interaction: event.interaction,
          ...(hidden.length ? { hiddenFields: hidden } : {}),
        };
        const kind = subscription.channel?.endpoint?.startsWith('Bot/') ? 'bot' : 'rest-hook';
        jobs.push({ projectId: event.projectId, kind, payload, maxAttempts: maxAttempts(subscription) });
      }
    }
    if (notifications.length > 0) {
      // Websocket subscriptions: the notification is stored (in this transaction) and sent by the
      // node holding the socket, woken by NOTIFY at commit.
      await db.query(
        `INSERT INTO subscription_event (project_id, subscription_id, interaction, focus, resource)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[])`,
        [
          notifications.map((n) => n.event.projectId),
          notifications.map((n) => n.subscription.id),
          notifications.map((n) => n.event.interaction),
          notifications.map((n) => `${n.event.resourceType}/${n.event.resourceId}`),
          notifications.map((n) => (n.resource ? JSON.stringify(n.resource) : null)),
        ]
      );
    }
    return jobs;
  };
}

async function loadVersions(db: pg.PoolClient, versionIds: string[]): Promise<Map<string, Resource>> {
  const { rows } = await db.query<{ version_id: string; content: string }>(
    `SELECT version_id, content FROM resource_history WHERE version_id = ANY($1::uuid[]) AND operation <> 'D'`,
    [versionIds]
  );
  return new Map(rows.map((r) => [r.version_id, JSON.parse(r.content) as Resource]));
}

function maxAttempts(subscription: Subscription): number {
  const value = subscription.extension?.find((e) => e.url === MAX_ATTEMPTS_EXTENSION)?.valueInteger;
  return Number.isInteger(value) && (value as number) > 0 ? Math.min(value as number, ATTEMPTS_CAP) : DEFAULT_MAX_ATTEMPTS;
}

/**
 * Whether a Subscription's author may see the written resource: a subscription must not become a
 * way around its author's access policy. A subscription the server wrote (no membership) sees all.
 */
async function authorReader(directory: Directory, sessions: Sessions, author: string, projectId: string): Promise<AuthorView> {
  const nothingHidden = (): string[] => [];
  const membership = author === 'system' ? undefined : await directory.membershipOfProfile(author, projectId);
  if (!membership || membership.active === false) {
    return { canSee: async () => author === 'system', hiddenFields: nothingHidden };
  }
  const session = await sessions.fromMembership(membership, projectId, { scope: 'openid' });
  const access = session.context.access;
  if (!access) {
    return { canSee: async () => true, hiddenFields: nothingHidden };
  }
  const repo = directory.repoFor(session.context);
  return {
    canSee: async (event) => {
      const scope = access.rowScope(event.resourceType, 'read').kind;
      if (scope !== 'criteria') {
        return scope === 'all';
      }
      // Row criteria are judged on the resource as it is now (its index rows): a resource deleted
      // (or changed) since this event is not delivered to a criteria-restricted author.
      if (event.interaction === 'delete') {
        return false;
      }
      return repo.readResource(event.resourceType, event.resourceId).then(
        () => true,
        () => false
      );
    },
    hiddenFields: (resourceType) => access.hiddenFields(resourceType),
  };
}
