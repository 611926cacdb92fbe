import { getSearchParameters } from '@medplum/core';
import type { CapabilityStatement, CapabilityStatementRestResource, ResourceType } from '@medplum/fhirtypes';
import { isStorableResourceType } from './definitions.ts';
import type { DefinitionsOverlay } from './repo/definitions-overlay.ts';

const SEARCHABLE_TYPES = new Set(['number', 'date', 'string', 'token', 'reference', 'quantity', 'uri']);

/** The CapabilityStatement, generated from the loaded definitions and what the server implements. */
export function buildCapabilityStatement(overlay: DefinitionsOverlay, baseUrl: string, version: string): CapabilityStatement {
  const resourceTypes = overlay
    .search({ resourceType: 'StructureDefinition' })
    .map((sd) => sd as { kind?: string; abstract?: boolean; type?: string; derivation?: string })
    .filter((sd) => sd.kind === 'resource' && !sd.abstract && sd.derivation !== 'constraint' && sd.type)
    .map((sd) => sd.type as ResourceType)
    .filter((type, i, all) => all.indexOf(type) === i && isStorableResourceType(type))
    .sort();

  const resource: CapabilityStatementRestResource[] = resourceTypes.map((type) => ({
    type,
    profile: `http://hl7.org/fhir/StructureDefinition/${type}`,
    interaction: ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'history-type', 'create', 'search-type'].map(
      (code) => ({ code: code as 'read' })
    ),
    versioning: 'versioned',
    readHistory: true,
    updateCreate: true,
    conditionalCreate: true,
    conditionalRead: 'not-supported',
    conditionalUpdate: true,
    conditionalDelete: 'single',
    referencePolicy: ['literal', 'logical'],
    searchParam: Object.values(getSearchParameters(type) ?? {})
      .filter((p) => SEARCHABLE_TYPES.has(p.type) && p.code !== '_compartment' && p.code !== '_project')
      .map((p) => ({ name: p.code, definition: p.url, type: p.type })),
    operation:
      type === 'ValueSet'
        ? [{ name: 'expand', definition: 'http://hl7.org/fhir/OperationDefinition/ValueSet-expand' }]
        : [{ name: 'validate', definition: 'http://hl7.org/fhir/OperationDefinition/Resource-validate' }],
  }));

  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'ermis', version },
    implementation: { description: 'ermis FHIR R4 server', url: `${baseUrl}fhir/R4` },
    fhirVersion: '4.0.1',
    format: ['json'],
    patchFormat: ['application/json-patch+json', 'application/fhir+json'],
    rest: [
      {
        mode: 'server',
        // SMART App Launch: where the OAuth endpoints are (clients that do not read .well-known look here).
        security: {
          cors: true,
          service: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }] }],
          extension: [
            {
              url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
              extension: [
                { url: 'authorize', valueUri: `${baseUrl}oauth2/authorize` },
                { url: 'token', valueUri: `${baseUrl}oauth2/token` },
                { url: 'introspect', valueUri: `${baseUrl}oauth2/introspect` },
                { url: 'revoke', valueUri: `${baseUrl}oauth2/revoke` },
              ],
            },
          ],
        },
        resource,
        interaction: [{ code: 'transaction' }, { code: 'batch' }, { code: 'search-system' }, { code: 'history-system' }],
        operation: [{ name: 'versions', definition: 'http://hl7.org/fhir/OperationDefinition/CapabilityStatement-versions' }],
      },
    ],
  };
}
