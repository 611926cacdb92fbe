/**
 * ORU^R01 → FHIR DiagnosticReport / Observation / Specimen, after the HL7 v2-to-FHIR IG
 * (lab-domain §2–§4), as pure functions. The resources carry no ids, subjects or references to
 * each other: the bot handler links them in one transaction bundle. Business identifiers make the
 * writes idempotent: the report's FILL/PLAC numbers, each result's `${filler}|${OBX-3}|${OBX-4}`,
 * each specimen's SPM-2.
 *
 * Decisions beyond the IG (each is tested):
 * - Results are grouped by position: PID opens a patient group, OBR an order group (with the ORC
 *   just before it); OBX/NTE/SPM belong to the last OBR; an OBX after an SPM is that specimen's.
 * - A report needs a filler (ORC-3/OBR-3) or placer number (101 at OBR-3 otherwise), and OBR-4
 *   (101). Without a filler number `filler` is `PLAC:<placer>` and only PLAC is an identifier.
 * - Codes without a coding system are the lab's codes (labCodeSystem); the profile's ConceptMap
 *   adds the LOINC coding, chosen by the unit sent.
 * - OBR-25 empty or unknown (Y, Z): the report status is derived from the results.
 * - OBX-11 empty: status `unknown` with a warning (the public corpus does this; rejecting results
 *   for it makes labs resend forever). O ("order detail only") makes no Observation.
 * - ED/RP results go to the report's presentedForm; the Observation keeps a note pointing there.
 * - An opt-in unit conversion stores the converted value; the value as sent stays in the
 *   ORIGINAL_VALUE_EXTENSION and the reference range text stays as sent.
 * - Timestamps without an offset are read in the profile's time zone; unreadable ones are 102.
 * - `\X..\` escapes are decoded in MSH-18's charset, else the profile's (the agent has already
 *   decoded the bytes of the message itself).
 */
import type { Hl7Message, Hl7Segment } from '@medplum/core';
import type {
  Annotation,
  Attachment,
  CodeableConcept,
  Coding,
  DiagnosticReport,
  Identifier,
  Observation,
  ObservationReferenceRange,
  Quantity,
  Specimen,
} from '@medplum/fhirtypes';
import { cweToCodeableConcept, type CweParts } from './coding.ts';
import { criticalFinding } from './critical.ts';
import { hl7ToFhirDateTime, hl7ToFhirInstant } from './datetime.ts';
import type { Hl7ErrorCode, Hl7Issue } from './issues.ts';
import { lookupLocalCode, type CodeTarget, type LabProfile } from './lab-profile.ts';
import { component, rawComponent, rawRepetitions, rawSubcomponent, textLines, unescapeHl7 } from './segments.ts';
import {
  ERMIS,
  LOINC,
  OBSERVATION_CATEGORY,
  PLACER_ORDER_SYSTEM,
  UCUM,
  V2_0203,
  V3_INTERPRETATION,
  fillerOrderSystem,
  labCodeSystem,
  labResultSystem,
  specimenSystem,
  v2Table,
} from './systems.ts';
import { unitFromCwe, type UnitInfo } from './units.ts';
import { mapObxValue, parseRange, quantity } from './values.ts';

export type { Hl7Issue } from './issues.ts';

/** The value as the lab sent it, on an Observation whose value was converted by the profile. */
export const ORIGINAL_VALUE_EXTENSION = `${ERMIS}/StructureDefinition/original-value`;
export const DATA_ABSENT_REASON = 'http://terminology.hl7.org/CodeSystem/data-absent-reason';

export interface MappedResult {
  /** labResultSystem value: `${filler}|${OBX-3.1}|${OBX-4}`. */
  key: string;
  observation: Observation;
  critical?: { reason: string; flag: 'HH' | 'LL' | 'AA' | 'limit' };
  /** Index in MappedReport.specimens when the OBX followed an SPM (an observation about that specimen). */
  specimenIndex?: number;
}

