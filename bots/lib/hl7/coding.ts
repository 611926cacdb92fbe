/**
 * CE/CWE/CNE (code^text^system^altCode^altText^altSystem^version^altVersion^originalText) →
 * CodeableConcept. HL7 coding-system names (table 0396) become FHIR system URIs; a code without a
 * system, or with a local one (L, 99zzz), is the lab's own code, under labCodeSystem(labKey), so it
 * can be searched and mapped through the lab's ConceptMap.
 */
import type { CodeableConcept, Coding } from '@medplum/fhirtypes';
import { LOINC, UCUM, labCodeSystem, v2Table } from './systems.ts';

export const SNOMED = 'http://snomed.info/sct';

const NAMED_SYSTEMS: Record<string, string> = {
  LN: LOINC,
  LOINC: LOINC,
  SCT: SNOMED,
  SNOMED: SNOMED,
  'SNOMED-CT': SNOMED,
  SNM: 'http://snomed.info/sct',
  UCUM: UCUM,
  I10: 'http://hl7.org/fhir/sid/icd-10',
  I10C: 'http://hl7.org/fhir/sid/icd-10-cm',
  I9C: 'http://hl7.org/fhir/sid/icd-9-cm',
  CPT4: 'http://www.ama-assn.org/go/cpt',
  C4: 'http://www.ama-assn.org/go/cpt',
  NDC: 'http://hl7.org/fhir/sid/ndc',
  RXNORM: 'http://www.nlm.nih.gov/research/umls/rxnorm',
  ATC: 'http://www.whocc.no/atc',
};

/** Whether a coding-system name means "this lab's own codes". */
export function isLocalSystemName(name: string): boolean {
  const n = name.trim().toUpperCase();
  return n === '' || n === 'L' || n === 'LOCAL' || /^99[A-Z0-9]{0,3}$/.test(n);
}

/** Coding-system name (CWE.3) → system URI; undefined for names we do not know. */
export function systemFromName(name: string, labKey: string): string | undefined {
  const n = name.trim();
  const upper = n.toUpperCase();
  if (isLocalSystemName(n)) {
    return labCodeSystem(labKey);
  }
  if (NAMED_SYSTEMS[upper]) {
    return NAMED_SYSTEMS[upper];
  }
  const table = /^HL7(\d{4})$/.exec(upper);
  if (table) {
    return v2Table(table[1]);
  }
  if (/^(https?:|urn:)/i.test(n)) {
    return n;
  }
  // An OID used as a system name.
  if (/^\d+(\.\d+)+$/.test(n)) {
    return `urn:oid:${n}`;
  }
  return undefined;
}

export interface CweParts {
  code: string;
  text: string;
  system: string;
  altCode: string;
  altText: string;
  altSystem: string;
  version: string;
  altVersion: string;
  originalText: string;
}

function coding(code: string, text: string, systemName: string, version: string, labKey: string): Coding | undefined {
  if (!code) {
    return undefined;
  }
  const c: Coding = {};
  const system = systemFromName(systemName, labKey);
  if (system) {
    c.system = system;
  }
  if (version && system !== labCodeSystem(labKey)) {
    c.version = version;
  }
  c.code = code;
  if (text) {
    c.display = text;
  }
  return c;
}

/** CWE parts → CodeableConcept; undefined when nothing is valued. */
export function cweToCodeableConcept(p: CweParts, labKey: string): CodeableConcept | undefined {
  const codings: Coding[] = [];
  const first = coding(p.code, p.text, p.system, p.version, labKey);
  if (first) {
    codings.push(first);
  }
  const alt = coding(p.altCode, p.altText, p.altSystem, p.altVersion, labKey);
  if (alt && !(first && alt.system === first.system && alt.code === first.code)) {
    codings.push(alt);
  }
  const text = p.originalText || (!first ? p.text || p.altText : undefined);
  if (codings.length === 0 && !text) {
    return undefined;
  }
  const cc: CodeableConcept = {};
  if (codings.length > 0) {
    cc.coding = codings;
  }
  if (text) {
    cc.text = text;
  }
  return cc;
}
