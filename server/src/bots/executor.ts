import { randomUUID } from 'node:crypto';
import { badRequest, OperationOutcomeError } from '@medplum/core';
import type { BotEvent, WithId } from '@medplum/core';
import type { Binary, Bot, Project, ProjectMembership, ProjectSetting, Reference } from '@medplum/fhirtypes';
import type { AuthServices } from '../auth/service.ts';
import type { Login } from '../auth/logins.ts';
import type { BotRunResult, BotRuntime } from './runtime.ts';

const MAX_BOT_TIMEOUT_SECONDS = 900;

export interface ExecuteRequest {
  bot: WithId<Bot>;
  projectId: string;
  input: unknown;
  contentType: string;
  /** Who asked (the caller's profile; for subscriptions the resource's author). */
  requester?: Reference;
  /** The caller's login, for bots with `runAsUser`. */
  callerLogin?: Login;
  /** For `runAsUser` without a caller (a subscription): the membership of the resource's author. */
  runAsMembership?: WithId<ProjectMembership>;
  headers?: Record<string, string | string[] | undefined>;
  traceId?: string;
}

/**
 * Prepares and runs one bot execution as Medplum does: the bot's deployed code, an event with
 * `bot`, `input`, `contentType`, `secrets` (Project.secret), `traceId`, `requester`, `headers`,
 * and a `MedplumClient` signed in as the bot's own membership (or as the caller with
 * `runAsUser`) through a login that lives only for the execution. An AuditEvent records it as the
 * bot's `auditEventTrigger` asks.
 */
export class BotExecutor {
  private readonly auth: AuthServices;
  private readonly runtime: BotRuntime;

  constructor(auth: AuthServices, runtime: BotRuntime) {
    this.auth = auth;
    this.runtime = runtime;
  }

  async execute(request: ExecuteRequest): Promise<BotRunResult> {
    const { bot, projectId } = request;
    const code = await this.executableCode(bot, projectId);
    const login = await this.executionLogin(request);
    const project = await this.auth.directory.project(projectId);
    const event: BotEvent = {
      bot: { reference: `Bot/${bot.id}`, display: bot.name },
      contentType: request.contentType,
      input: request.input,
      secrets: secrets(project),
      traceId: request.traceId ?? randomUUID(),
      requester: request.requester as BotEvent['requester'],
      headers: request.headers,
    };
    // Bot.timeout (seconds) is the bot's own choice, within limits (a job's lease is renewed meanwhile).
    const timeoutMs = bot.timeout ? Math.min(Math.max(bot.timeout, 1), MAX_BOT_TIMEOUT_SECONDS) * 1000 : undefined;
    let result: BotRunResult;
    try {
      const session = await this.auth.sessions.fromLogin(login);
      const tokens = await this.auth.tokens.issue(
        { login, profile: session.profile, project: { reference: `Project/${projectId}`, display: project?.name }, scope: login.scope },
        null
      );
      result = await this.runtime.run(`${projectId}/${bot.id}`, code, event, this.auth.config.baseUrl, tokens.access_token, timeoutMs);
    } finally {
      // The token dies with the execution.
      if (login.authMethod === 'execute') {
        await this.auth.logins.revoke(login.id);
      }
    }
    this.audit(bot, projectId, result);
    return result;
  }

  private async executableCode(bot: WithId<Bot>, projectId: string): Promise<string> {
    const url = bot.executableCode?.url;
    const binaryId = url?.startsWith('Binary/') ? url.slice('Binary/'.length) : undefined;
    if (!binaryId) {
      throw new OperationOutcomeError(badRequest('Bot has no deployed code (run $deploy first)'));
    }
    const repo = this.auth.directory.repo(projectId);
    const binary = await repo.readResource<Binary>('Binary', binaryId);
    return (await repo.readBinaryData(binary)).toString('utf8');
  }

  private async executionLogin(request: ExecuteRequest): Promise<Login> {
    if (request.bot.runAsUser && request.callerLogin) {
      return request.callerLogin;
    }
    const membership =
      request.bot.runAsUser && request.runAsMembership
        ? request.runAsMembership
        : await this.auth.directory.membershipOfProfile(`Bot/${request.bot.id}`, request.projectId);
    if (!membership || membership.active === false) {
      throw new OperationOutcomeError(badRequest('Bot has no active membership in its project'));
    }
    return this.auth.logins.create({
      membershipId: membership.id,
      projectId: request.projectId,
      authMethod: 'execute',
      scope: 'openid',
      granted: true,
    });
  }

  private audit(bot: WithId<Bot>, projectId: string, result: BotRunResult): void {
    const trigger = bot.auditEventTrigger ?? 'always';
    const wanted =
      trigger === 'always' || (trigger === 'on-error' && !result.ok) || (trigger === 'on-output' && (result.logs.length > 0 || !result.ok));
    if (!wanted) {
      return;
    }
    const detail = [result.ok ? undefined : result.error, result.logs].filter(Boolean).join('\n');
    this.auth.audit.botExecution(projectId, bot, result.ok, detail, result.durationMs);
  }
}

function secrets(project: Project | undefined): Record<string, ProjectSetting> {
  return Object.fromEntries((project?.secret ?? []).map((s) => [s.name, s]));
}
