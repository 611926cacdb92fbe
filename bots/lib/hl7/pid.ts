/**
 * PID → Patient, after the HL7 v2-to-FHIR IG (PID, CX, XPN, XAD, XTN rows), with the lab's
 * identity configuration deciding which identifier is the national ID and which is the MRN.
 */
import type { Hl7Context, Hl7Segment } from '@medplum/core';
import type { Address, ContactPoint, Extension, HumanName, Identifier, Patient } from '@medplum/fhirtypes';
import { DEFAULT_TIMEZONE, hl7ToFhirDateTime, isValidTimeZone } from './datetime.ts';
import type { Hl7Issue } from './issues.ts';
import { isHl7Null, rawRepetitions, rawSubcomponent, unescapeHl7 } from './segments.ts';
import { DEFAULT_CY_ID_SYSTEM, DEFAULT_MRN_SYSTEM, ERMIS, V2_0203 } from './systems.ts';

export interface PatientIdentityConfig {
  cyIdSystem: string;
  mrnSystem: string;
  /** Where a lab puts the national ID: 'PID-3' with CX.5 in nationalIdTypes, or the whole of PID-2 / PID-4 / PID-19. */
  nationalIdField: 'PID-2' | 'PID-3' | 'PID-4' | 'PID-19';
  /** CX.5 type codes that mark the national ID (in any CX field). */
  nationalIdTypes: string[];
  /** Assigning authorities (CX.4.1, or CX.4.2) whose MR numbers are the clinic's own MRN. */
  mrnAuthorities: string[];
  /** IANA time zone of the sender, for HL7 times sent without an offset (default Europe/Nicosia). */
  timeZone?: string;
}

export const DEFAULT_IDENTITY: PatientIdentityConfig = {
  cyIdSystem: DEFAULT_CY_ID_SYSTEM,
  mrnSystem: DEFAULT_MRN_SYSTEM,
  nationalIdField: 'PID-3',
  nationalIdTypes: ['NNCYP', 'NI'],
  mrnAuthorities: [],
};

export interface PidOptions {
  /** Occurrence of this PID in the message (ERR-2.2), default 1. */
  sequence?: number;
  /** MSH-18, for `\X..\` escapes. */
  charset?: string;
}

export interface PidResult {
  patient: Patient;
  nationalId?: string;
  mrn?: string;
  issues: Hl7Issue[];
}

/** FHIR JSON's primitive extension on birthDate, which @medplum/fhirtypes does not declare. */
export type PatientWithBirthTime = Patient & { _birthDate?: { extension: Extension[] } };

export const BIRTH_TIME_EXTENSION = 'http://hl7.org/fhir/StructureDefinition/patient-birthTime';
/** System for identifiers whose CX.4 names an authority but no registered URI. */
export const authoritySystem = (authority: string): string => `${ERMIS}/sid/hl7-authority/${encodeURIComponent(authority)}`;

/** The CX-typed fields that can hold identifiers, by the PID position they behave like. */
export type CxField = 'PID-2' | 'PID-3' | 'PID-4' | 'PID-19';

type CxKind = 'national' | 'mrn' | 'other';

/** A decoded reader over one segment (unescapes with the message's delimiters and charset). */
interface Reader {
  ctx: Hl7Context;
  text(raw: string | undefined): string;
}

function reader(seg: Hl7Segment, charset: string | undefined): Reader {
  return {
    ctx: seg.context,
    text: (raw) => (raw === undefined || isHl7Null(raw) ? '' : unescapeHl7(raw, seg.context, charset).trim()),
  };
}

