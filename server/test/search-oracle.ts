/**
 * Expected answers for FHIR searches over an in-memory data set, for search-differential.test.ts.
 *
 * The reference is core's own matcher: `MemoryRepository` from `@medplum/fhir-router`, which uses
 * `matchesSearchRequest` from `@medplum/core`. Each filter of a search is answered by the reference
 * unless `whyReferenceIsWrong` names a reason it is wrong for that kind of filter; then a small oracle
 * in this file answers instead, implementing the R4 rule cited next to it
 * (https://hl7.org/fhir/R4/search.html). The oracle is also run where the reference is trusted, and
 * every disagreement there is reported (`unexplained`), so that a bug in either one shows up.
 *
 * Judgement calls where R4 leaves the server a choice are kept out of the queries (or stated here):
 * - string search on HumanName/Address matches any part (R4: "a server defined search that may
 *   match any of the string fields"), each part by itself;
 * - a number in a resource is taken as the exact value written (JSON does not keep trailing zeros);
 *   the search value's precision gives the range for `eq`/`ne` (R4 #number), other prefixes compare
 *   exactly ("the implicit precision of the number is ignored");
 * - `_sort` on a repeating or range value uses, ascending, the smallest value (a range's start) and,
 *   descending, the largest (a range's end) (R4 #_sort: "the item ... that comes earliest in the
 *   specified sort order"); resources with no value sort last in both directions (R4 is silent);
 *   text is compared in whatever collation the caller passes (R4 defines none);
 * - a prefix compares the resource's values, so a resource without a value matches no prefix, `ne`
 *   included (only token `:not` is defined to return resources without a match at all);
 * - token `:text` is "processed as a string" (R4 #token): starts-with, case- and accent-insensitive,
 *   on each Coding.display / CodeableConcept.text / Identifier.type.text; queries match at the start
 *   of a text, since R4 is unclear about words in the middle;
 * - a date without a time (`2024-03-05`) is that day in UTC, as the server takes it (R4 leaves the
 *   zone of such values to the server).
 */
import {
  evalFhirPathTyped,
  getSearchParameter,
  matchesSearchRequest,
  Operator,
  parseFhirPath,
  parseSearchRequest,
  splitSearchOnComma,
  toTypedValue,
} from '@medplum/core';
import type { Filter, FhirPathAtom, SearchRequest, SortRule, TypedValue, WithId } from '@medplum/core';
import { getExtraEntries, MemoryRepository } from '@medplum/fhir-router';
import type {
  BundleEntry,
  CodeSystem,
  CodeSystemConcept,
  Identifier,
  List,
  Period,
  Reference,
  Resource,
  SearchParameter,
  ValueSet,
} from '@medplum/fhirtypes';

// ------------------------------------------------------------------------------------------------
// The data set, in the reference repository and indexed for the oracle

export class SearchWorld {
  readonly repo = new MemoryRepository();
  private readonly byType = new Map<string, WithId<Resource>[]>();
  private readonly byRef = new Map<string, WithId<Resource>>();
  /** The FHIR base URL of the server, for absolute references. */
  readonly base: string;

  private constructor(base: string) {
    this.base = base;
  }

  /** Loads the resources exactly as the server stored them (ids, meta) into a MemoryRepository. */
  static async load(resources: WithId<Resource>[], base: string): Promise<SearchWorld> {
    const world = new SearchWorld(base);
    await world.repo.withSeeding(async () => {
      for (const resource of resources) {
        await world.repo.createResource(resource);
      }
    });
    for (const resource of resources) {
      const list = world.byType.get(resource.resourceType) ?? [];
      list.push(resource);
      world.byType.set(resource.resourceType, list);
      world.byRef.set(`${resource.resourceType}/${resource.id}`, resource);
    }
    return world;
  }

  all(type: string): WithId<Resource>[] {
    return this.byType.get(type) ?? [];
  }

  get(reference: string): WithId<Resource> | undefined {
    const parsed = parseLiteral(reference, this.base);
    return parsed ? this.byRef.get(`${parsed.type}/${parsed.id}`) : undefined;
  }
}

// ------------------------------------------------------------------------------------------------
// Parsing a query the way R4 reads it

/**
 * Parses `name=value&…` for a type, as R4 reads it. Core's parser is used for the syntax, except
 * where it does not follow R4:
 * - it drops the `:Type` modifier of reference parameters, so `subject:Patient=23` is rewritten to
 *   its R4 equivalent `subject=Patient/23` (R4 #reference: "[parameter]:[Type]=[id]");
 * - it rejects composite parameters and comma-separated (OR) values of dates, numbers and
 *   quantities, which R4 allows (#composite, #combining): those filters are built here.
 */
export function parseQuery(resourceType: string, query: string): SearchRequest {
  return parsePairs(resourceType, [...new URLSearchParams(query)]);
}