export interface MappedReport {
  /** Index in `msg.segments` of the PID this report belongs to. */
  pidSegmentIndex: number;
  placer?: string;
  /** Filler order number; `PLAC:<placer>` when the lab sent none. */
  filler: string;
  report: DiagnosticReport;
  results: MappedResult[];
  specimens: { key: string; specimen: Specimen }[];
  /** NTEs after the OBR, one string per NTE (repetitions joined by line breaks). */
  orderNotes: string[];
}

export interface OruMapping {
  messageType: string;
  controlId: string;
  reports: MappedReport[];
  warnings: Hl7Issue[];
}

export type OruResult = { ok: true; mapping: OruMapping } | { ok: false; issues: Hl7Issue[] };

interface ObxEntry {
  seg: Hl7Segment;
  notes: string[];
  specimenIndex?: number;
}

interface SpmEntry {
  seg: Hl7Segment;
  notes: string[];
}

interface OrderGroup {
  pidIndex: number;
  orc?: Hl7Segment;
  obr: Hl7Segment;
  notes: string[];
  obxs: ObxEntry[];
  spms: SpmEntry[];
}

/** Segments an ORU_R01 may carry that we do not map (patient details are pid.ts's job). */
const IGNORED_SEGMENTS = new Set(['SFT', 'PD1', 'NK1', 'PV1', 'PV2', 'TQ1', 'TQ2', 'CTD', 'FT1', 'CTI', 'DSC']);

const OBR25_STATUS: Record<string, DiagnosticReport['status']> = {
  O: 'registered',
  I: 'registered',
  S: 'registered',
  A: 'partial',
  P: 'preliminary',
  C: 'corrected',
  M: 'corrected',
  R: 'partial',
  N: 'partial',
  F: 'final',
  X: 'cancelled',
};

const OBX11_STATUS: Record<string, Observation['status']> = {
  F: 'final',
  P: 'preliminary',
  C: 'corrected',
  A: 'amended',
  B: 'amended',
  D: 'entered-in-error',
  W: 'entered-in-error',
  X: 'cancelled',
  N: 'unknown',
  I: 'registered',
  R: 'preliminary',
  S: 'preliminary',
  V: 'final',
  U: 'final',
};

/** Table 0078 codes that are also active v3 ObservationInterpretation codes (identity map). */
const INTERPRETATION_DISPLAY: Record<string, string> = {
  '<': 'Off scale low',
  '>': 'Off scale high',
  A: 'Abnormal',
  AA: 'Critical abnormal',
  B: 'Better',
  D: 'Significant change down',
  DET: 'Detected',
  H: 'High',
  HH: 'Critical high',
  HU: 'Significantly high',
  I: 'Intermediate',
  IE: 'Insufficient evidence',
  IND: 'Indeterminate',
  L: 'Low',
  LL: 'Critical low',
  LU: 'Significantly low',
  MS: 'moderately susceptible',
  N: 'Normal',
  ND: 'Not detected',
  NEG: 'Negative',
  NR: 'Non-reactive',
  NS: 'Non-susceptible',
  POS: 'Positive',
  R: 'Resistant',
  RR: 'Reactive',
  S: 'Susceptible',
  SDD: 'Susceptible-dose dependent',
  'SYN-R': 'Synergy - resistant',
  'SYN-S': 'Synergy - susceptible',
  U: 'Significant change up',
  VS: 'very susceptible',
  W: 'Worse',
  WR: 'Weakly reactive',
};
/** Table 0078 codes the IG leaves unmapped (inactive in v3). */
const DROPPED_INTERPRETATIONS = new Set(['AC', 'HM', 'QCF', 'TOX', 'OBX', 'NULL']);

