/**
 * A lab profile: how one lab's HL7 is read. It lives in FHIR (DESIGN principle 1):
 *
 * - Organization: the lab. `identifier` `${ERMIS}/sid/lab|<key>` names the profile;
 *   `identifier` `${ERMIS}/sid/hl7-sender|<MSH-4.1>` finds it from a message (MSH-4, the sending
 *   facility, identifies the lab; MSH-3 is its LIS software and changes on upgrades, so it is
 *   not part of the match). Extension LAB_PROFILE_EXTENSION carries the settings as
 *   sub-extensions: `charset` (valueString, table 0211, e.g. `8859/7`), `national-id`
 *   (valueString: `PID-3:<CX.5 type>` or `PID-19`), `timezone` (valueString, IANA),
 *   `decimal-comma` (valueBoolean: the lab writes 1,2 for 1.2), `concept-map` (valueCanonical).
 * - ConceptMap: the lab's local codes → LOINC. `group.source` = labCodeSystem(key), `group.target`
 *   = LOINC. A target with `dependsOn {property: 'unit', value: <UCUM>}` applies only to results
 *   sent in that unit (creatinine in umol/L is 14682-9, in mg/dL 2160-0); a target without one
 *   applies to any unit. Optional conversion (off by default: we store what the lab sent):
 *   `product {property: 'unit', value: <UCUM>}` plus extension CONVERSION_FACTOR_EXTENSION
 *   (valueDecimal) on the target; the target code is then the LOINC of the converted unit.
 * - ObservationDefinition, one per LOINC, `identifier` `observationDefinitionSystem(key)|<LOINC>`,
 *   mirrored in `meta.tag` (R4 gives ObservationDefinition no search parameters, so a lab's are
 *   found with `_tag=<system>|`): `qualifiedInterval` with category
 *   `critical` gives the range outside which a result is critical (low and/or high, in
 *   `quantitativeDetails.unit`).
 */
import type { Hl7Message } from '@medplum/core';
import type { ConceptMap, ConceptMapGroupElementTarget, ObservationDefinition, Organization, Reference } from '@medplum/fhirtypes';
import { DEFAULT_TIMEZONE, isValidTimeZone } from './datetime.ts';
import { component } from './segments.ts';
import { ERMIS, LAB_PROFILE_EXTENSION, LOINC, labCodeSystem } from './systems.ts';
import { toUcum } from './units.ts';

export const LAB_KEY_SYSTEM = `${ERMIS}/sid/lab`;
export const HL7_SENDER_SYSTEM = `${ERMIS}/sid/hl7-sender`;
export const CONVERSION_FACTOR_EXTENSION = `${ERMIS}/StructureDefinition/conversion-factor`;
export const observationDefinitionSystem = (labKey: string): string => `${ERMIS}/sid/observation-definition/${labKey}`;

/** Where the national ID is in PID: `PID-3` with a CX.5 type code, or `PID-19`. */
export type NationalIdLocation = { field: 'PID-3'; typeCode: string } | { field: 'PID-19' };

export interface CodeTarget {
  loinc: string;
  display?: string;
  /** UCUM unit the lab must have sent for this target to apply; undefined = any unit. */
  whenUnit?: string;
  /** Conversion (opt-in): store the value multiplied by `factor` in `unit`. */
  convert?: { unit: string; factor: number };
}

export interface CriticalLimits {
  loinc: string;
  /** UCUM code of the limits. */
  unit?: string;
  low?: number;
  high?: number;
}

export interface LabProfile {
  key: string;
  organization?: Reference<Organization>;
  name?: string;
  /** Table 0211 name or TextDecoder label; used for `\X..\` escapes (the agent decodes the bytes). */
  charset?: string;
  nationalId?: NationalIdLocation;
  /** IANA zone for timestamps sent without an offset. */
  timezone: string;
  decimalComma: boolean;
  conceptMapUrl?: string;
  /** Local code → its LOINC targets, in ConceptMap order. */
  codeMap: Map<string, CodeTarget[]>;
  /** LOINC → critical limits. */
  critical: Map<string, CriticalLimits>;
}

/** A profile with no mappings, for a lab we know nothing about (and for tests). */
export function emptyLabProfile(key: string, options: Partial<Omit<LabProfile, 'key'>> = {}): LabProfile {
  return {
    key,
    timezone: DEFAULT_TIMEZONE,
    decimalComma: false,
    codeMap: new Map(),
    critical: new Map(),
    ...options,
  };
}

export function parseNationalIdLocation(text: string | undefined): NationalIdLocation | undefined {
  const t = (text ?? '').trim().toUpperCase();
  if (t === 'PID-19') {
    return { field: 'PID-19' };
  }
  const m = /^PID-3:([A-Z0-9]+)$/.exec(t);
  return m ? { field: 'PID-3', typeCode: m[1] } : undefined;
}

