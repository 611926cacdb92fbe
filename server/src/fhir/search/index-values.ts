import { evalFhirPathTyped, getSearchParameterDetails, getSearchParameters, toTypedValue } from '@medplum/core';
import type { TypedValue } from '@medplum/core';
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
import { parseDateRange } from './dates.ts';
import type { ParamRegistry } from './param-registry.ts';

/** The rows a resource contributes to each search index table, as column arrays ready for `unnest`. */
export interface IndexRows {
  token: { param: number[]; system: (string | null)[]; code: (string | null)[]; text: (string | null)[] };
  string: { param: number[]; norm: string[]; exact: string[] };
  date: { param: number[]; low: string[]; high: string[] };
  quantity: {
    param: number[];
    value: (string | null)[];
    low: (string | null)[];
    high: (string | null)[];
    system: (string | null)[];
    code: (string | null)[];
  };
  reference: { param: number[]; targetType: (string | null)[]; targetId: (string | null)[]; ref: string[] };
}

/** Longest indexed text; longer values are cut so that a B-tree entry always fits in a page. */
const MAX_INDEXED_CHARS = 512;

/** Parameters answered from columns of the resource table, or not indexed by value. */
const NOT_INDEXED = new Set(['_id', '_lastUpdated', '_compartment', '_project']);

/** Parameters of a resource type that the index stores, with their ids. */
export function indexedParams(
  resourceType: string,
  registry: ParamRegistry
): { param: SearchParameter; id: number }[] {
  const result: { param: SearchParameter; id: number }[] = [];
  for (const [code, param] of Object.entries(getSearchParameters(resourceType) ?? {})) {
    if (NOT_INDEXED.has(code) || !param.expression || param.type === 'composite' || param.type === 'special') {
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
    token: { param: [], system: [], code: [], text: [] },
    string: { param: [], norm: [], exact: [] },
    date: { param: [], low: [], high: [] },
    quantity: { param: [], value: [], low: [], high: [], system: [], code: [] },
    reference: { param: [], targetType: [], targetId: [], ref: [] },
  };
}

/** Evaluates every indexed search parameter of the resource and returns the index rows. */
export function extractIndexRows(resource: Resource, registry: ParamRegistry): IndexRows {
  const rows = emptyIndexRows();
  const input = [toTypedValue(resource)];
  for (const { param, id } of indexedParams(resource.resourceType, registry)) {
    const details = getSearchParameterDetails(resource.resourceType, param);
    let values: TypedValue[];
    try {
      values = evalFhirPathTyped(details.parsedExpression, input);
    } catch {
      // An expression that cannot evaluate on this resource's shape indexes nothing.
      continue;
    }
    for (const value of values) {
      addValue(rows, param, id, value);
    }
  }
  return rows;
}

function addValue(rows: IndexRows, param: SearchParameter, id: number, tv: TypedValue): void {
  switch (param.type) {
    case 'token':
      addToken(rows, id, tv);
      break;
    case 'uri':
      if (typeof tv.value === 'string') {
        pushToken(rows, id, null, tv.value, null);
      }
      break;
    case 'string':
      addString(rows, id, tv);
      break;
    case 'date':
      addDate(rows, id, tv);
      break;
    case 'number':
      if (typeof tv.value === 'number') {
        pushNumber(rows, id, tv.value, null, null);
      }
      break;
    case 'quantity':
      addQuantity(rows, id, tv);
      break;
    case 'reference':
      addReference(rows, id, tv);
      break;
  }
}

function addToken(rows: IndexRows, id: number, tv: TypedValue): void {
  const v = tv.value;
  switch (tv.type) {
    case 'Coding':
      pushCoding(rows, id, v as Coding, undefined);
      return;
    case 'CodeableConcept': {
      const cc = v as CodeableConcept;
      if (cc.coding?.length) {
        for (const coding of cc.coding) {
          pushCoding(rows, id, coding, cc.text);
        }
      } else if (cc.text) {
        pushToken(rows, id, null, null, cc.text);
      }
      return;
    }
    case 'Identifier': {
      const ident = v as Identifier;
      pushToken(rows, id, ident.system ?? null, ident.value ?? null, ident.type?.text ?? null);
      return;
    }
    case 'ContactPoint': {
      const cp = v as ContactPoint;
      const value = cp.system === 'email' ? cp.value?.toLowerCase() : cp.value;
      pushToken(rows, id, cp.system ?? null, value ?? null, null);
      return;
    }
    case 'boolean':
      pushToken(rows, id, null, String(v), null);
      return;
    case 'Quantity':
      pushToken(rows, id, (v as Quantity).system ?? null, (v as Quantity).code ?? null, (v as Quantity).unit ?? null);
      return;
    default:
      if (typeof v === 'string' || typeof v === 'number') {
        pushToken(rows, id, null, String(v), null);
      }
  }
}

function pushCoding(rows: IndexRows, id: number, coding: Coding, text: string | undefined): void {
  const display = [coding.display, text].filter(Boolean).join(' ');
  pushToken(rows, id, coding.system ?? null, coding.code ?? null, display || null);
}

function pushToken(rows: IndexRows, id: number, system: string | null, code: string | null, text: string | null): void {
  rows.token.param.push(id);
  rows.token.system.push(clip(system));
  rows.token.code.push(clip(code));
  rows.token.text.push(text ? clip(normalizeText(text)) : null);
}

function addString(rows: IndexRows, id: number, tv: TypedValue): void {
  const v = tv.value;
  if (typeof v === 'string') {
    pushString(rows, id, v);
    return;
  }
  if (!v || typeof v !== 'object') {
    return;
  }
  if (tv.type === 'HumanName') {
    const name = v as HumanName;
    for (const part of [name.text, name.family, ...(name.given ?? []), ...(name.prefix ?? []), ...(name.suffix ?? [])]) {
      if (part) {
        pushString(rows, id, part);
      }
    }
    const full = [...(name.given ?? []), name.family].filter(Boolean).join(' ');
    if (full && full !== name.text) {
      pushString(rows, id, full);
    }
  } else if (tv.type === 'Address') {
    const a = v as Address;
    for (const part of [a.text, ...(a.line ?? []), a.city, a.district, a.state, a.postalCode, a.country]) {
      if (part) {
        pushString(rows, id, part);
      }
    }
  }
}

function pushString(rows: IndexRows, id: number, value: string): void {
  rows.string.param.push(id);
  rows.string.norm.push(clip(normalizeText(value)) as string);
  rows.string.exact.push(clip(value) as string);
}

function addDate(rows: IndexRows, id: number, tv: TypedValue): void {
  const v = tv.value;
  if (typeof v === 'string') {
    pushDate(rows, id, v, v);
    return;
  }
  if (!v || typeof v !== 'object') {
    return;
  }
  if (tv.type === 'Period') {
    const p = v as Period;
    pushDate(rows, id, p.start, p.end);
  } else if (tv.type === 'Timing') {
    const t = v as Timing;
    for (const event of t.event ?? []) {
      pushDate(rows, id, event, event);
    }
    const bounds = t.repeat?.boundsPeriod;
    if (bounds) {
      pushDate(rows, id, bounds.start, bounds.end);
    }
  }
}

/** A missing start or end means the range is open on that side. */
function pushDate(rows: IndexRows, id: number, start: string | undefined, end: string | undefined): void {
  const low = start ? parseDateRange(start)?.low.toISOString() : '-infinity';
  const high = end ? parseDateRange(end)?.high.toISOString() : 'infinity';
  if (!low || !high || (!start && !end)) {
    return;
  }
  rows.date.param.push(id);
  rows.date.low.push(low);
  rows.date.high.push(high);
}

function addQuantity(rows: IndexRows, id: number, tv: TypedValue): void {
  const v = tv.value;
  if (typeof v === 'number') {
    pushNumber(rows, id, v, null, null);
    return;
  }
  if (!v || typeof v !== 'object') {
    return;
  }
  if (tv.type === 'Range') {
    const r = v as Range;
    const unit = r.low ?? r.high;
    rows.quantity.param.push(id);
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
      pushNumber(rows, id, m.value, 'urn:iso:std:iso:4217', m.currency ?? null);
    }
    return;
  }
  const q = v as Quantity;
  if (typeof q.value === 'number') {
    pushNumber(rows, id, q.value, q.system ?? null, q.code ?? q.unit ?? null);
  }
}