const LAB_CATEGORY: CodeableConcept = { coding: [{ system: v2Table('0074'), code: 'LAB', display: 'Laboratory' }] };
const OBSERVATION_LAB_CATEGORY: CodeableConcept = { coding: [{ system: OBSERVATION_CATEGORY, code: 'laboratory', display: 'Laboratory' }] };

/** Maps an ORU^R01. Never throws: anything unusable comes back as issues. */
export function mapOru(msg: Hl7Message, profile: LabProfile): OruResult {
  try {
    return new OruMapper(msg, profile).run();
  } catch (err) {
    // A bug of ours, not the lab's: AR-worthy (207) so the sender retries after a fix.
    return {
      ok: false,
      issues: [{ segment: 'MSH', sequence: 1, code: '207', severity: 'E', reason: `internal mapping error: ${err instanceof Error ? err.message : String(err)}` }],
    };
  }
}

class OruMapper {
  readonly msg: Hl7Message;
  readonly profile: LabProfile;
  readonly issues: Hl7Issue[] = [];
  private readonly sequence = new Map<Hl7Segment, number>();
  /** For `\X..\` escapes: MSH-18 as declared, else the lab's configured charset. */
  private charset: string | undefined;

  constructor(msg: Hl7Message, profile: LabProfile) {
    this.msg = msg;
    this.profile = profile;
  }

  private add(seg: Hl7Segment | string, code: Hl7ErrorCode, severity: 'E' | 'W', reason: string, field?: number, comp?: number): void {
    // ERR-2.1 holds a three-character segment ID; a garbage line's "name" is cut to that.
    const segment = typeof seg === 'string' ? seg : seg.name.slice(0, 3).padEnd(3, '?');
    const sequence = typeof seg === 'string' ? 1 : (this.sequence.get(seg) ?? 1);
    const issue: Hl7Issue = { segment, sequence, code, severity, reason };
    if (field !== undefined) {
      issue.field = field;
    }
    if (comp !== undefined) {
      issue.component = comp;
    }
    this.issues.push(issue);
  }

  private error(seg: Hl7Segment | string, code: Hl7ErrorCode, reason: string, field?: number, comp?: number): void {
    this.add(seg, code, 'E', reason, field, comp);
  }

  private warn(seg: Hl7Segment | string, code: Hl7ErrorCode, reason: string, field?: number, comp?: number): void {
    this.add(seg, code, 'W', reason, field, comp);
  }

  private text(seg: Hl7Segment, field: number, comp = 1, rep = 0): string {
    return component(seg, field, comp, rep, this.charset);
  }

  private cwe(seg: Hl7Segment, field: number, rep = 0): CweParts {
    const t = (c: number): string => this.text(seg, field, c, rep);
    return { code: t(1), text: t(2), system: t(3), altCode: t(4), altText: t(5), altSystem: t(6), version: t(7), altVersion: t(8), originalText: t(9) };
  }

  /** A TS field (or one DR component) → FHIR dateTime; 102 when unreadable. */
  private dateTime(seg: Hl7Segment, field: number, comp = 1, instant = false): string | undefined {
    const raw = rawSubcomponent(seg.context, rawComponent(seg, field, comp), 1).trim();
    if (!raw || raw === '""') {
      return undefined;
    }
    const r = instant ? hl7ToFhirInstant(raw, this.profile.timezone) : hl7ToFhirDateTime(raw, this.profile.timezone);
    if (r.ok) {
      return r.value;
    }
    if (instant && hl7ToFhirDateTime(raw, this.profile.timezone).ok) {
      // Readable but too coarse for an instant (OBR-22 `2023`): drop it, keep the report.
      this.warn(seg, '102', `${seg.name}-${field}: ${r.reason}; not mapped`, field, comp === 1 ? undefined : comp);
      return undefined;
    }
    this.error(seg, '102', `${seg.name}-${field}${comp > 1 ? `.${comp}` : ''}: ${r.reason}`, field, comp === 1 ? undefined : comp);
    return undefined;
  }

