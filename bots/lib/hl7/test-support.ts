/**
 * Shared by the HL7 mapping tests (not bundled into bots): reading test data in place, parsing
 * messages written with any line ending, and a profile for the seeded labs.
 */
import { Hl7Message } from '@medplum/core';
import type { ConceptMap, ObservationDefinition, Organization, Resource } from '@medplum/fhirtypes';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { labProfileFromResources, type LabProfile } from './lab-profile.ts';

export const TESTDATA = path.resolve(import.meta.dirname, '../../../../shared/testdata');
export const SEED_LABS = path.resolve(import.meta.dirname, '../../../seed/labs');

/** HL7 text with LF/CRLF line ends (as files and template literals have them) → Hl7Message. */
export function parseHl7(text: string): Hl7Message {
  return Hl7Message.parse(text.replace(/\r\n|\n/g, '\r').replace(/\r+$/, ''));
}

export function seedResources(lab: string): Resource[] {
  return JSON.parse(readFileSync(path.join(SEED_LABS, `${lab}.json`), 'utf8')) as Resource[];
}

/** The profile the handler would build from a seeded lab's resources. */
export function seededProfile(lab: string): LabProfile {
  const resources = seedResources(lab);
  const org = resources.find((r): r is Organization => r.resourceType === 'Organization');
  if (!org) {
    throw new Error(`no Organization in seed/labs/${lab}.json`);
  }
  return labProfileFromResources(
    org,
    resources.filter((r): r is ConceptMap => r.resourceType === 'ConceptMap'),
    resources.filter((r): r is ObservationDefinition => r.resourceType === 'ObservationDefinition')
  );
}