function parsePairs(resourceType: string, pairs: [string, string][]): SearchRequest {
  const record: Record<string, string[]> = {};
  const extra: Filter[] = [];
  for (const [key, value] of pairs) {
    const plain = !key.includes('.') && !key.startsWith('_has:');
    const [code, modifier] = key.split(':');
    const param = plain ? getSearchParameter(resourceType, code) : undefined;
    if (param?.type === 'reference' && modifier && /^[A-Z]/.test(modifier)) {
      const v = splitSearchOnComma(value).map((one) => (one.includes('/') ? one : `${modifier}/${one}`)).join(',');
      (record[code] ??= []).push(v);
    } else if (param?.type === 'composite') {
      extra.push({ code, operator: Operator.EQUALS, value });
    } else if (param && ['date', 'number', 'quantity'].includes(param.type) && !modifier && value.includes(',')) {
      const parts = splitSearchOnComma(value).map((v) => parseSearchRequest(resourceType, { [key]: v }).filters?.[0] as Filter);
      if (parts.some((f) => f.operator !== parts[0].operator)) {
        throw new Error(`different prefixes in one OR list are not supported here: ${key}=${value}`);
      }
      extra.push({ code, operator: parts[0].operator, value: parts.map((f) => f.value).join(',') });
    } else {
      (record[key] ??= []).push(value);
    }
  }
  const request = parseSearchRequest(resourceType, record);
  if (extra.length) {
    request.filters = [...(request.filters ?? []), ...extra];
  }
  return request;
}

// ------------------------------------------------------------------------------------------------
// Where the reference is wrong

/**
 * Why core's matcher (the reference) cannot be trusted for this filter, or undefined when it can.
 * Token case sensitivity is decided per filter in `expectedResult` (see `tokenCaseMatters`).
 */
export function whyReferenceIsWrong(resourceType: string, filter: Filter): string | undefined {
  const { code, operator } = filter;
  if (code.startsWith('_has:')) {
    return 'reference has no _has: core looks up a parameter literally named "_has:…", finds none and matches nothing (R4 #has)';
  }
  if (code.includes('.')) {
    return 'reference chains only one link, only with an explicit or single target type, and applies its own (wrong) string/date rules at the end (R4 #chaining)';
  }
  if (code === '_list') {
    return 'reference knows no _list parameter and matches nothing (R4 #list: resources referenced by the List\'s entries)';
  }
  if (code === '_compartment') {
    return 'reference reads meta.compartment, which only Medplum\'s server fills in; compartment membership comes from CompartmentDefinition/Patient';
  }
  if (operator === Operator.MISSING || operator === Operator.PRESENT) {
    return undefined;
  }
  const param = getSearchParameter(resourceType, code);
  switch (param?.type) {
    case 'string':
      return 'reference matches a case-insensitive substring for every modifier and does not fold accents; R4 #string: default is "equals or starts with" after case and accent normalisation, :exact is exact, :contains is anywhere';
    case 'uri':
      return 'reference matches a case-insensitive substring; R4 #uri: a uri matches exactly, :below/:above by prefix';
    case 'number':
    case 'quantity':
      return 'reference has no number/quantity matcher (matchesSearchFilter returns false for them)';
    case 'composite':
      return 'reference has no composite matcher (returns false)';
    case 'date':
      return 'reference eq/ne test overlap instead of containment, le/ge accept ranges that straddle the bound, a month-precision value ends on day "31" (June 31 rolls into July) and ne matches resources without a value (R4 #prefix, #date)';
    case 'token':
      if (operator === Operator.TEXT) {
        return 'reference ignores :text and compares codes (R4 #token :text searches Coding.display, CodeableConcept.text, Identifier.type.text as a string)';
      }
      if (operator !== Operator.EQUALS && operator !== Operator.NOT && operator !== Operator.NOT_EQUALS) {
        return `reference ignores :${operator} and compares codes (R4 #token)`;
      }
      return undefined;
    case 'reference':
      if (operator === Operator.IDENTIFIER) {
        return 'reference ignores :identifier and compares reference strings (R4 #reference: :identifier matches Reference.identifier)';
      }
      if (filter.value.includes('://')) {
        return 'reference compares absolute URLs with the stored relative reference as text (R4 #reference: an absolute URL on the server\'s own base is the same as Type/id)';
      }
      return undefined;
    default:
      return undefined;
  }
}

// ------------------------------------------------------------------------------------------------
// The expected answer of a whole search

export interface FilterVerdict {
  filter: string;
  why: string;
  /** Ids only the reference returned, and only the oracle returned, for this filter alone. */
  onlyReference: string[];
  onlyOracle: string[];
}

export interface Expected {
  /** The matches, ordered by the sort rules when there are any. */
  matches: WithId<Resource>[];
  /** `_include` / `_revinclude` entries (computed by fhir-router's own include logic over the reference repository). */
  included: WithId<Resource>[];
  /** Filters where the oracle overrode the reference and the two disagreed: the reference is wrong there. */
  referenceWrong: FilterVerdict[];
  /** Filters where the reference was trusted but the oracle disagreed: a bug in one of the two. */
  unexplained: FilterVerdict[];
}