export function patientFromPid(pid: Hl7Segment, config: PatientIdentityConfig, options: PidOptions = {}): PidResult {
  const sequence = options.sequence ?? 1;
  const r = reader(pid, options.charset);
  const issues: Hl7Issue[] = [];
  const issue = (field: number, code: Hl7Issue['code'], severity: Hl7Issue['severity'], reason: string, component?: number): void => {
    issues.push({ segment: 'PID', sequence, field, ...(component ? { component } : {}), code, severity, reason });
  };
  const patient: Patient = { resourceType: 'Patient' };

  // Identifiers: PID-3 first (the list), then PID-2, PID-4, PID-19.
  const ids = new IdentifierList();
  const pid3 = rawRepetitions(pid, 3);
  if (pid3.length === 0) {
    issue(3, '101', 'E', 'PID-3 (patient identifier list) is required');
  }
  for (const rep of pid3) {
    ids.add(cxToIdentifier(rep, r, config, 'PID-3'));
  }
  for (const [field, name] of [[2, 'PID-2'], [4, 'PID-4']] as const) {
    for (const rep of rawRepetitions(pid, field)) {
      ids.add(cxToIdentifier(rep, r, config, name));
    }
  }
  const ssn = r.text(rawRepetitions(pid, 19)[0]?.[0]);
  if (ssn) {
    ids.add(
      config.nationalIdField === 'PID-19'
        ? { kind: 'national', identifier: nationalIdentifier(ssn, config) }
        : { kind: 'other', identifier: { type: v2Type('SB'), value: ssn } }
    );
  }
  if (ids.list.length > 0) {
    patient.identifier = ids.list.map((x) => x.identifier);
  }
  const nationalId = ids.list.find((x) => x.kind === 'national')?.identifier.value;
  const mrn = ids.list.find((x) => x.kind === 'mrn')?.identifier.value;

  // Names: every repetition of PID-5, script kept as sent.
  const names = rawRepetitions(pid, 5)
    .map((rep) => xpnToName(rep, r))
    .filter((n): n is HumanName => n !== undefined);
  if (names.length > 0) {
    patient.name = names;
  } else {
    issue(5, '101', 'W', 'PID-5 (patient name) is empty');
  }

  // Birth date (PID-7): a date; a time, when sent, goes to the patient-birthTime extension.
  const dobRaw = r.text(rawRepetitions(pid, 7)[0]?.[0]);
  if (dobRaw) {
    const dob = parseTime(dobRaw, config);
    if (!dob) {
      issue(7, '102', 'E', `PID-7 birth date '${dobRaw}' is not a valid HL7 date`);
    } else {
      patient.birthDate = dob.date;
      if (dob.dateTime) {
        (patient as PatientWithBirthTime)._birthDate = { extension: [{ url: BIRTH_TIME_EXTENSION, valueDateTime: dob.dateTime }] };
      }
    }
  }

  const sexRaw = r.text(rawRepetitions(pid, 8)[0]?.[0]);
  if (sexRaw) {
    const gender = GENDER[sexRaw.toUpperCase()];
    if (gender) {
      patient.gender = gender;
    } else {
      issue(8, '103', 'W', `PID-8 sex '${sexRaw}' is not in HL7 table 0001`);
    }
  }

  const addresses = rawRepetitions(pid, 11)
    .map((rep) => xadToAddress(rep, r))
    .filter((a): a is Address => a !== undefined);
  if (addresses.length > 0) {
    patient.address = addresses;
  }

  const telecom = [
    ...rawRepetitions(pid, 13).map((rep) => xtnToContactPoint(rep, r, 'home')),
    ...rawRepetitions(pid, 14).map((rep) => xtnToContactPoint(rep, r, 'work')),
  ].filter((t): t is ContactPoint => t !== undefined);
  if (telecom.length > 0) {
    patient.telecom = telecom;
  }

  // Death: PID-29 time, else the PID-30 indicator.
  const deathRaw = r.text(rawRepetitions(pid, 29)[0]?.[0]);
  const deathFlag = r.text(rawRepetitions(pid, 30)[0]?.[0]).toUpperCase();
  if (deathRaw) {
    const death = parseTime(deathRaw, config);
    if (death) {
      patient.deceasedDateTime = death.dateTime ?? death.date;
    } else {
      issue(29, '102', 'E', `PID-29 death date '${deathRaw}' is not a valid HL7 date/time`);
    }
  } else if (deathFlag === 'Y' || deathFlag === 'N') {
    patient.deceasedBoolean = deathFlag === 'Y';
  } else if (deathFlag) {
    issue(30, '103', 'W', `PID-30 death indicator '${deathFlag}' is not Y or N`);
  }

  return { patient, ...(nationalId ? { nationalId } : {}), ...(mrn ? { mrn } : {}), issues };
}

const GENDER: Record<string, Patient['gender']> = {
  F: 'female',
  FEMALE: 'female',
  M: 'male',
  MALE: 'male',
  O: 'other',
  A: 'other',
  N: 'other',
  OTHER: 'other',
  U: 'unknown',
  UNKNOWN: 'unknown',
};

/** Identifiers in order, without duplicates (same system, value and type). */
class IdentifierList {
  readonly list: { kind: CxKind; identifier: Identifier }[] = [];

  add(item: { kind: CxKind; identifier: Identifier } | undefined): void {
    if (!item) {
      return;
    }
    const key = identifierKey(item.identifier);
    if (!this.list.some((x) => identifierKey(x.identifier) === key)) {
      this.list.push(item);
    }
  }
}

function identifierKey(id: Identifier): string {
  return `${id.system ?? ''}|${id.value ?? ''}|${id.type?.coding?.[0]?.code ?? ''}`;
}

const v2Type = (code: string): Identifier['type'] => ({ coding: [{ system: V2_0203, code }] });

