import { evalFhirPathTyped, getSearchParameterDetails, getSearchParameters, toTypedValue } from '@medplum/core';
import type { FhirPathAtom, TypedValue } from '@medplum/core';
import type {
  Address,
  CodeableConcept,
  Coding,
  ContactPoint,
  HumanName,
  Identifier,
  Money,
  Period,
  Quantity,
  Range,
  Reference,
  Resource,
  SearchParameter,
  Timing,
} from '@medplum/fhirtypes';
import { compositeComponents, ofTypeSystem } from './parameters.ts';
import { parseDateRange } from './dates.ts';
import type { ParamRegistry } from './param-registry.ts';

/** The rows a resource contributes to each search index table, as column arrays ready for `unnest`. */
export interface IndexRows {
  token: { param: number[]; grp: number[]; system: (string | null)[]; code: (string | null)[]; text: (string | null)[] };
  string: { param: number[]; grp: number[]; norm: string[]; exact: string[] };
  date: { param: number[]; grp: number[]; low: string[]; high: string[] };
  quantity: {
    param: number[];
    grp: number[];
    value: (string | null)[];
    low: (string | null)[];
    high: (string | null)[];
    system: (string | null)[];
    code: (string | null)[];
  };
  reference: { param: number[]; grp: number[]; targetType: (string | null)[]; targetId: (string | null)[]; ref: string[] };
}

/** Where a value goes: its parameter, and for a composite's components the repetition it came from. */
interface ParamKey {
  param: number;
  grp: number;
}

/** Repetitions of one composite indexed per resource (grp is a smallint; real resources have a few). */
const MAX_COMPOSITE_GROUPS = 1000;

/** Longest indexed text; longer values are cut so that a B-tree entry always fits in a page. */
export const MAX_INDEXED_CHARS = 512;

/** Parameters answered from columns of the resource table, or not indexed by value. */
const NOT_INDEXED = new Set(['_id', '_lastUpdated', '_compartment', '_project']);

/** Parameters of a resource type that the index stores, with their ids. */
export function indexedParams(
  resourceType: string,
  registry: ParamRegistry
): { param: SearchParameter; id: number }[] {
  const result: { param: SearchParameter; id: number }[] = [];
  for (const [code, param] of Object.entries(getSearchParameters(resourceType) ?? {})) {
    if (NOT_INDEXED.has(code) || !param.expression || param.type === 'special') {
      continue;
    }
    const id = registry.get(resourceType, code);
    if (id !== undefined) {
      result.push({ param, id });
    }
  }
  return result;
}

export function emptyIndexRows(): IndexRows {
  return {
    token: { param: [], grp: [], system: [], code: [], text: [] },
    string: { param: [], grp: [], norm: [], exact: [] },
    date: { param: [], grp: [], low: [], high: [] },
    quantity: { param: [], grp: [], value: [], low: [], high: [], system: [], code: [] },
    reference: { param: [], grp: [], targetType: [], targetId: [], ref: [] },
  };
}

/** Evaluates every indexed search parameter of the resource and returns the index rows. */
export function extractIndexRows(resource: Resource, registry: ParamRegistry): IndexRows {
  const rows = emptyIndexRows();
  const input = [toTypedValue(resource)];
  for (const { param, id } of indexedParams(resource.resourceType, registry)) {
    const details = getSearchParameterDetails(resource.resourceType, param);
    const values = evaluate(details.parsedExpression, input);
    if (param.type === 'composite') {
      addComposite(rows, resource.resourceType, param, id, values);
      continue;
    }
    for (const value of values) {
      addValue(rows, param, { param: id, grp: 0 }, value);
    }
  }
  return rows;
}

/** An expression that cannot evaluate on this resource's shape indexes nothing. */
function evaluate(expression: string | FhirPathAtom, input: TypedValue[]): TypedValue[] {
  try {
    return evalFhirPathTyped(expression, input);
  } catch {
    return [];
  }
}

/**
 * A composite parameter (e.g. component-code-value-quantity): for each repetition its expression
 * yields, every component's values are indexed under the composite's id with the repetition's grp,
 * so a search can require all parts to hold for the same repetition.
 */
function addComposite(rows: IndexRows, resourceType: string, param: SearchParameter, id: number, items: TypedValue[]): void {
  let components: SearchParameter[];
  try {
    components = compositeComponents(resourceType, param);
  } catch {
    return;
  }
  items.slice(0, MAX_COMPOSITE_GROUPS).forEach((item, i) => {
    const key = { param: id, grp: i + 1 };
    (param.component ?? []).forEach((component, c) => {
      for (const value of evaluate(component.expression, [item])) {
        addValue(rows, components[c], key, value);
      }
    });
  });
}