  run(): OruResult {
    const segments = this.msg.segments;
    const counts = new Map<string, number>();
    for (const seg of segments) {
      const n = (counts.get(seg.name) ?? 0) + 1;
      counts.set(seg.name, n);
      this.sequence.set(seg, n);
    }
    const msh = segments[0];
    if (msh?.name !== 'MSH') {
      this.error('MSH', '100', 'the message does not start with MSH');
      return { ok: false, issues: this.issues };
    }
    this.charset = component(msh, 18) || this.profile.charset;
    const type = this.text(msh, 9, 1).toUpperCase();
    const event = this.text(msh, 9, 2).toUpperCase();
    const controlId = this.text(msh, 10);
    const version = this.text(msh, 12);
    if (type !== 'ORU') {
      this.error(msh, '200', `message type '${type}' is not ORU`, 9, 1);
    } else if (event !== 'R01') {
      this.error(msh, '201', `event '${event}' is not R01`, 9, 2);
    }
    if (version && !/^2\.\d/.test(version)) {
      this.error(msh, '203', `version '${version}' is not HL7 v2`, 12);
    }
    if (!controlId) {
      this.error(msh, '101', 'MSH-10 (message control ID) is empty', 10);
    }
    if (this.issues.some((i) => i.severity === 'E')) {
      return { ok: false, issues: this.issues };
    }

    const groups = this.group(segments);
    const reports: MappedReport[] = [];
    for (const g of groups) {
      const r = this.mapOrder(g);
      if (r) {
        reports.push(r);
      }
    }
    if (this.issues.some((i) => i.severity === 'E')) {
      return { ok: false, issues: this.issues };
    }
    return { ok: true, mapping: { messageType: `${type}^${event}`, controlId, reports, warnings: this.issues } };
  }

  /** ORU_R01 structure by position (lab-domain §2.1). */
  private group(segments: Hl7Segment[]): OrderGroup[] {
    const groups: OrderGroup[] = [];
    let pidIndex: number | undefined;
    let pendingOrc: Hl7Segment | undefined;
    let order: OrderGroup | undefined;
    let anchor: 'none' | 'patient' | 'obr' | 'obx' | 'spm' = 'none';
    let specimenIndex: number | undefined;
    for (let i = 1; i < segments.length; i++) {
      const seg = segments[i];
      const name = seg.name;
      switch (name) {
        case 'PID':
          pidIndex = i;
          order = undefined;
          pendingOrc = undefined;
          anchor = 'patient';
          break;
        case 'ORC':
          if (pendingOrc) {
            this.warn(pendingOrc, '100', 'ORC without an OBR after it; ignored');
          }
          pendingOrc = seg;
          order = undefined;
          anchor = 'none';
          break;
        case 'OBR':
          if (pidIndex === undefined) {
            this.error(seg, '100', 'OBR before any PID: results need a patient');
            order = undefined;
            break;
          }
          order = { pidIndex, orc: pendingOrc, obr: seg, notes: [], obxs: [], spms: [] };
          groups.push(order);
          pendingOrc = undefined;
          anchor = 'obr';
          specimenIndex = undefined;
          break;
        case 'OBX':
          if (!order) {
            this.error(seg, '100', 'OBX before any OBR');
            break;
          }
          order.obxs.push({ seg, notes: [], specimenIndex });
          anchor = 'obx';
          break;
        case 'SPM':
          if (!order) {
            this.error(seg, '100', 'SPM before any OBR');
            break;
          }
          order.spms.push({ seg, notes: [] });
          specimenIndex = order.spms.length - 1;
          anchor = 'spm';
          break;
        case 'NTE': {
          const text = textLines(seg, 3, this.charset);
          if (!text) {
            break;
          }
          if (anchor === 'obr' && order) {
            order.notes.push(text);
          } else if (anchor === 'obx' && order) {
            order.obxs[order.obxs.length - 1].notes.push(text);
          } else if (anchor === 'spm' && order) {
            order.spms[order.spms.length - 1].notes.push(text);
          }
          // NTE under PID is a patient note: not ours to map.
          break;
        }
        case 'MSH':
          this.error(seg, '100', 'a second MSH: one message per ORU, please');
          break;
        default:
          if (name === '' || IGNORED_SEGMENTS.has(name) || /^Z[A-Z0-9]{2}$/.test(name)) {
            break;
          }
          this.warn(seg, '100', `segment '${name.slice(0, 10)}' is not part of ORU^R01; ignored`);
      }
    }
    if (pendingOrc) {
      this.warn(pendingOrc, '100', 'ORC without an OBR after it; ignored');
    }
    if (groups.length === 0 && !this.issues.some((i) => i.severity === 'E')) {
      this.error('OBR', '100', 'no OBR segment: an ORU^R01 needs at least one order with results');
    }
    return groups;
  }