function nationalIdentifier(value: string, config: PatientIdentityConfig): Identifier {
  return { use: 'official', type: v2Type('NNCYP'), system: config.cyIdSystem, value };
}

/**
 * One CX repetition (raw components) → Identifier, classified as the national ID, the clinic's MRN
 * or another identifier. `field` says which PID position the CX stands in (MRG-1 behaves as PID-3).
 */
function cxToIdentifier(
  rep: string[],
  r: Reader,
  config: PatientIdentityConfig,
  field: CxField
): { kind: CxKind; identifier: Identifier } | undefined {
  const value = r.text(rep[0]);
  if (!value) {
    return undefined;
  }
  const authorityRaw = rep[3] ?? '';
  const namespace = r.text(rawSubcomponent(r.ctx, authorityRaw, 1));
  const universalId = r.text(rawSubcomponent(r.ctx, authorityRaw, 2));
  const universalType = r.text(rawSubcomponent(r.ctx, authorityRaw, 3)).toUpperCase();
  const typeCode = r.text(rep[4]).toUpperCase();

  // By type code in any CX field; by position only where the lab puts the whole ID in PID-2 or PID-4.
  const byType = typeCode !== '' && config.nationalIdTypes.some((t) => t.toUpperCase() === typeCode);
  const byPosition = field !== 'PID-3' && config.nationalIdField === field;
  if (byType || byPosition) {
    return { kind: 'national', identifier: nationalIdentifier(value, config) };
  }
  const authorities = config.mrnAuthorities.map((a) => a.toUpperCase());
  const isClinicMrn =
    typeCode === 'MR' &&
    ((namespace !== '' && authorities.includes(namespace.toUpperCase())) || (universalId !== '' && authorities.includes(universalId.toUpperCase())));
  if (isClinicMrn) {
    return { kind: 'mrn', identifier: { use: 'usual', type: v2Type('MR'), system: config.mrnSystem, value } };
  }

  const identifier: Identifier = {};
  if (typeCode) {
    identifier.type = v2Type(typeCode);
  }
  const system = systemOfAuthority(namespace, universalId, universalType);
  if (system) {
    identifier.system = system;
  }
  identifier.value = value;
  if (namespace || universalId) {
    identifier.assigner = { display: namespace || universalId };
  }
  const start = parseTime(r.text(rep[6]), config);
  const end = parseTime(r.text(rep[7]), config);
  if (start || end) {
    identifier.period = { ...(start ? { start: start.date } : {}), ...(end ? { end: end.date } : {}) };
  }
  return { kind: 'other', identifier };
}

/** CX.4 (HD) → a system URI: a registered universal id when typed, else ermis's per-authority URI. */
function systemOfAuthority(namespace: string, universalId: string, universalType: string): string | undefined {
  if (universalId) {
    if (universalType === 'ISO' && /^[0-2](\.\d+)+$/.test(universalId)) {
      return `urn:oid:${universalId}`;
    }
    if (universalType === 'UUID' && /^[0-9a-f-]{36}$/i.test(universalId)) {
      return `urn:uuid:${universalId.toLowerCase()}`;
    }
    if ((universalType === 'URI' || universalType === 'URL') && /^[a-z][a-z0-9+.-]*:/i.test(universalId)) {
      return universalId;
    }
  }
  const authority = namespace || universalId;
  return authority ? authoritySystem(authority) : undefined;
}

const NAME_USE: Record<string, HumanName['use']> = {
  L: 'official',
  C: 'official',
  R: 'official',
  A: 'usual',
  D: 'usual',
  T: 'usual',
  N: 'nickname',
  M: 'maiden',
  S: 'anonymous',
  TEMP: 'temp',
  B: 'old',
  BAD: 'old',
  NOUSE: 'old',
};

/** XPN → HumanName: 1 family (FN.1), 2 given, 3 further given, 4 suffix, 5 prefix, 6 degree, 7 type. */
function xpnToName(rep: string[], r: Reader): HumanName | undefined {
  const family = r.text(rawSubcomponent(r.ctx, rep[0] ?? '', 1));
  const given = [r.text(rep[1]), r.text(rep[2])].filter((g) => g !== '');
  if (!family && given.length === 0) {
    return undefined;
  }
  const name: HumanName = {};
  const use = NAME_USE[r.text(rep[6]).toUpperCase()];
  if (use) {
    name.use = use;
  }
  if (family) {
    name.family = family;
  }
  if (given.length > 0) {
    name.given = given;
  }
  const prefix = r.text(rep[4]);
  if (prefix) {
    name.prefix = [prefix];
  }
  const suffix = [r.text(rep[3]), r.text(rep[5])].filter((s) => s !== '');
  if (suffix.length > 0) {
    name.suffix = suffix;
  }
  return name;
}