export async function expectedResult(world: SearchWorld, request: SearchRequest): Promise<Expected> {
  const type = request.resourceType;
  let matches = world.all(type);
  const referenceWrong: FilterVerdict[] = [];
  const unexplained: FilterVerdict[] = [];
  for (const filter of request.filters ?? []) {
    const label = `${filter.code}:${filter.operator}=${filter.value}`;
    const oracle = new Set(world.all(type).filter((r) => oracleMatch(world, type, r, filter)).map((r) => r.id));
    const reference = await referenceIds(world, type, filter);
    let why = whyReferenceIsWrong(type, filter);
    if (!why && tokenCaseMatters(world, type, filter)) {
      why =
        'reference folds case on every token; R4 #token: "Match is case sensitive unless the underlying semantics for the context indicate that the token should be interpreted case-insensitively" (e-mail addresses are case-insensitive, codes and identifiers are not)';
    }
    const verdict = (reason: string): FilterVerdict => ({
      filter: label,
      why: reason,
      onlyReference: [...reference].filter((id) => !oracle.has(id)),
      onlyOracle: [...oracle].filter((id) => !reference.has(id)),
    });
    if (why) {
      const v = verdict(why);
      if (v.onlyOracle.length || v.onlyReference.length) {
        referenceWrong.push(v);
      }
      matches = matches.filter((r) => oracle.has(r.id));
    } else {
      const v = verdict('reference trusted here, but the oracle disagrees');
      if (v.onlyOracle.length || v.onlyReference.length) {
        unexplained.push(v);
      }
      matches = matches.filter((r) => reference.has(r.id));
    }
  }
  const rules = request.sortRules ?? [];
  if (rules.length) {
    const keyed = matches.map((resource) => ({ resource, key: sortKeys(world, resource, rules) }));
    keyed.sort((a, b) => compareSortKeys(a.key, b.key, rules));
    matches = keyed.map((k) => k.resource);
  }
  let included: WithId<Resource>[] = [];
  if (request.include || request.revInclude) {
    const entries: BundleEntry[] = matches.map((resource) => ({ resource, search: { mode: 'match' } }));
    await getExtraEntries(world.repo, request, matches, entries);
    included = entries.filter((e) => e.search?.mode === 'include').map((e) => e.resource as WithId<Resource>);
  }
  return { matches, included, referenceWrong, unexplained };
}

/**
 * The reference's answer for one filter: core's `matchesSearchRequest` (what MemoryRepository runs
 * for every resource), or MemoryRepository's own search for chains, which it resolves itself.
 */
async function referenceIds(world: SearchWorld, resourceType: string, filter: Filter): Promise<Set<string>> {
  try {
    if (filter.code.includes('.') && !filter.code.startsWith('_has:')) {
      const found = await world.repo.searchResources({ resourceType: resourceType as Resource['resourceType'], filters: [filter] });
      return new Set(found.map((r) => r.id));
    }
    const request: SearchRequest = { resourceType: resourceType as Resource['resourceType'], filters: [filter] };
    return new Set(world.all(resourceType).filter((r) => matchesSearchRequest(r, request)).map((r) => r.id));
  } catch {
    return new Set(); // the reference rejects the filter (e.g. a chain it cannot follow)
  }
}

// ------------------------------------------------------------------------------------------------
// The oracle: one filter against one resource

function oracleMatch(world: SearchWorld, resourceType: string, resource: Resource, filter: Filter): boolean {
  const { code, operator, value } = filter;
  if (code.startsWith('_has:')) {
    return hasMatch(world, resource, code, value);
  }
  if (code.includes('.')) {
    return chainMatch(world, resourceType, resource, code, value);
  }
  if (code === '_compartment') {
    return compartmentMatch(resource, value);
  }
  if (code === '_list') {
    return listMatch(world, resource, value);
  }
  const param = getSearchParameter(resourceType, code);
  if (!param) {
    return false;
  }
  if (param.type === 'composite') {
    return compositeMatch(resource, code, value);
  }
  const values = paramValues(param, resource);
  if (operator === Operator.MISSING || operator === Operator.PRESENT) {
    // R4 #missing: missing=true → the resource has no value for the parameter.
    const wantMissing = (operator === Operator.MISSING) === (value === 'true');
    return wantMissing === (values.length === 0);
  }
  switch (param.type) {
    case 'string':
      return stringMatch(values, operator, value);
    case 'token':
      return tokenMatch(world, values, operator, value, false);
    case 'uri':
      return uriMatch(values, operator, value);
    case 'date':
      return dateMatch(values, operator, value);
    case 'number':
    case 'quantity':
      return quantityMatch(values, operator, value);
    case 'reference':
      return referenceMatch(world, values, operator, value);
    default:
      return false;
  }
}

const parsedPaths = new Map<string, FhirPathAtom>();

/** Evaluates FHIRPath, parsing each expression once. */
function evalPath(expression: string, input: TypedValue[]): TypedValue[] {
  let atom = parsedPaths.get(expression);
  if (!atom) {
    atom = parseFhirPath(expression);
    parsedPaths.set(expression, atom);
  }
  return evalFhirPathTyped(atom, input);
}

/** Values of each parameter expression per resource, computed once (the data set does not change). */
const valueCache = new WeakMap<Resource, Map<string, TypedValue[]>>();