  private mapOrder(g: OrderGroup): MappedReport | undefined {
    const { obr, orc } = g;
    const key = this.profile.key;
    const errorsBefore = this.issues.filter((i) => i.severity === 'E').length;
    const placer = (orc ? this.text(orc, 2) : '') || this.text(obr, 2);
    const fillerSent = (orc ? this.text(orc, 3) : '') || this.text(obr, 3);
    if (!fillerSent && !placer) {
      this.error(obr, '101', 'OBR-3 (filler order number) is empty and there is no placer number (ORC-2/OBR-2) either', 3, 1);
    }
    const filler = fillerSent || `PLAC:${placer}`;
    const code = this.codeFor(obr, 4, undefined, false)?.cc;
    if (!code) {
      this.error(obr, '101', 'OBR-4 (universal service identifier) is empty', 4, 1);
    }

    const identifier: Identifier[] = [];
    if (fillerSent) {
      identifier.push({ type: { coding: [{ system: V2_0203, code: 'FILL', display: 'Filler Identifier' }] }, system: fillerOrderSystem(key), value: fillerSent });
    }
    if (placer) {
      identifier.push({ type: { coding: [{ system: V2_0203, code: 'PLAC', display: 'Placer Identifier' }] }, system: PLACER_ORDER_SYSTEM, value: placer });
    }

    const category: CodeableConcept[] = [LAB_CATEGORY];
    const section = this.text(obr, 24);
    if (section && section.toUpperCase() !== 'LAB') {
      category.push({ coding: [{ system: v2Table('0074'), code: section }] });
    }

    const obrStart = this.dateTime(obr, 7);
    const obrEnd = this.dateTime(obr, 8);
    const issued = this.dateTime(obr, 22, 1, true);

    const specimens = g.spms.map((s, i) => this.mapSpecimen(s, i, filler));
    const results: MappedResult[] = [];
    const presentedForm: Attachment[] = [];
    const usedKeys = new Map<string, number>();
    for (const entry of g.obxs) {
      const r = this.mapObx(entry, filler, obrStart, issued, presentedForm, code);
      if (!r) {
        continue;
      }
      const seen = usedKeys.get(r.key) ?? 0;
      usedKeys.set(r.key, seen + 1);
      if (seen > 0) {
        // Same OBX-3 and OBX-4 twice in one report would overwrite each other on upsert.
        this.warn(entry.seg, '199', `OBX-3/OBX-4 '${r.key}' repeats in this report; keyed with #${seen + 1}`, 4);
        r.key = `${r.key}#${seen + 1}`;
        r.observation.identifier = [{ system: labResultSystem(key), value: r.key }];
      }
      results.push(r);
    }

    const status = this.reportStatus(obr, results);
    if (this.issues.filter((i) => i.severity === 'E').length > errorsBefore || !code) {
      return undefined;
    }
    const report: DiagnosticReport = { resourceType: 'DiagnosticReport', identifier, status, category, code };
    if (obrStart && obrEnd) {
      report.effectivePeriod = { start: obrStart, end: obrEnd };
    } else if (obrStart) {
      report.effectiveDateTime = obrStart;
    } else if (obrEnd) {
      report.effectivePeriod = { end: obrEnd };
    }
    if (issued) {
      report.issued = issued;
    }
    if (presentedForm.length > 0) {
      report.presentedForm = presentedForm;
    }
    const mapped: MappedReport = { pidSegmentIndex: g.pidIndex, filler, report, results, specimens: specimens.filter((s) => s !== undefined), orderNotes: g.notes };
    if (placer) {
      mapped.placer = placer;
    }
    return mapped;
  }