function targetFrom(t: ConceptMapGroupElementTarget): CodeTarget | undefined {
  if (!t.code || (t.equivalence && ['unmatched', 'disjoint'].includes(t.equivalence))) {
    return undefined;
  }
  const target: CodeTarget = { loinc: t.code };
  if (t.display) {
    target.display = t.display;
  }
  const unitDep = t.dependsOn?.find((d) => d.property === 'unit');
  if (unitDep?.value) {
    target.whenUnit = toUcum(unitDep.value) ?? unitDep.value;
  }
  const product = t.product?.find((p) => p.property === 'unit');
  const factor = t.extension?.find((e) => e.url === CONVERSION_FACTOR_EXTENSION)?.valueDecimal;
  if (product?.value && typeof factor === 'number' && Number.isFinite(factor) && factor > 0) {
    target.convert = { unit: toUcum(product.value) ?? product.value, factor };
  }
  return target;
}

/**
 * Builds the profile from its resources. Anything malformed is skipped rather than fatal: a typo
 * in one mapping must not stop a lab's results (the result then simply carries no LOINC).
 */
export function labProfileFromResources(org: Organization, conceptMaps: ConceptMap[], definitions: ObservationDefinition[]): LabProfile {
  const key = org.identifier?.find((i) => i.system === LAB_KEY_SYSTEM)?.value ?? org.id ?? 'unknown';
  const settings = org.extension?.find((e) => e.url === LAB_PROFILE_EXTENSION)?.extension ?? [];
  const setting = (url: string): string | undefined => {
    const e = settings.find((s) => s.url === url);
    return e?.valueString ?? e?.valueCode ?? e?.valueCanonical ?? e?.valueUri;
  };
  const tz = setting('timezone');
  const profile = emptyLabProfile(key, {
    name: org.name,
    charset: setting('charset'),
    nationalId: parseNationalIdLocation(setting('national-id')),
    timezone: tz && isValidTimeZone(tz) ? tz : DEFAULT_TIMEZONE,
    decimalComma: settings.find((s) => s.url === 'decimal-comma')?.valueBoolean === true,
    conceptMapUrl: setting('concept-map'),
  });
  if (org.id) {
    profile.organization = { reference: `Organization/${org.id}`, display: org.name };
  }
  const source = labCodeSystem(key);
  const maps = profile.conceptMapUrl ? conceptMaps.filter((m) => m.url === profile.conceptMapUrl) : conceptMaps;
  for (const map of maps) {
    for (const group of map.group ?? []) {
      if ((group.source && group.source !== source) || (group.target && group.target !== LOINC)) {
        continue;
      }
      for (const element of group.element ?? []) {
        if (!element.code) {
          continue;
        }
        const targets = (element.target ?? []).map(targetFrom).filter((t): t is CodeTarget => t !== undefined);
        if (targets.length > 0) {
          profile.codeMap.set(element.code, [...(profile.codeMap.get(element.code) ?? []), ...targets]);
        }
      }
    }
  }
  for (const def of definitions) {
    const loinc = def.code?.coding?.find((c) => c.system === LOINC)?.code;
    const interval = def.qualifiedInterval?.find((q) => q.category === 'critical' && q.range);
    if (!loinc || !interval?.range) {
      continue;
    }
    const unitCoding = def.quantitativeDetails?.unit?.coding?.[0];
    const low = interval.range.low?.value;
    const high = interval.range.high?.value;
    const unit = unitCoding?.code ?? interval.range.low?.code ?? interval.range.high?.code;
    profile.critical.set(loinc, {
      loinc,
      unit: unit ? (toUcum(unit) ?? unit) : undefined,
      low: typeof low === 'number' ? low : undefined,
      high: typeof high === 'number' ? high : undefined,
    });
  }
  return profile;
}

/** MSH-3.1 / MSH-4.1: who sent the message. The handler looks the lab up by `facility`. */
export function labProfileKeyFromMessage(msg: Hl7Message): { application: string; facility: string } {
  const msh = msg.getSegment('MSH');
  if (!msh) {
    return { application: '', facility: '' };
  }
  return { application: component(msh, 3, 1), facility: component(msh, 4, 1) };
}

/**
 * The LOINC target for a local code sent in `ucumUnit`: the first target whose dependsOn unit
 * matches, else the first target without a unit condition.
 */
export function lookupLocalCode(profile: LabProfile, localCode: string, ucumUnit: string | undefined): CodeTarget | undefined {
  const targets = profile.codeMap.get(localCode);
  if (!targets) {
    return undefined;
  }
  return targets.find((t) => t.whenUnit !== undefined && t.whenUnit === ucumUnit) ?? targets.find((t) => t.whenUnit === undefined);
}
