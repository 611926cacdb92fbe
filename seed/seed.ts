/**
 * Idempotent bootstrap of a project for the HL7 lab pipeline, as a client of the server (it works
 * against any Medplum-compatible server): the lab profiles of seed/labs, the hl7-inbound bot
 * (created once, its code deployed every run), the agent's client application, and the Agent with
 * one MLLP channel whose Endpoint points at the bot. Run again, it changes nothing that is already
 * as it should be.
 *
 *   npm run seed    (BASE_URL, ADMIN_EMAIL, ADMIN_PASSWORD, MLLP_PORT)
 *
 * Prints a JSON summary (agent id, client id and secret) for starting the agent.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { ClientStorage, MedplumClient, MemoryStorage } from '@medplum/core';
import type { Agent, Bot, ClientApplication, Endpoint, Resource } from '@medplum/fhirtypes';

const ROOT = path.resolve(import.meta.dirname, '..');
const ERMIS = 'https://ermis.health/fhir';
export const SEED_SYSTEM = `${ERMIS}/sid/seed`;
export const HL7_BOT_NAME = 'hl7-inbound';
export const AGENT_NAME = 'ermis-agent';
export const LAB_CHANNEL = 'lab-results';

export interface SeedOptions {
  /** MLLP port of the agent's lab channel (0: any free port, chosen when the agent starts). */
  mllpPort: number;
  /** Options appended to the channel's mllp:// address (e.g. `enhanced=true&offline=reject`). */
  channelOptions?: string;
  /** The built bot (bots/hl7-inbound/dist/index.js). */
  botCode: string;
}

export interface SeedResult {
  projectId: string;
  botId: string;
  agentId: string;
  endpointId: string;
  clientId: string;
  clientSecret: string;
  labs: string[];
}

/** Signs in with email and password (PKCE S256, as a browser would), choosing `projectName` when there are several. */
export async function signIn(baseUrl: string, email: string, password: string, projectName = process.env.FIRST_PROJECT_NAME ?? 'ermis'): Promise<MedplumClient> {
  const storage = new ClientStorage(new MemoryStorage());
  const verifier = randomBytes(32).toString('base64url');
  storage.setString('codeVerifier', verifier);
  const medplum = new MedplumClient({ baseUrl, storage, fetch: (url: string, init: RequestInit) => fetch(url, init) });
  const response = await medplum.startLogin({ email, password, codeChallenge: createHash('sha256').update(verifier).digest('base64url'), codeChallengeMethod: 'S256' });
  let code = response.code;
  if (!code && response.login && response.memberships?.length) {
    // Several projects (the first admin is also in Super Admin): the one named, else the first other.
    const chosen =
      response.memberships.find((m) => m.project?.display === projectName) ?? response.memberships.find((m) => m.project?.display !== 'Super Admin') ?? response.memberships[0];
    code = ((await medplum.post('auth/profile', { login: response.login, profile: chosen.id })) as { code?: string }).code;
  }
  if (!code) {
    throw new Error(`Sign-in of ${email} did not complete`);
  }
  await medplum.processCode(code);
  return medplum;
}

/** The resources of every lab profile under seed/labs. */
export function labResources(): Resource[] {
  const dir = path.join(ROOT, 'seed', 'labs');
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .flatMap((f) => JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as Resource[]);
}