function paramValues(param: SearchParameter, resource: Resource): TypedValue[] {
  const expression = param.expression as string;
  let perResource = valueCache.get(resource);
  if (!perResource) {
    perResource = new Map();
    valueCache.set(resource, perResource);
  }
  let values = perResource.get(expression);
  if (!values) {
    try {
      values = evalPath(expression, [toTypedValue(resource)]).filter((v) => v.value !== undefined && v.value !== null);
    } catch {
      values = [];
    }
    perResource.set(expression, values);
  }
  return values;
}

/** R4 #string: case- and accent-insensitive. Unicode case folding also maps final sigma ς to σ. */
export function fold(text: string): string {
  return text.normalize('NFD').replace(/\p{M}/gu, '').toLowerCase().replace(/ς/g, 'σ');
}

/** The strings a value offers to string search: every part of a HumanName or Address. */
function stringsOf(tv: TypedValue): string[] {
  const v = tv.value;
  if (typeof v === 'string') {
    return [v];
  }
  if (tv.type === 'HumanName') {
    return [v.text, v.family, ...(v.given ?? []), ...(v.prefix ?? []), ...(v.suffix ?? [])].filter(Boolean);
  }
  if (tv.type === 'Address') {
    return [v.text, ...(v.line ?? []), v.city, v.district, v.state, v.postalCode, v.country].filter(Boolean);
  }
  return [];
}

/** R4 #string: default "equals or starts with", :exact the whole string with case and accents, :contains anywhere. */
function stringMatch(values: TypedValue[], operator: Operator, value: string): boolean {
  const strings = values.flatMap(stringsOf);
  return splitSearchOnComma(value).some((wanted) =>
    strings.some((s) => {
      switch (operator) {
        case Operator.EXACT:
          return s === wanted;
        case Operator.CONTAINS:
          return fold(s).includes(fold(wanted));
        default:
          return fold(s).startsWith(fold(wanted));
      }
    })
  );
}

interface Token {
  system?: string;
  code?: string;
  texts: string[];
  caseInsensitive?: boolean;
  typeCodings?: { system?: string; code?: string }[];
}

function tokensOf(tv: TypedValue): Token[] {
  const v = tv.value;
  switch (tv.type) {
    case 'Coding':
      return [{ system: v.system, code: v.code, texts: [v.display].filter(Boolean) }];
    case 'CodeableConcept': {
      const texts = [v.text].filter(Boolean) as string[];
      const codings = (v.coding ?? []) as { system?: string; code?: string; display?: string }[];
      return codings.length
        ? codings.map((c) => ({ system: c.system, code: c.code, texts: [c.display, ...texts].filter(Boolean) as string[] }))
        : [{ texts }];
    }
    case 'Identifier': {
      const id = v as Identifier;
      return [{ system: id.system, code: id.value, texts: [id.type?.text].filter(Boolean) as string[], typeCodings: id.type?.coding }];
    }
    case 'ContactPoint':
      // e-mail addresses are case-insensitive by their own semantics (RFC 5321 in practice)
      return [{ system: v.system, code: v.value, texts: [], caseInsensitive: v.system === 'email' }];
    default:
      return typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean' ? [{ code: String(v), texts: [] }] : [];
  }
}

/** R4 #token: `code`, `system|code`, `|code` (no system), `system|`; :not, :text, :in, :below, :above, :of-type. */
function tokenMatch(world: SearchWorld, values: TypedValue[], operator: Operator, value: string, foldCase: boolean): boolean {
  const tokens = values.flatMap(tokensOf);
  const wanted = splitSearchOnComma(value);
  const same = (t: Token, a: string | undefined, b: string): boolean =>
    a !== undefined && (foldCase || t.caseInsensitive ? a.toLowerCase() === b.toLowerCase() : a === b);
  const matchOne = (t: Token, w: string): boolean => {
    const bar = w.indexOf('|');
    if (bar < 0) {
      return same(t, t.code, w);
    }
    const system = w.slice(0, bar);
    const code = w.slice(bar + 1);
    if (!system) {
      return !t.system && same(t, t.code, code);
    }
    return t.system === system && (!code || same(t, t.code, code));
  };
  switch (operator) {
    case Operator.NOT:
    case Operator.NOT_EQUALS:
      // R4 #token :not: resources without a matching token, including those with no value at all
      return !tokens.some((t) => wanted.some((w) => matchOne(t, w)));
    case Operator.TEXT:
      // R4 #token :text: "processed as a string" (starts with, case- and accent-insensitive)
      return tokens.some((t) => t.texts.some((s) => wanted.some((w) => fold(s).startsWith(fold(w)))));
    case Operator.IN:
    case Operator.NOT_IN: {
      const members = wanted.flatMap((url) => valueSetMembers(world, url));
      const found = tokens.some((t) => members.some((m) => m.system === t.system && m.code === t.code));
      return operator === Operator.IN ? found : !found;
    }
    case Operator.BELOW:
    case Operator.ABOVE:
      return tokens.some((t) =>
        wanted.some((w) => {
          const [system, code] = w.split('|');
          if (t.system !== system || !t.code) {
            return false;
          }
          // :below → the resource's code is the given code or under it; :above → the given code is under the resource's
          return operator === Operator.BELOW ? isSubsumedBy(world, system, t.code, code) : isSubsumedBy(world, system, code, t.code);
        })
      );
    case Operator.OF_TYPE:
      // R4 #token :of-type: [type system]|[type code]|[identifier value]
      return tokens.some((t) =>
        wanted.some((w) => {
          const [system, code, idValue] = w.split('|');
          return t.code === idValue && (t.typeCodings ?? []).some((c) => c.system === system && c.code === code);
        })
      );
    default:
      return tokens.some((t) => wanted.some((w) => matchOne(t, w)));
  }
}