const ADDRESS_USE: Record<string, Address['use']> = { H: 'home', B: 'work', O: 'work', BI: 'billing', C: 'temp', BA: 'old' };
const ADDRESS_TYPE: Record<string, Address['type']> = { M: 'postal', SH: 'postal' };

/** XAD → Address: 1 street (SAD), 2 other designation, 3 city, 4 state, 5 zip, 6 country, 7 type, 9 county. */
function xadToAddress(rep: string[], r: Reader): Address | undefined {
  const sad = rep[0] ?? '';
  const street =
    r.text(rawSubcomponent(r.ctx, sad, 1)) ||
    [r.text(rawSubcomponent(r.ctx, sad, 2)), r.text(rawSubcomponent(r.ctx, sad, 3))].filter((s) => s).join(' ');
  const line = [street, r.text(rep[1])].filter((l) => l !== '');
  const address: Address = {};
  const kind = r.text(rep[6]).toUpperCase();
  if (ADDRESS_USE[kind]) {
    address.use = ADDRESS_USE[kind];
  }
  if (ADDRESS_TYPE[kind]) {
    address.type = ADDRESS_TYPE[kind];
  }
  if (line.length > 0) {
    address.line = line;
  }
  const parts: [keyof Address, string][] = [
    ['city', r.text(rep[2])],
    ['district', r.text(rawSubcomponent(r.ctx, rep[8] ?? '', 1))],
    ['state', r.text(rep[3])],
    ['postalCode', r.text(rep[4])],
    ['country', r.text(rep[5])],
  ];
  for (const [key, value] of parts) {
    if (value) {
      (address as Record<string, unknown>)[key] = value;
    }
  }
  return line.length > 0 || parts.some(([, v]) => v) ? address : undefined;
}

const TELECOM_USE: Record<string, ContactPoint['use']> = { PRN: 'home', ORN: 'home', VHN: 'temp', WPN: 'work' };

/**
 * XTN → ContactPoint: 1 formatted number, 2 use (table 0201), 3 equipment (table 0202), 4 email,
 * 5-8 country/area/local/extension, 12 unformatted number. `fallbackUse` is home for PID-13, work for PID-14.
 */
function xtnToContactPoint(rep: string[], r: Reader, fallbackUse: 'home' | 'work'): ContactPoint | undefined {
  const useCode = r.text(rep[1]).toUpperCase();
  const equipment = r.text(rep[2]).toUpperCase();
  const email = r.text(rep[3]);
  const contact: ContactPoint = {};
  if (email || equipment === 'INTERNET' || equipment === 'X.400' || useCode === 'NET') {
    const value = email || r.text(rep[0]);
    if (!value) {
      return undefined;
    }
    contact.system = 'email';
    contact.value = value;
  } else {
    const composed = [r.text(rep[4]) && `+${r.text(rep[4]).replace(/^\+/, '')}`, r.text(rep[5]), r.text(rep[6])].filter((p) => p).join(' ');
    const extension = r.text(rep[7]);
    const value = r.text(rep[0]) || r.text(rep[11]) || (composed ? composed + (extension ? ` ext. ${extension}` : '') : '');
    if (!value) {
      return undefined;
    }
    contact.system = equipment === 'FX' ? 'fax' : equipment === 'BP' ? 'pager' : 'phone';
    contact.value = value;
  }
  contact.use = equipment === 'CP' ? 'mobile' : (TELECOM_USE[useCode] ?? (useCode ? undefined : fallbackUse));
  if (!contact.use) {
    delete contact.use;
  }
  return contact;
}

/** PID times: the lab's zone (config.timeZone, when Intl knows it) for times sent without an offset. */
function parseTime(text: string, config: Pick<PatientIdentityConfig, 'timeZone'>): { date: string; dateTime?: string } | undefined {
  const zone = config.timeZone && isValidTimeZone(config.timeZone) ? config.timeZone : DEFAULT_TIMEZONE;
  const r = hl7ToFhirDateTime(text, zone);
  if (!r.ok) {
    return undefined;
  }
  return r.hasTime ? { date: r.value.slice(0, 10), dateTime: r.value } : { date: r.value };
}

/** A reader for CX fields of other segments (MRG) that share PID's identifier rules. */
export function identifiersFromCxField(
  seg: Hl7Segment,
  field: number,
  config: PatientIdentityConfig,
  behavesAs: CxField,
  charset?: string
): Identifier[] {
  const r = reader(seg, charset);
  const list = new IdentifierList();
  for (const rep of rawRepetitions(seg, field)) {
    list.add(cxToIdentifier(rep, r, config, behavesAs));
  }
  return list.list.map((x) => x.identifier);
}
