import { getStatus, isOk } from '@medplum/core';
import type { FhirResponse } from '@medplum/fhir-router';
import type { Binary, Bundle, Resource } from '@medplum/fhirtypes';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { AttachmentUrls } from '../fhir/attachments.ts';
import type { Presenter } from '../fhir/presentation.ts';
import type { PostgresRepository } from '../fhir/repo/postgres-repository.ts';

export interface ResponseServices {
  presenter: Presenter;
  attachments: AttachmentUrls;
  baseUrl: string;
}

/** Writes a fhir-router result with FHIR's HTTP conventions (status, ETag, Location, Prefer, _summary, ...). */
export async function sendFhirResponse(
  request: FastifyRequest,
  reply: FastifyReply,
  services: ResponseServices,
  repo: PostgresRepository,
  [outcome, resource]: FhirResponse
): Promise<FastifyReply> {
  const status = getStatus(outcome);
  reply.status(status);
  if (!resource || !isOk(outcome)) {
    return sendJson(request, reply, outcome);
  }
  const versionId = resource.meta?.versionId;
  if (versionId) {
    reply.header('ETag', `W/"${versionId}"`);
  }
  if (resource.meta?.lastUpdated) {
    reply.header('Last-Modified', new Date(resource.meta.lastUpdated).toUTCString());
  }
  if (status === 201 && resource.id) {
    reply.header(
      'Location',
      `${services.baseUrl}fhir/R4/${resource.resourceType}/${resource.id}${versionId ? `/_history/${versionId}` : ''}`
    );
  }
  const prefer = preferReturn(request);
  if (prefer === 'minimal' && request.method !== 'GET') {
    return reply.send();
  }
  if (prefer === 'OperationOutcome' && request.method !== 'GET') {
    return sendJson(request, reply, outcome);
  }
  return sendJson(request, reply, await presentResource(request, services, repo, resource));
}

/**
 * Applies _summary/_elements, hides extended meta and turns stored Binary references into signed
 * URLs — only for Binaries this reader may read.
 */
async function presentResource(
  request: FastifyRequest,
  services: ResponseServices,
  repo: PostgresRepository,
  resource: Resource
): Promise<Resource> {
  const query = request.query as Record<string, string | string[] | undefined>;
  const elements = first(query._elements);
  const presented = services.presenter.present(resource, {
    summary: first(query._summary),
    elements: elements ? elements.split(',') : undefined,
    extended: request.headers['x-medplum'] === 'extended',
  });
  addBinaryUrls(presented, services.attachments);
  const referenced = services.attachments.referencedBinaries(presented);
  return referenced.length
    ? services.attachments.toFetchable(presented, await repo.readableBinaries(referenced))
    : presented;
}

/** A Binary in a response carries the signed URL of its content (as Medplum's do). */
function addBinaryUrls(resource: Resource, attachments: AttachmentUrls): void {
  if (resource.resourceType === 'Binary' && resource.id && resource.meta?.versionId) {
    (resource as Binary & { url?: string }).url = attachments.sign({ id: resource.id, versionId: resource.meta.versionId });
  } else if (resource.resourceType === 'Bundle') {
    for (const entry of (resource as Bundle).entry ?? []) {
      if (entry.resource) {
        addBinaryUrls(entry.resource, attachments);
      }
    }
  }
}

export function sendJson(request: FastifyRequest, reply: FastifyReply, body: unknown): FastifyReply {
  const query = request.query as Record<string, string | string[] | undefined>;
  const pretty = first(query._pretty) === 'true';
  const accept = request.headers.accept ?? '';
  const contentType =
    accept.includes('application/json') && !accept.includes('application/fhir+json') ? 'application/json' : 'application/fhir+json';
  reply.header('Content-Type', `${contentType}; charset=utf-8`);
  return reply.send(JSON.stringify(body, undefined, pretty ? 2 : undefined));
}

function preferReturn(request: FastifyRequest): string | undefined {
  const prefer = request.headers.prefer;
  const value = Array.isArray(prefer) ? prefer.join(',') : prefer;
  return value ? /return=([A-Za-z]+)/.exec(value)?.[1] : undefined;
}

function first(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}