  private reportStatus(obr: Hl7Segment, results: MappedResult[]): DiagnosticReport['status'] {
    const sent = this.text(obr, 25).toUpperCase();
    const mapped = OBR25_STATUS[sent];
    if (mapped) {
      return mapped;
    }
    if (sent) {
      this.warn(obr, '103', `OBR-25 '${sent}' is not a result status we map (table 0123); derived from the results`, 25);
    }
    const statuses = results.map((r) => r.observation.status);
    if (statuses.length === 0) {
      return 'unknown';
    }
    const all = (s: Observation['status']): boolean => statuses.every((x) => x === s);
    if (all('cancelled')) {
      return 'cancelled';
    }
    if (all('entered-in-error')) {
      return 'entered-in-error';
    }
    const live = statuses.filter((s) => s !== 'cancelled' && s !== 'entered-in-error');
    if (live.some((s) => s === 'registered' || s === 'preliminary' || s === 'unknown')) {
      return live.some((s) => s === 'final' || s === 'corrected' || s === 'amended') ? 'partial' : live.every((s) => s === 'registered') ? 'registered' : 'preliminary';
    }
    if (live.includes('corrected')) {
      return 'corrected';
    }
    if (live.includes('amended')) {
      return 'amended';
    }
    return 'final';
  }

  /**
   * A coded field → CodeableConcept with the lab's coding kept and, when the lab sent no LOINC,
   * the LOINC of the profile's ConceptMap (chosen by unit for results).
   */
  private codeFor(seg: Hl7Segment, field: number, unit: UnitInfo | undefined, isResult: boolean): { cc: CodeableConcept; target?: CodeTarget } | undefined {
    const parts = this.cwe(seg, field);
    const cc = parts.code || parts.altCode ? cweToCodeableConcept(parts, this.profile.key) : undefined;
    if (!cc) {
      return undefined;
    }
    let target: CodeTarget | undefined;
    const codings = cc.coding ?? [];
    if (!codings.some((c) => c.system === LOINC)) {
      const local = codings.find((c) => c.system === labCodeSystem(this.profile.key));
      if (local?.code) {
        target = lookupLocalCode(this.profile, local.code, unit?.code);
        if (target) {
          const loinc: Coding = { system: LOINC, code: target.loinc };
          if (target.display) {
            loinc.display = target.display;
          }
          codings.push(loinc);
        } else if (isResult && this.profile.codeMap.size > 0) {
          this.warn(seg, '103', `local code '${local.code}'${unit?.code ? ` in ${unit.code}` : ''} has no LOINC in the lab's code map`, field, 1);
        }
      }
    }
    return { cc, target };
  }