function addValue(rows: IndexRows, param: SearchParameter, key: ParamKey, tv: TypedValue): void {
  switch (param.type) {
    case 'token':
      addToken(rows, key, tv);
      break;
    case 'uri':
      if (typeof tv.value === 'string') {
        pushToken(rows, key, null, tv.value, null);
      }
      break;
    case 'string':
      addString(rows, key, tv);
      break;
    case 'date':
      addDate(rows, key, tv);
      break;
    case 'number':
      if (typeof tv.value === 'number') {
        pushNumber(rows, key, tv.value, null, null);
      }
      break;
    case 'quantity':
      addQuantity(rows, key, tv);
      break;
    case 'reference':
      addReference(rows, key, tv);
      break;
  }
}

function addToken(rows: IndexRows, key: ParamKey, tv: TypedValue): void {
  const v = tv.value;
  switch (tv.type) {
    case 'Coding':
      pushCoding(rows, key, v as Coding, undefined);
      return;
    case 'CodeableConcept': {
      const cc = v as CodeableConcept;
      if (cc.coding?.length) {
        for (const coding of cc.coding) {
          pushCoding(rows, key, coding, cc.text);
        }
      } else if (cc.text) {
        pushToken(rows, key, null, null, cc.text);
      }
      return;
    }
    case 'Identifier': {
      const ident = v as Identifier;
      pushToken(rows, key, ident.system ?? null, ident.value ?? null, ident.type?.text ?? null);
      // identifier:of-type=typeSystem|typeCode|value finds these rows
      for (const coding of ident.type?.coding ?? []) {
        if (coding.system && coding.code && ident.value) {
          pushToken(rows, key, ofTypeSystem(coding.system, coding.code), ident.value, null);
        }
      }
      return;
    }
    case 'ContactPoint': {
      const cp = v as ContactPoint;
      const value = cp.system === 'email' ? cp.value?.toLowerCase() : cp.value;
      pushToken(rows, key, cp.system ?? null, value ?? null, null);
      return;
    }
    case 'boolean':
      pushToken(rows, key, null, String(v), null);
      return;
    case 'Quantity':
      pushToken(rows, key, (v as Quantity).system ?? null, (v as Quantity).code ?? null, (v as Quantity).unit ?? null);
      return;
    default:
      if (typeof v === 'string' || typeof v === 'number') {
        pushToken(rows, key, null, String(v), null);
      }
  }
}

function pushCoding(rows: IndexRows, key: ParamKey, coding: Coding, text: string | undefined): void {
  const display = [coding.display, text].filter(Boolean).join(' ');
  pushToken(rows, key, coding.system ?? null, coding.code ?? null, display || null);
}

function pushToken(rows: IndexRows, key: ParamKey, system: string | null, code: string | null, text: string | null): void {
  rows.token.param.push(key.param);
  rows.token.grp.push(key.grp);
  rows.token.system.push(clip(system));
  rows.token.code.push(clip(code));
  rows.token.text.push(text ? clip(normalizeText(text)) : null);
}

function addString(rows: IndexRows, key: ParamKey, tv: TypedValue): void {
  const v = tv.value;
  if (typeof v === 'string') {
    pushString(rows, key, v);
    return;
  }
  if (!v || typeof v !== 'object') {
    return;
  }
  if (tv.type === 'HumanName') {
    const name = v as HumanName;
    for (const part of [name.text, name.family, ...(name.given ?? []), ...(name.prefix ?? []), ...(name.suffix ?? [])]) {
      if (part) {
        pushString(rows, key, part);
      }
    }
    const full = [...(name.given ?? []), name.family].filter(Boolean).join(' ');
    if (full && full !== name.text) {
      pushString(rows, key, full);
    }
  } else if (tv.type === 'Address') {
    const a = v as Address;
    for (const part of [a.text, ...(a.line ?? []), a.city, a.district, a.state, a.postalCode, a.country]) {
      if (part) {
        pushString(rows, key, part);
      }
    }
  }
}

function pushString(rows: IndexRows, key: ParamKey, value: string): void {
  rows.string.param.push(key.param);
  rows.string.grp.push(key.grp);
  rows.string.norm.push(clip(normalizeText(value)) as string);
  rows.string.exact.push(clip(value) as string);
}

function addDate(rows: IndexRows, key: ParamKey, tv: TypedValue): void {
  const v = tv.value;
  if (typeof v === 'string') {
    pushDate(rows, key, v, v);
    return;
  }
  if (!v || typeof v !== 'object') {
    return;
  }
  if (tv.type === 'Period') {
    const p = v as Period;
    pushDate(rows, key, p.start, p.end);
  } else if (tv.type === 'Timing') {
    const t = v as Timing;
    for (const event of t.event ?? []) {
      pushDate(rows, key, event, event);
    }
    const bounds = t.repeat?.boundsPeriod;
    if (bounds) {
      pushDate(rows, key, bounds.start, bounds.end);
    }
  }
}