/** Does folding case change the answer of this token filter on this data? Then the reference (which folds) is wrong. */
function tokenCaseMatters(world: SearchWorld, resourceType: string, filter: Filter): boolean {
  const param = getSearchParameter(resourceType, filter.code);
  if (param?.type !== 'token' || filter.code.includes('.')) {
    return false;
  }
  return world
    .all(resourceType)
    .some((r) => {
      const values = paramValues(param, r);
      return tokenMatch(world, values, filter.operator, filter.value, false) !== tokenMatch(world, values, filter.operator, filter.value, true);
    });
}

function valueSetMembers(world: SearchWorld, url: string): { system?: string; code?: string }[] {
  const vs = world.all('ValueSet').find((v) => (v as ValueSet).url === url) as ValueSet | undefined;
  return (vs?.compose?.include ?? []).flatMap((inc) => (inc.concept ?? []).map((c) => ({ system: inc.system, code: c.code })));
}

/** Is `code` the same as `ancestor` or below it in the code system's concept hierarchy? */
function isSubsumedBy(world: SearchWorld, system: string, code: string, ancestor: string): boolean {
  const cs = world.all('CodeSystem').find((c) => (c as CodeSystem).url === system) as CodeSystem | undefined;
  const find = (concepts: CodeSystemConcept[] | undefined, wanted: string): CodeSystemConcept | undefined => {
    for (const c of concepts ?? []) {
      const hit = c.code === wanted ? c : find(c.concept, wanted);
      if (hit) {
        return hit;
      }
    }
    return undefined;
  };
  const top = find(cs?.concept, ancestor);
  return top !== undefined && (top.code === code || find(top.concept, code) !== undefined);
}

/** R4 #uri: exact match; :below → the stored uri starts with the value; :above → the value starts with the stored uri. */
function uriMatch(values: TypedValue[], operator: Operator, value: string): boolean {
  const uris = values.map((v) => v.value).filter((v): v is string => typeof v === 'string');
  return splitSearchOnComma(value).some((wanted) =>
    uris.some((u) => (operator === Operator.BELOW ? u.startsWith(wanted) : operator === Operator.ABOVE ? wanted.startsWith(u) : u === wanted))
  );
}

// ---- dates