  private mapObx(entry: ObxEntry, filler: string, obrStart: string | undefined, issued: string | undefined, presentedForm: Attachment[], reportCode: CodeableConcept | undefined): MappedResult | undefined {
    const { seg } = entry;
    const key = this.profile.key;
    const statusCode = this.text(seg, 11).toUpperCase();
    if (statusCode === 'O') {
      this.warn(seg, '199', 'OBX-11 is O (order detail only): no result to store', 11);
      return undefined;
    }
    const obx3 = this.text(seg, 3, 1);
    if (!obx3) {
      this.error(seg, '101', 'OBX-3 (observation identifier) is empty', 3, 1);
      return undefined;
    }
    const unit = unitFromCwe(this.text(seg, 6, 1), this.text(seg, 6, 2), this.text(seg, 6, 3), this.text(seg, 6, 4), this.text(seg, 6, 6));
    const coded = this.codeFor(seg, 3, unit, true);
    const value = mapObxValue(seg, {
      labKey: key,
      decimalComma: this.profile.decimalComma,
      timezone: this.profile.timezone,
      charset: this.charset,
      unit,
    });
    if (!value.ok) {
      this.error(seg, value.code, `OBX-5: ${value.reason}`, value.code === '103' ? 2 : 5, value.component);
      return undefined;
    }
    for (const w of value.warnings) {
      this.warn(seg, '102', w, 5);
    }

    let status = OBX11_STATUS[statusCode];
    if (!status) {
      status = 'unknown';
      if (statusCode) {
        this.warn(seg, '103', `OBX-11 '${statusCode}' is not in table 0085; status unknown`, 11);
      } else {
        this.warn(seg, '101', 'OBX-11 (result status) is empty; status unknown', 11);
      }
    }

    const subId = this.text(seg, 4);
    const resultKey = `${filler}|${obx3}|${subId}`;
    const observation: Observation = {
      resourceType: 'Observation',
      identifier: [{ system: labResultSystem(key), value: resultKey }],
      status,
      category: [OBSERVATION_LAB_CATEGORY],
      code: coded?.cc ?? { text: obx3 },
    };
    const effective = this.dateTime(seg, 14) ?? obrStart;
    if (effective) {
      observation.effectiveDateTime = effective;
    }
    if (issued) {
      observation.issued = issued;
    }

    // Conversion (opt-in per ConceptMap target) applies only to a quantity in the target's source unit.
    const target = coded?.target;
    const conversion = target?.convert && target.whenUnit && value.value?.valueQuantity?.code === target.whenUnit ? target.convert : undefined;
    const convert = (q: Quantity): Quantity => (conversion ? convertQuantity(q, conversion) : q);
    if (value.value) {
      if (conversion && value.value.valueQuantity) {
        observation.extension = [{ url: ORIGINAL_VALUE_EXTENSION, valueQuantity: value.value.valueQuantity }];
        observation.valueQuantity = convert(value.value.valueQuantity);
      } else {
        Object.assign(observation, value.value);
      }
    }
    const notes: Annotation[] = [];
    if (value.attachment) {
      const title = observation.code.coding?.[0]?.display ?? observation.code.text ?? reportCode?.coding?.[0]?.display;
      presentedForm.push(title && !value.attachment.title ? { ...value.attachment, title } : value.attachment);
      notes.push({ text: `Result sent as an attachment (${value.attachment.contentType ?? 'unknown type'}): the report's presentedForm[${presentedForm.length - 1}].` });
    } else if (!value.value) {
      const reason = statusCode === 'X' ? 'cannot-be-obtained' : statusCode === 'N' ? 'not-asked' : 'unknown';
      observation.dataAbsentReason = { coding: [{ system: DATA_ABSENT_REASON, code: reason }] };
    }

    const flags: string[] = [];
    const interpretation: CodeableConcept[] = [];
    for (const rep of rawRepetitions(seg, 8)) {
      const flag = unescapeHl7(rep[0] ?? '', seg.context, this.charset).trim();
      const display = unescapeHl7(rep[1] ?? '', seg.context, this.charset).trim();
      if (!flag) {
        continue;
      }
      flags.push(flag);
      const upper = flag.toUpperCase();
      if (DROPPED_INTERPRETATIONS.has(upper)) {
        continue;
      }
      if (INTERPRETATION_DISPLAY[upper]) {
        interpretation.push({ coding: [{ system: V3_INTERPRETATION, code: upper, display: INTERPRETATION_DISPLAY[upper] }] });
      } else {
        // A lab's own flag: kept as sent, without a system we cannot vouch for.
        interpretation.push({ coding: [display ? { code: flag, display } : { code: flag }] });
      }
    }
    if (interpretation.length > 0) {
      observation.interpretation = interpretation;
    }

    const rangeText = textLines(seg, 7, this.charset);
    if (rangeText) {
      const range: ObservationReferenceRange = { text: rangeText };
      const parsed = parseRange(rangeText, this.profile.decimalComma);
      if (parsed?.low !== undefined) {
        range.low = convert(quantity(parsed.low, unit));
      }
      if (parsed?.high !== undefined) {
        range.high = convert(quantity(parsed.high, unit));
      }
      observation.referenceRange = [range];
    }

    for (const n of entry.notes) {
      notes.push({ text: n });
    }
    if (notes.length > 0) {
      observation.note = notes;
    }

    const result: MappedResult = { key: resultKey, observation };
    const loinc = observation.code.coding?.find((c) => c.system === LOINC)?.code;
    const label = observation.code.coding?.[0]?.display ?? observation.code.text ?? obx3;
    const critical = criticalFinding(label, flags, observation.valueQuantity, loinc ? this.profile.critical.get(loinc) : undefined);
    if (critical) {
      result.critical = critical;
    }
    if (entry.specimenIndex !== undefined) {
      result.specimenIndex = entry.specimenIndex;
    }
    return result;
  }

