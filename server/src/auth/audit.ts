import type { AuditEvent, AuditEventAgent, Project, Reference, Subscription } from '@medplum/fhirtypes';
import type { Directory } from './directory.ts';

/** How much a project records: every access, writes only, sign-ins only, or nothing. */
export type AuditVolume = 'all' | 'writes' | 'logins' | 'none';
const VOLUMES: readonly AuditVolume[] = ['all', 'writes', 'logins', 'none'];

/** The Project.setting that chooses a project's volume (`valueString`: all, writes, logins, none). */
export const AUDIT_VOLUME_SETTING = 'auditEventVolume';

const FLUSH_INTERVAL_MS = 500;
const MAX_QUEUE = 10_000;

const REST_TYPE = { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest', display: 'RESTful Operation' };
const LOGIN_TYPE = { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110114', display: 'User Authentication' };
const TRANSMIT_TYPE = { system: 'https://medplum.com/CodeSystem/audit-event', code: 'transmit', display: 'Transmit' };
const EXECUTE_TYPE = { system: 'https://medplum.com/CodeSystem/audit-event', code: 'execute', display: 'Execute' };
const LOGIN_SUBTYPE = { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110122', display: 'Login' };

export interface FhirAccess {
  method: string;
  /** Path and query below the FHIR base, e.g. `/Patient/1`. */
  url: string;
  status: number;
  remoteAddress: string;
  /** The resource the response carried (`Type/id`), for creates whose URL does not name it. */
  resource?: string;
}

export function auditVolume(project: Project | undefined, fallback: AuditVolume): AuditVolume {
  const value = project?.setting?.find((s) => s.name === AUDIT_VOLUME_SETTING)?.valueString as AuditVolume | undefined;
  return value && VOLUMES.includes(value) ? value : fallback;
}

/**
 * AuditEvents for FHIR access and sign-ins, queued in memory and written in the background so
 * that the request that caused them does not wait. A crash loses at most the last half second.
 */
export class AuditLog {
  private readonly directory: Directory;
  private readonly observer: string;
  private readonly fallback: AuditVolume;
  private queue: { projectId: string; event: AuditEvent }[] = [];
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;

  constructor(directory: Directory, observer: string, fallback: AuditVolume = 'all') {
    this.directory = directory;
    this.observer = observer;
    this.fallback = fallback;
  }

  fhirAccess(project: Project & { id: string }, who: Reference, access: FhirAccess): void {
    const volume = auditVolume(project, this.fallback);
    const { interaction, action, entity } = describe(access);
    if (volume === 'none' || volume === 'logins' || (volume === 'writes' && action === 'R')) {
      return;
    }
    this.enqueue(project.id, {
      resourceType: 'AuditEvent',
      type: REST_TYPE,
      subtype: [{ system: 'http://hl7.org/fhir/restful-interaction', code: interaction }],
      action,
      recorded: new Date().toISOString(),
      outcome: access.status < 400 ? '0' : access.status < 500 ? '4' : '8',
      agent: [{ who: who as AuditEventAgent['who'], requestor: true, network: { address: access.remoteAddress, type: '2' } }],
      source: { observer: { display: this.observer } },
      entity: (entity ?? access.resource) ? [{ what: { reference: entity ?? access.resource } }] : [{ query: Buffer.from(access.url).toString('base64') }],
    });
  }

  /**
   * A sign-in attempt by an account (`User/<id>` or the email tried), in the project it signed in
   * to; attempts without a project (failures, several memberships) go to the Super Admin project.
   */
  login(project: (Project & { id: string }) | undefined, account: string, success: boolean, detail: string, remoteAddress: string): void {
    if (project && auditVolume(project, this.fallback) === 'none') {
      return;
    }
    this.enqueue(project?.id ?? this.directory.systemProjectId, {
      resourceType: 'AuditEvent',
      type: LOGIN_TYPE,
      subtype: [LOGIN_SUBTYPE],
      action: 'E',
      recorded: new Date().toISOString(),
      outcome: success ? '0' : '4',
      outcomeDesc: detail,
      agent: [{ altId: account, requestor: true, network: { address: remoteAddress, type: '2' } }],
      source: { observer: { display: this.observer } },
    });
  }

  /** One delivery attempt of a subscription (Medplum's `transmit` AuditEvent). */
  transmit(projectId: string, subscription: Subscription, entity: string, success: boolean, detail: string, started: Date): void {
    this.enqueue(projectId, {
      resourceType: 'AuditEvent',
      type: TRANSMIT_TYPE,
      action: 'E',
      recorded: new Date().toISOString(),
      period: { start: started.toISOString(), end: new Date().toISOString() },
      outcome: success ? '0' : '4',
      outcomeDesc: detail,
      agent: [{ type: { text: entity.split('/')[0] }, requestor: false }],
      source: { observer: { reference: `Subscription/${subscription.id}` } as AuditEvent['source']['observer'] },
      entity: [{ what: { reference: entity } }, { what: { reference: `Subscription/${subscription.id}` } }],
    });
  }

  /** One bot execution, with its outcome and what it wrote to the console. */
  botExecution(projectId: string, bot: { id: string; name?: string }, success: boolean, detail: string, durationMs: number): void {
    const end = new Date();
    this.enqueue(projectId, {
      resourceType: 'AuditEvent',
      type: EXECUTE_TYPE,
      action: 'E',
      recorded: end.toISOString(),
      period: { start: new Date(end.getTime() - durationMs).toISOString(), end: end.toISOString() },
      outcome: success ? '0' : '4',
      ...(detail ? { outcomeDesc: detail.slice(0, 10_000) } : {}),
      agent: [{ who: { reference: `Bot/${bot.id}`, display: bot.name }, requestor: false }],
      source: { observer: { reference: `Bot/${bot.id}` } as AuditEvent['source']['observer'] },
      entity: [{ what: { reference: `Bot/${bot.id}` } }],
    });
  }

  private enqueue(projectId: string, event: AuditEvent): void {
    if (this.queue.length >= MAX_QUEUE) {
      process.emitWarning('AuditEvent queue full: event dropped');
      return;
    }
    this.queue.push({ projectId, event });
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      void this.flush();
    }, FLUSH_INTERVAL_MS);
  }

  /** Writes what is queued (waits for a flush already running). */
  async flush(): Promise<void> {
    while (this.flushing) {
      await this.flushing;
    }
    const batch = this.queue;
    this.queue = [];
    if (batch.length === 0) {
      return;
    }
    this.flushing = (async () => {
      // One transaction per project and batch (one commit instead of one per event); if it fails,
      // the events are written one by one so that one bad event does not lose the others.
      const byProject = new Map<string, AuditEvent[]>();
      for (const { projectId, event } of batch) {
        byProject.set(projectId, [...(byProject.get(projectId) ?? []), event]);
      }
      for (const [projectId, events] of byProject) {
        const repo = this.directory.repo(projectId);
        const together = await repo
          .withTransaction(async (tx) => {
            for (const event of events) {
              await tx.createResource(event);
            }
          })
          .then(
            () => true,
            () => false
          );
        if (together) {
          continue;
        }
        for (const event of events) {
          await repo.createResource(event).catch((err: unknown) => {
            process.emitWarning(`AuditEvent not written: ${(err as Error).message}`);
          });
        }
      }
    })();
    try {
      await this.flushing;
    } finally {
      this.flushing = undefined;
    }
  }

  async close(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.flush();
  }
}

/** The REST interaction, action code and target of a FHIR request. */
function describe(access: FhirAccess): { interaction: string; action: AuditEvent['action']; entity?: string } {
  const path = access.url.split('?')[0].replace(/^\/+|\/+$/g, '');
  const parts = path ? path.split('/') : [];
  const op = parts.find((p) => p.startsWith('$'));
  const entity = parts.length >= 2 && /^[A-Z]/.test(parts[0]) && !parts[1].startsWith('$') && !parts[1].startsWith('_') ? `${parts[0]}/${parts[1]}` : undefined;
  if (op) {
    return { interaction: 'operation', action: 'E', entity };
  }
  switch (access.method) {
    case 'POST':
      if (parts.length === 0) {
        return { interaction: 'transaction', action: 'E' };
      }
      return parts[1] === '_search' ? { interaction: 'search-type', action: 'R' } : { interaction: 'create', action: 'C' };
    case 'PUT':
      return { interaction: 'update', action: 'U', entity };
    case 'PATCH':
      return { interaction: 'patch', action: 'U', entity };
    case 'DELETE':
      return { interaction: 'delete', action: 'D', entity };
    default:
      if (parts.includes('_history')) {
        return { interaction: parts.length === 4 ? 'vread' : 'history', action: 'R', entity };
      }
      if (entity) {
        return { interaction: 'read', action: 'R', entity };
      }
      return { interaction: parts.length === 0 ? 'search-system' : 'search-type', action: 'R' };
  }
}