const DATE_RE = /^(-?\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/;

/**
 * The range [low, high) of milliseconds a date, dateTime or instant stands for: its precision
 * decides the width (R4 #date: "the date 2013-01-14 ... covers the range 2013-01-14T00:00 to
 * 2013-01-14T23:59:59.999").
 */
export function dateRange(text: string): [number, number] | undefined {
  const m = DATE_RE.exec(text);
  if (!m) {
    return undefined;
  }
  const [, y, mo, d, h, mi, s, frac, tz] = m;
  const year = Number(y);
  if (mo === undefined) {
    return [Date.UTC(year, 0, 1), Date.UTC(year + 1, 0, 1)];
  }
  if (d === undefined) {
    return [Date.UTC(year, Number(mo) - 1, 1), Date.UTC(year, Number(mo), 1)];
  }
  if (h === undefined) {
    return [Date.UTC(year, Number(mo) - 1, Number(d)), Date.UTC(year, Number(mo) - 1, Number(d) + 1)];
  }
  let offset = 0;
  if (tz && tz !== 'Z') {
    offset = (tz.startsWith('-') ? -1 : 1) * (Number(tz.slice(1, 3)) * 60 + Number(tz.slice(4, 6))) * 60_000;
  }
  const minute = Date.UTC(year, Number(mo) - 1, Number(d), Number(h), Number(mi)) - offset;
  if (s === undefined) {
    return [minute, minute + 60_000];
  }
  const second = minute + Number(s) * 1000;
  if (frac === undefined) {
    return [second, second + 1000];
  }
  const digits = Math.min(frac.length, 3); // JS dates keep milliseconds
  const start = second + Number(frac.slice(0, 3).padEnd(3, '0'));
  return [start, start + 10 ** (3 - digits)];
}

/** A stored date value as a range; a Period without start/end is open on that side (R4 #date). */
function storedRange(tv: TypedValue): [number, number] | undefined {
  const v = tv.value;
  if (typeof v === 'string') {
    return dateRange(v);
  }
  if (v && typeof v === 'object' && ('start' in v || 'end' in v)) {
    const p = v as Period;
    const low = p.start ? dateRange(p.start)?.[0] : -Infinity;
    const high = p.end ? dateRange(p.end)?.[1] : Infinity;
    return low === undefined || high === undefined ? undefined : [low, high];
  }
  return undefined;
}

/**
 * R4 #prefix, for ranges (search value S = [sl, sh), target T = [tl, th)):
 * eq: S contains T; ne: S does not contain T; gt: the range above S overlaps T; lt: the range
 * below S overlaps T; ge: gt or eq; le: lt or eq; sa: T lies wholly after S; eb: T lies wholly
 * before S. A resource without a value matches no prefix (ne included): every prefix compares "the
 * value for the parameter in the resource".
 */
function dateMatch(values: TypedValue[], operator: Operator, value: string): boolean {
  const targets = values.map(storedRange).filter((r): r is [number, number] => r !== undefined);
  return splitSearchOnComma(value).some((wanted) => {
    const search = dateRange(wanted);
    if (!search) {
      return false;
    }
    const [sl, sh] = search;
    return targets.some(([tl, th]) => {
      const eq = sl <= tl && th <= sh;
      switch (operator) {
        case Operator.EQUALS:
          return eq;
        case Operator.NOT_EQUALS:
          return !eq;
        case Operator.GREATER_THAN:
          return th > sh;
        case Operator.LESS_THAN:
          return tl < sl;
        case Operator.GREATER_THAN_OR_EQUALS:
          return th > sh || eq;
        case Operator.LESS_THAN_OR_EQUALS:
          return tl < sl || eq;
        case Operator.STARTS_AFTER:
          return tl >= sh;
        case Operator.ENDS_BEFORE:
          return th <= sl;
        default:
          return false;
      }
    });
  });
}

// ---- numbers and quantities, in exact decimal arithmetic

/** A decimal as mantissa × 10^exponent, exactly as written ("5.40" → 540 × 10^-2). */
interface Dec {
  m: bigint;
  e: number;
}

export function parseDecimal(text: string): Dec | undefined {
  const match = /^([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/.exec(text.trim());
  if (!match || (!match[2] && !match[3])) {
    return undefined;
  }
  const [, sign, int, frac = '', exp = '0'] = match;
  const m = BigInt(`${sign}${int || '0'}${frac}`);
  return { m, e: Number(exp) - frac.length };
}

function cmp(a: Dec, b: Dec): number {
  const e = Math.min(a.e, b.e);
  const x = a.m * 10n ** BigInt(a.e - e);
  const y = b.m * 10n ** BigInt(b.e - e);
  return x < y ? -1 : x > y ? 1 : 0;
}

/**
 * R4 #number: "100" searches [99.5, 100.5), "100.00" searches [99.995, 100.005), "1e2" [50, 150);
 * "when a comparison prefix in the set gt, lt, ge, le, sa & eb is provided, the implicit precision
 * of the number is ignored". ap: within 10% of the value (R4's recommendation).
 */
function numberMatch(target: number, operator: Operator, text: string): boolean {
  const v = parseDecimal(text);
  const t = parseDecimal(String(target));
  if (!v || !t) {
    return false;
  }
  const low: Dec = { m: v.m * 10n - 5n, e: v.e - 1 };
  const high: Dec = { m: v.m * 10n + 5n, e: v.e - 1 };
  const eq = cmp(t, low) >= 0 && cmp(t, high) < 0;
  switch (operator) {
    case Operator.EQUALS:
      return eq;
    case Operator.NOT_EQUALS:
      return !eq;
    case Operator.GREATER_THAN:
    case Operator.STARTS_AFTER:
      return cmp(t, v) > 0;
    case Operator.LESS_THAN:
    case Operator.ENDS_BEFORE:
      return cmp(t, v) < 0;
    case Operator.GREATER_THAN_OR_EQUALS:
      return cmp(t, v) >= 0;
    case Operator.LESS_THAN_OR_EQUALS:
      return cmp(t, v) <= 0;
    case Operator.APPROXIMATELY: {
      // |t - v| ≤ |v| / 10  ⇔  |10·(t − v)| ≤ |v|
      const e = Math.min(t.e, v.e);
      const ti = t.m * 10n ** BigInt(t.e - e);
      const vi = v.m * 10n ** BigInt(v.e - e);
      const diff = (ti - vi) * 10n;
      return (diff < 0n ? -diff : diff) <= (vi < 0n ? -vi : vi);
    }
    default:
      return false;
  }
}

/**
 * R4 #quantity: `[prefix][number]|[system]|[code]`; with a system, system and code must both match;
 * with `[number]||[code]`, "the code or the stated human unit (unit)" must match; a bare number
 * matches any unit.
 */
function quantityMatch(values: TypedValue[], operator: Operator, value: string): boolean {
  return splitSearchOnComma(value).some((wanted) => {
    const [number, system, code] = wanted.split('|');
    return values.some((tv) => {
      const v = tv.value;
      const q = typeof v === 'number' ? { value: v } : (v as { value?: number; system?: string; code?: string; unit?: string });
      if (typeof q?.value !== 'number') {
        return false;
      }
      if (system && q.system !== system) {
        return false;
      }
      if (code && (system ? q.code !== code : q.code !== code && q.unit !== code)) {
        return false;
      }
      return numberMatch(q.value, operator, number);
    });
  });
}

// ---- references

/** `Type/id`, `Type/id/_history/v` or `{base}Type/id` → type and id; anything else → undefined. */
export function parseLiteral(reference: string, base: string): { type: string; id: string } | undefined {
  let rest = reference;
  if (rest.includes('://')) {
    if (!rest.startsWith(base)) {
      return undefined;
    }
    rest = rest.slice(base.length);
  }
  const m = /^([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/.exec(rest);
  return m ? { type: m[1], id: m[2] } : undefined;
}

/** R4 #reference: `Type/id`, a bare `id`, an absolute URL on the server's base; :identifier. */
function referenceMatch(world: SearchWorld, values: TypedValue[], operator: Operator, value: string): boolean {
  const refs = values.map((v) => v.value as Reference | string);
  return splitSearchOnComma(value).some((wanted) =>
    refs.some((ref) => {
      if (typeof ref === 'string') {
        return ref === wanted;
      }
      if (operator === Operator.IDENTIFIER) {
        const [system, v] = wanted.includes('|') ? wanted.split('|') : [undefined, wanted];
        return ref.identifier?.value === v && (system === undefined || ref.identifier?.system === system);
      }
      const stored = ref.reference ? parseLiteral(ref.reference, world.base) : undefined;
      if (!stored) {
        return false;
      }
      if (!wanted.includes('/')) {
        return stored.id === wanted;
      }
      const target = parseLiteral(wanted, world.base);
      return target !== undefined && target.type === stored.type && target.id === stored.id;
    })
  );
}

// ---- chains, _has, _compartment, composites

/** The resources a reference parameter of `resource` points to (those in the data set). */
function targets(world: SearchWorld, param: SearchParameter, resource: Resource): WithId<Resource>[] {
  return paramValues(param, resource)
    .map((v) => (v.value as Reference).reference)
    .filter((r): r is string => typeof r === 'string')
    .map((r) => world.get(r))
    .filter((r): r is WithId<Resource> => r !== undefined);
}

/**
 * R4 #chaining: `ref[:Type].rest=value` matches when some resource that `ref` points to (of `Type`,
 * when given; otherwise any target type that has the next parameter) matches `rest=value`. `rest`
 * may be a chain again.
 */
function chainMatch(world: SearchWorld, resourceType: string, resource: Resource, code: string, value: string): boolean {
  const dot = code.indexOf('.');
  const [refCode, type] = code.slice(0, dot).split(':');
  const rest = code.slice(dot + 1);
  const param = getSearchParameter(resourceType, refCode);
  if (param?.type !== 'reference') {
    return false;
  }
  return targets(world, param, resource).some((target) => {
    if (type && target.resourceType !== type) {
      return false;
    }
    const sub = parsePairs(target.resourceType, [[rest, value]]);
    return (sub.filters ?? []).every((f) => oracleMatch(world, target.resourceType, target, f));
  });
}

/**
 * R4 #has: `_has:Type:param:rest=value` matches when some `Type` resource whose `param` refers to
 * this resource matches `rest=value` (`rest` may be another `_has`).
 */
function hasMatch(world: SearchWorld, resource: Resource, code: string, value: string): boolean {
  return referredToBy(world, code, value).has(`${resource.resourceType}/${resource.id}`);
}

const hasCache = new WeakMap<SearchWorld, Map<string, Set<string>>>();

/** `Type/id` of every resource that some matching `Type` resource refers to through `param` (computed once per filter). */
function referredToBy(world: SearchWorld, code: string, value: string): Set<string> {
  const cache = hasCache.get(world) ?? new Map<string, Set<string>>();
  hasCache.set(world, cache);
  const key = `${code}=${value}`;
  let result = cache.get(key);
  if (!result) {
    result = new Set<string>();
    const [, type, refCode, ...restParts] = code.split(':');
    const param = getSearchParameter(type, refCode);
    if (param) {
      const sub = parsePairs(type, [[restParts.join(':'), value]]);
      for (const other of world.all(type)) {
        if ((sub.filters ?? []).every((f) => oracleMatch(world, type, other, f))) {
          for (const target of targets(world, param, other)) {
            result.add(`${target.resourceType}/${target.id}`);
          }
        }
      }
    }
    cache.set(key, result);
  }
  return result;
}

/** R4 #list: `_list=id` matches the resources the List's entries refer to. */
function listMatch(world: SearchWorld, resource: Resource, value: string): boolean {
  return splitSearchOnComma(value).some((id) => {
    const list = world.get(`List/${id}`) as List | undefined;
    return (list?.entry ?? []).some((e) => e.item.reference === `${resource.resourceType}/${resource.id}`);
  });
}

/** The Patient compartment for the types of this data set (R4 CompartmentDefinition/patient). */
const PATIENT_COMPARTMENT: Record<string, string[]> = {
  Observation: ['subject', 'performer'],
  Condition: ['patient', 'asserter'],
  Encounter: ['patient'],
  DiagnosticReport: ['subject'],
  RiskAssessment: ['subject'],
  Patient: ['link'],
};

function compartmentMatch(resource: Resource, value: string): boolean {
  const [type, id] = value.split('/');
  if (type !== 'Patient') {
    return false;
  }
  if (resource.resourceType === 'Patient' && resource.id === id) {
    return true;
  }
  return (PATIENT_COMPARTMENT[resource.resourceType] ?? []).some((code) => {
    const param = getSearchParameter(resource.resourceType, code);
    return param !== undefined && paramValues(param, resource).some((v) => (v.value as Reference).reference === value);
  });
}

/**
 * R4 #composite: `a$b` matches when one element satisfies both parts together (the same component,
 * not one component for `a` and another for `b`). The parts are written out for the composites the
 * tests use.
 */
const COMPOSITES: Record<string, { element: string; parts: [string, 'token' | 'quantity' | 'string'][] }> = {
  'code-value-quantity': { element: 'Observation', parts: [['code', 'token'], ['value.ofType(Quantity)', 'quantity']] },
  'code-value-concept': { element: 'Observation', parts: [['code', 'token'], ['value.ofType(CodeableConcept)', 'token']] },
  'component-code-value-quantity': {
    element: 'Observation.component',
    parts: [['code', 'token'], ['value.ofType(Quantity)', 'quantity']],
  },
  'combo-code-value-quantity': {
    element: 'Observation | Observation.component',
    parts: [['code', 'token'], ['value.ofType(Quantity)', 'quantity']],
  },
};

function compositeMatch(resource: Resource, code: string, value: string): boolean {
  const composite = COMPOSITES[code];
  if (!composite) {
    return false;
  }
  return splitSearchOnComma(value).some((wanted) => {
    const pieces = wanted.split('$');
    return evalPath(composite.element, [toTypedValue(resource)]).some((element) =>
      composite.parts.every(([path, type], i) => {
        const values = evalPath(path, [element]);
        const piece = pieces[i] ?? '';
        if (type === 'token') {
          return values.flatMap(tokensOf).some((t) => {
            const [system, c] = piece.includes('|') ? piece.split('|') : [undefined, piece];
            return t.code === c && (system === undefined || t.system === system);
          });
        }
        if (type === 'quantity') {
          const prefix = /^(eq|ne|gt|lt|ge|le|sa|eb|ap)/.exec(piece)?.[1] ?? 'eq';
          return quantityMatch(values, prefix as Operator, piece.replace(/^(eq|ne|gt|lt|ge|le|sa|eb|ap)/, ''));
        }
        return stringMatch(values, Operator.EQUALS, piece);
      })
    );
  });
}

// ------------------------------------------------------------------------------------------------
// Sorting

export type SortKey = (string | number | undefined)[];

/** The value each sort rule sees for a resource (see the file comment for ranges and repeats). */
export function sortKeys(_world: SearchWorld, resource: Resource, rules: SortRule[]): SortKey {
  return rules.map((rule) => {
    if (rule.code === '_id') {
      return resource.id;
    }
    if (rule.code === '_lastUpdated') {
      return resource.meta?.lastUpdated ? Date.parse(resource.meta.lastUpdated) : undefined;
    }
    const param = getSearchParameter(resource.resourceType, rule.code);
    if (!param) {
      return undefined;
    }
    const values = paramValues(param, resource);
    let keys: (string | number)[] = [];
    switch (param.type) {
      case 'string':
        keys = values.flatMap(stringsOf).map(fold);
        break;
      case 'token':
        keys = values.flatMap(tokensOf).map((t) => t.code).filter((c): c is string => c !== undefined);
        break;
      case 'date':
        keys = values
          .map(storedRange)
          .filter((r): r is [number, number] => r !== undefined)
          .map(([low, high]) => (rule.descending ? high : low));
        break;
      case 'number':
      case 'quantity':
        keys = values
          .map((v) => (typeof v.value === 'number' ? v.value : (v.value as { value?: number }).value))
          .filter((n): n is number => typeof n === 'number');
        break;
      case 'reference':
        keys = values.map((v) => (v.value as Reference).reference).filter((r): r is string => typeof r === 'string');
        break;
    }
    if (keys.length === 0) {
      return undefined;
    }
    return keys.reduce((a, b) => ((rule.descending ? b > a : b < a) ? b : a));
  });
}

/**
 * Compares sort keys rule by rule; a missing value sorts last whatever the direction. R4 does not
 * define a collation for text: `compareText` can supply the server's (by default, code point order).
 */
export function compareSortKeys(
  a: SortKey,
  b: SortKey,
  rules: SortRule[],
  compareText: (x: string, y: string) => number = (x, y) => (x < y ? -1 : x > y ? 1 : 0)
): number {
  for (let i = 0; i < rules.length; i++) {
    const x = a[i];
    const y = b[i];
    if (x === y) {
      continue;
    }
    if (x === undefined) {
      return 1;
    }
    if (y === undefined) {
      return -1;
    }
    const c = typeof x === 'string' && typeof y === 'string' ? compareText(x, y) : x < y ? -1 : 1;
    if (c === 0) {
      continue;
    }
    return rules[i].descending ? -c : c;
  }
  return 0;
}