/** Stores a number with the range its significant digits imply (100 → [99.5, 100.5]). */
function pushNumber(rows: IndexRows, id: number, value: number, system: string | null, code: string | null): void {
  const half = precisionHalfStep(value);
  rows.quantity.param.push(id);
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

function addReference(rows: IndexRows, id: number, tv: TypedValue): void {
  const v = tv.value;
  if (typeof v === 'string') {
    // canonical or uri references
    pushReference(rows, id, null, null, v);
    return;
  }
  if (!v || typeof v !== 'object') {
    return;
  }
  const ref = v as Reference;
  if (ref.reference) {
    const parsed = parseReferenceString(ref.reference);
    pushReference(rows, id, parsed?.resourceType ?? null, parsed?.id ?? null, ref.reference);
  }
  if (ref.identifier) {
    // `subject:identifier=system|value` matches these token rows under the reference parameter's id.
    pushToken(rows, id, ref.identifier.system ?? null, ref.identifier.value ?? null, null);
  }
}

function pushReference(
  rows: IndexRows,
  id: number,
  targetType: string | null,
  targetId: string | null,
  ref: string
): void {
  rows.reference.param.push(id);
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

/** Case- and accent-insensitive form used by string search (NFD, combining marks removed, lower case). */
export function normalizeText(value: string): string {
  return value.normalize('NFD').replace(/\p{M}/gu, '').toLowerCase();
}

function clip(value: string | null): string | null {
  return value !== null && value.length > MAX_INDEXED_CHARS ? value.slice(0, MAX_INDEXED_CHARS) : value;
}