  private mapSpecimen(entry: SpmEntry, index: number, filler: string): { key: string; specimen: Specimen } | undefined {
    const { seg } = entry;
    const ctx = seg.context;
    const sub = (comp: number): string => unescapeHl7(rawSubcomponent(ctx, rawComponent(seg, 2, comp), 1), ctx, this.charset).trim();
    const id = sub(2) || sub(1);
    const key = id || `${filler}|SPM${index + 1}`;
    const specimen: Specimen = { resourceType: 'Specimen', identifier: [{ system: specimenSystem(this.profile.key), value: key }] };
    const typeParts = this.cwe(seg, 4);
    // SPM-4 is table 0487 when the lab names no coding system.
    const type = cweToCodeableConcept({ ...typeParts, system: typeParts.system || (typeParts.code ? 'HL70487' : '') }, this.profile.key);
    if (type) {
      specimen.type = type;
    }
    const start = this.dateTime(seg, 17, 1);
    const end = this.dateTime(seg, 17, 2);
    const site = cweToCodeableConcept(this.cwe(seg, 8), this.profile.key);
    if (start || end || site) {
      specimen.collection = {};
      if (start && end) {
        specimen.collection.collectedPeriod = { start, end };
      } else if (start) {
        specimen.collection.collectedDateTime = start;
      } else if (end) {
        specimen.collection.collectedPeriod = { end };
      }
      if (site) {
        specimen.collection.bodySite = site;
      }
    }
    const received = this.dateTime(seg, 18);
    if (received) {
      specimen.receivedTime = received;
    }
    const notes = [textLines(seg, 14, this.charset), ...entry.notes].filter(Boolean);
    if (notes.length > 0) {
      specimen.note = notes.map((text) => ({ text }));
    }
    return { key, specimen };
  }
}

function significantDigits(n: number): number {
  const digits = String(Math.abs(n)).replace('.', '').replace(/^0+/, '');
  return Math.max(digits.length, 1);
}

/** value × factor in the product unit, to one more significant digit than was sent (at least 3). */
function convertQuantity(q: Quantity, conversion: { unit: string; factor: number }): Quantity {
  const value = q.value ?? 0;
  const digits = Math.min(Math.max(significantDigits(value) + 1, 3), 12);
  const out: Quantity = { value: Number((value * conversion.factor).toPrecision(digits)), unit: conversion.unit, system: UCUM, code: conversion.unit };
  if (q.comparator) {
    out.comparator = q.comparator;
  }
  return out;
}