/** A missing start or end means the range is open on that side. */
function pushDate(rows: IndexRows, key: ParamKey, start: string | undefined, end: string | undefined): void {
  const low = start ? parseDateRange(start)?.low.toISOString() : '-infinity';
  const high = end ? parseDateRange(end)?.high.toISOString() : 'infinity';
  if (!low || !high || (!start && !end)) {
    return;
  }
  rows.date.param.push(key.param);
  rows.date.grp.push(key.grp);
  rows.date.low.push(low);
  rows.date.high.push(high);
}

function addQuantity(rows: IndexRows, key: ParamKey, tv: TypedValue): void {
  const v = tv.value;
  if (typeof v === 'number') {
    pushNumber(rows, key, v, null, null);
    return;
  }
  if (!v || typeof v !== 'object') {
    return;
  }
  if (tv.type === 'Range') {
    const r = v as Range;
    const unit = r.low ?? r.high;
    rows.quantity.param.push(key.param);
  rows.quantity.grp.push(key.grp);
    rows.quantity.value.push(null);
    rows.quantity.low.push(r.low?.value !== undefined ? String(r.low.value) : null);
    rows.quantity.high.push(r.high?.value !== undefined ? String(r.high.value) : null);
    rows.quantity.system.push(unit?.system ?? null);
    rows.quantity.code.push(unit?.code ?? unit?.unit ?? null);
    return;
  }
  if (tv.type === 'Money') {
    const m = v as Money;
    if (m.value !== undefined) {
      pushNumber(rows, key, m.value, 'urn:iso:std:iso:4217', m.currency ?? null);
    }
    return;
  }
  const q = v as Quantity;
  if (typeof q.value === 'number') {
    pushNumber(rows, key, q.value, q.system ?? null, q.code ?? q.unit ?? null);
    if (q.unit && q.code && q.unit !== q.code) {
      // `value||unit` (no system) may name the unit as written: index it as a code without a system
      pushNumber(rows, key, q.value, null, q.unit);
    }
  }
}

/** Stores a number with the range its significant digits imply (100 → [99.5, 100.5]). */
function pushNumber(rows: IndexRows, key: ParamKey, value: number, system: string | null, code: string | null): void {
  const half = precisionHalfStep(value);
  rows.quantity.param.push(key.param);
  rows.quantity.grp.push(key.grp);
  rows.quantity.value.push(String(value));
  rows.quantity.low.push(String(value - half));
  rows.quantity.high.push(String(value + half));
  rows.quantity.system.push(system);
  rows.quantity.code.push(code);
}

/** Half of the last significant place of a decimal written as text ("5.40" → 0.005, "1e-7" → 5e-8). */
export function precisionHalfStep(value: number | string): number {
  const text = String(value).toLowerCase();
  const [mantissa, exponent] = text.split('e');
  const dot = mantissa.indexOf('.');
  const decimals = (dot < 0 ? 0 : mantissa.length - dot - 1) - Number(exponent ?? 0);
  return 0.5 * 10 ** -decimals;
}

function addReference(rows: IndexRows, key: ParamKey, tv: TypedValue): void {
  const v = tv.value;
  if (typeof v === 'string') {
    // canonical or uri references
    pushReference(rows, key, null, null, v);
    return;
  }
  if (!v || typeof v !== 'object') {
    return;
  }
  const ref = v as Reference;
  if (ref.reference) {
    const parsed = parseReferenceString(ref.reference);
    pushReference(rows, key, parsed?.resourceType ?? null, parsed?.id ?? null, ref.reference);
  }
  if (ref.identifier) {
    // `subject:identifier=system|value` matches these token rows under the reference parameter's id.
    pushToken(rows, key, ref.identifier.system ?? null, ref.identifier.value ?? null, null);
  }
}

function pushReference(
  rows: IndexRows,
  key: ParamKey,
  targetType: string | null,
  targetId: string | null,
  ref: string
): void {
  rows.reference.param.push(key.param);
  rows.reference.grp.push(key.grp);
  rows.reference.targetType.push(targetType);
  rows.reference.targetId.push(targetId);
  rows.reference.ref.push(clip(ref) as string);
}

const REFERENCE_RE = /(?:^|\/)([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/;

/** `Patient/1`, `Patient/1/_history/2` and `https://host/fhir/R4/Patient/1` → {Patient, 1}. */
export function parseReferenceString(reference: string): { resourceType: string; id: string } | undefined {
  const m = REFERENCE_RE.exec(reference);
  return m ? { resourceType: m[1], id: m[2] } : undefined;
}

/**
 * Case- and accent-insensitive form used by string search: NFD, combining marks removed, lower
 * case, and Greek final sigma as sigma (lower-casing makes a word-final Σ into ς, which must still
 * match σ).
 */
export function normalizeText(value: string): string {
  return value.normalize('NFD').replace(/\p{M}/gu, '').toLowerCase().replaceAll('ς', 'σ');
}

function clip(value: string | null): string | null {
  return value !== null && value.length > MAX_INDEXED_CHARS ? value.slice(0, MAX_INDEXED_CHARS) : value;
}
