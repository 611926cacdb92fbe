import { allOk, badRequest, OperationOutcomeError } from '@medplum/core';
import type { FhirRequest, FhirResponse } from '@medplum/fhir-router';
import type { Parameters, Resource } from '@medplum/fhirtypes';
import type { PostgresRepository } from '../repo/postgres-repository.ts';

/** `POST {type}/$validate`: the resource (or a Parameters with a `resource` part) is validated, never stored. */
export async function validateOperation(req: FhirRequest, repo: PostgresRepository): Promise<FhirResponse> {
  const { resourceType } = req.params;
  let resource = req.body as Resource | undefined;
  if (resource?.resourceType === 'Parameters' && resourceType !== 'Parameters') {
    resource = (resource as Parameters).parameter?.find((p) => p.name === 'resource')?.resource;
  }
  if (!resource || typeof resource !== 'object') {
    throw new OperationOutcomeError(badRequest('Missing resource to validate'));
  }
  if (resource.resourceType !== resourceType) {
    throw new OperationOutcomeError(
      badRequest(`Incorrect resource type: expected ${resourceType}, but found ${resource.resourceType ?? '<EMPTY>'}`)
    );
  }
  await repo.validateOnly(resource);
  return [allOk, allOk];
}