export async function seed(medplum: MedplumClient, options: SeedOptions): Promise<SeedResult> {
  const projectId = medplum.getProject()?.id ?? ((await medplum.get('auth/me', { cache: 'no-cache' })) as { project?: { id?: string } }).project?.id;
  if (!projectId) {
    throw new Error('Not signed in to a project');
  }
  const labs: string[] = [];
  for (const resource of labResources()) {
    const saved = await upsertByKey(medplum, resource);
    if (saved.resourceType === 'Organization') {
      labs.push(saved.id as string);
    }
  }

  const bot = await findOrCreate<Bot>(medplum, 'Bot', { identifier: `${SEED_SYSTEM}|${HL7_BOT_NAME}` }, async () => {
    const created = (await medplum.post(`admin/projects/${projectId}/bot`, { name: HL7_BOT_NAME, description: 'HL7 v2 inbound: ORU^R01 lab results and ADT' })) as Bot;
    return medplum.updateResource<Bot>({ ...created, identifier: [{ system: SEED_SYSTEM, value: HL7_BOT_NAME }] });
  });
  await medplum.post(medplum.fhirUrl('Bot', bot.id as string, '$deploy'), { code: options.botCode, filename: 'index.js' });

  // ClientApplication has no identifier: it is found by its name.
  const client = await findOrCreate<ClientApplication>(medplum, 'ClientApplication', { 'name:exact': AGENT_NAME }, async () =>
    (await medplum.post(`admin/projects/${projectId}/client`, { name: AGENT_NAME, description: 'The MLLP agent' })) as ClientApplication
  );

  const query = options.channelOptions ? `?${options.channelOptions}` : '';
  const endpoint = (await upsertByKey(medplum, {
    resourceType: 'Endpoint',
    identifier: [{ system: SEED_SYSTEM, value: `${AGENT_NAME}/${LAB_CHANNEL}` }],
    status: 'active',
    name: 'Lab results over MLLP',
    connectionType: { system: 'http://terminology.hl7.org/CodeSystem/endpoint-connection-type', code: 'hl7v2-mllp' },
    payloadType: [{ text: 'HL7 v2' }],
    address: `mllp://0.0.0.0:${options.mllpPort}${query}`,
  } satisfies Endpoint)) as Endpoint;
  const agent = (await upsertByKey(medplum, {
    resourceType: 'Agent',
    identifier: [{ system: SEED_SYSTEM, value: AGENT_NAME }],
    name: AGENT_NAME,
    status: 'active',
    channel: [{ name: LAB_CHANNEL, endpoint: { reference: `Endpoint/${endpoint.id}` }, targetReference: { reference: `Bot/${bot.id}` } }],
  } satisfies Agent)) as Agent;

  return {
    projectId,
    botId: bot.id as string,
    agentId: agent.id as string,
    endpointId: endpoint.id as string,
    clientId: client.id as string,
    clientSecret: client.secret as string,
    labs,
  };
}

/** Created once (found again by `query` afterwards). */
async function findOrCreate<T extends Bot | ClientApplication>(medplum: MedplumClient, type: T['resourceType'], query: Record<string, string>, create: () => Promise<T>): Promise<T> {
  const found = await medplum.searchOne(type, query, { cache: 'no-cache' });
  return (found as T | undefined) ?? create();
}

/** Conditional update by the resource's first identifier (or its canonical url): created or brought up to date. */
async function upsertByKey(medplum: MedplumClient, resource: Resource): Promise<Resource> {
  const withKey = resource as Resource & { identifier?: { system?: string; value?: string }[] | { system?: string; value?: string }; url?: string };
  const identifiers = Array.isArray(withKey.identifier) ? withKey.identifier : withKey.identifier ? [withKey.identifier] : [];
  const first = identifiers[0];
  if (resource.resourceType === 'ObservationDefinition' && first?.system && first.value) {
    // ObservationDefinition has no search parameters in R4: its identifier is mirrored in a tag.
    const tagged = { ...resource, meta: { ...resource.meta, tag: [...(resource.meta?.tag ?? []).filter((t) => t.system !== first.system), { system: first.system, code: first.value }] } };
    return medplum.put(medplum.fhirUrl('ObservationDefinition') + `?_tag=${encodeURIComponent(`${first.system}|${first.value}`)}`, tagged) as Promise<Resource>;
  }
  const criteria = first?.system && first.value ? `identifier=${encodeURIComponent(`${first.system}|${first.value}`)}` : withKey.url ? `url=${encodeURIComponent(withKey.url)}` : undefined;
  if (!criteria) {
    throw new Error(`Seed resource ${resource.resourceType} has no identifier or url`);
  }
  return medplum.put(medplum.fhirUrl(resource.resourceType) + `?${criteria}`, resource) as Promise<Resource>;
}

if (import.meta.main) {
  const baseUrl = process.env.BASE_URL ?? `http://localhost:${process.env.PORT ?? 8103}/`;
  const email = process.env.ADMIN_EMAIL ?? 'admin@example.com';
  const password = process.env.ADMIN_PASSWORD;
  if (!password) {
    console.error('ADMIN_PASSWORD is required (the admin password the server printed at its first start)');
    process.exit(2);
  }
  const { buildBots } = await import('../scripts/build-bots.ts');
  const [built] = await buildBots([HL7_BOT_NAME]);
  const medplum = await signIn(baseUrl, email, password);
  const result = await seed(medplum, { mllpPort: Number(process.env.MLLP_PORT ?? 2575), botCode: readFileSync(built.dist, 'utf8') });
  console.log(JSON.stringify(result, null, 2));
}
