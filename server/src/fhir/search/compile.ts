import { badRequest, getSearchParameters, Operator, OperationOutcomeError, parseFilterParameter, parseSearchRequest } from '@medplum/core';
import type { Filter, SearchRequest, SortRule } from '@medplum/core';
import type { SearchParameter } from '@medplum/fhirtypes';
import { parseDateRange } from './dates.ts';
import { normalizeText, parseReferenceString, precisionHalfStep } from './index-values.ts';
import type { ParamRegistry } from './param-registry.ts';

/** Collects bind parameters while SQL text is assembled, so values never enter the SQL string. */
export class SqlParams {
  readonly values: unknown[] = [];
  private aliases = 0;

  add(value: unknown): string {
    this.values.push(value);
    return '$' + this.values.length;
  }

  /** A fresh table alias for a nested resource (chains, _has). */
  alias(prefix: string): string {
    return `${prefix}${++this.aliases}`;
  }
}

export interface CompileContext {
  registry: ParamRegistry;
  /** Projects whose rows the caller may see. */
  projects: readonly string[];
}

/** A compiled search: the WHERE clause over `resource r` and the ORDER BY list. */
export interface CompiledSearch {
  where: string;
  orderBy: string;
  /** Bind values of the WHERE clause alone (for a count). */
  whereValues: unknown[];
  /** Bind values of WHERE and ORDER BY together. */
  values: unknown[];
}

/** Compiles the filters and sort rules of a search request for the given resource types. */
export function compileSearch(
  resourceTypes: readonly string[],
  request: SearchRequest,
  ctx: CompileContext
): CompiledSearch {
  const params = new SqlParams();
  const compiler = new FilterCompiler(resourceTypes, ctx, params);
  const clauses = [compiler.visible()];
  for (const filter of request.filters ?? []) {
    clauses.push(compiler.filter(filter));
  }
  const whereValues = [...params.values];
  const orderBy = compiler.orderBy(request.sortRules);
  return { where: clauses.join(' AND '), orderBy, whereValues, values: params.values };
}

/** Most links a chain (`a.b.c.d`) or nested `_has` may have. */
const MAX_CHAIN_DEPTH = 4;

/**
 * Compiles filters into SQL conditions on one resource row, `alias` (`r` at the top; chained and
 * `_has` searches compile the linked resources with their own aliases, each filtered by project).
 * Index tables are always aliased `s`: a nested subquery's `s` shadows the outer one, as intended.
 */
class FilterCompiler {
  private readonly types: readonly string[];
  private readonly ctx: CompileContext;
  private readonly p: SqlParams;
  private readonly a: string;
  private readonly depth: number;

  constructor(types: readonly string[], ctx: CompileContext, params: SqlParams, alias = 'r', depth = 0) {
    this.types = types;
    this.ctx = ctx;
    this.p = params;
    this.a = alias;
    this.depth = depth;
  }

  filter(filter: Filter): string {
    const { code } = filter;
    if (code === '_filter') {
      return this.filterExpression(parseFilterExpression(filter.value));
    }
    if (code === '_id') {
      return this.idFilter(filter);
    }
    if (code === '_lastUpdated') {
      const column = `${this.a}.last_updated`;
      return orAll(splitValues(filter.value).map((v) => dateCondition(this.p, column, column, filter.operator, v)));
    }
    if (code === '_compartment' || code === '_project') {
      throw new OperationOutcomeError(badRequest(`Search parameter ${code} is not supported yet`, code));
    }
    if (code.startsWith('_has:')) {
      return this.reverseChain(filter);
    }
    if (code.includes('.')) {
      return this.chain(filter);
    }
    const param = this.searchParam(code);
    const ids = this.paramIds(code);
    if (filter.operator === Operator.MISSING || filter.operator === Operator.PRESENT) {
      const missing = (filter.operator === Operator.MISSING) === (filter.value === 'true');
      const exists = this.existsAny(param, ids, 'TRUE');
      return missing ? `NOT ${exists}` : exists;
    }
    switch (param.type) {
      case 'token':
      case 'uri':
        return this.tokenFilter(param, ids, filter);
      case 'string':
        return this.stringFilter(ids, filter);
      case 'date':
        return this.dateFilter(ids, filter);
      case 'number':
      case 'quantity':
        return this.quantityFilter(param, ids, filter);
      case 'reference':
        return this.referenceFilter(ids, filter);
      default:
        throw new OperationOutcomeError(badRequest(`Search on ${param.type} parameter ${code} is not supported`));
    }
  }

  orderBy(rules: SortRule[] | undefined): string {
    const keys: string[] = [];
    for (const rule of rules ?? []) {
      const dir = rule.descending ? 'DESC' : 'ASC';
      if (rule.code === '_id') {
        keys.push(`r.id ${dir}`);
      } else if (rule.code === '_lastUpdated') {
        keys.push(`r.last_updated ${dir}`);
      } else {
        const param = this.searchParam(rule.code);
        const ids = this.p.add(this.paramIds(rule.code));
        const agg = rule.descending ? 'max' : 'min';
        const column = sortColumn(param, rule.descending);
        keys.push(
          `(SELECT ${agg}(${column}) FROM ${indexTable(param)} s WHERE s.rid = r.rid AND s.param = ANY(${ids}::int[])) ${dir} NULLS LAST`
        );
      }
    }
    keys.push('r.rid ASC');
    return keys.join(', ');
  }

  private searchParam(code: string): SearchParameter {
    for (const type of this.types) {
      const param = getSearchParameters(type)?.[code];
      if (param) {
        return param;
      }
    }
    throw new OperationOutcomeError(badRequest(`Unknown search parameter: ${code}`, code));
  }

  private paramIds(code: string): number[] {
    const ids: number[] = [];
    for (const type of this.types) {
      const id = this.ctx.registry.get(type, code);
      if (id !== undefined) {
        ids.push(id);
      }
    }
    return ids;
  }

  private existsAny(param: SearchParameter, ids: number[], condition: string): string {
    const paramIds = ids.length === 1 ? `s.param = ${this.p.add(ids[0])}` : `s.param = ANY(${this.p.add(ids)}::int[])`;
    return `EXISTS (SELECT 1 FROM ${indexTable(param)} s WHERE s.rid = ${this.a}.rid AND ${paramIds} AND (${condition}))`;
  }

  /**
   * `subject:Patient.name=x`: some reference of this resource points at a visible Patient matching
   * `name=x`. The linked resource is filtered by project like the main query.
   */
  private chain(filter: Filter): string {
    const dot = filter.code.indexOf('.');
    const [code, targetModifier] = filter.code.slice(0, dot).split(':');
    const rest = filter.code.slice(dot + 1);
    const param = this.searchParam(code);
    if (param.type !== 'reference') {
      throw new OperationOutcomeError(badRequest(`Chained search needs a reference parameter, not ${code}`, filter.code));
    }
    const targets = targetModifier ? [targetModifier] : (param.target ?? []);
    if (targets.length === 0 || (targetModifier && !param.target?.includes(targetModifier as never))) {
      throw new OperationOutcomeError(badRequest(`Invalid chain target in ${filter.code}`, filter.code));
    }
    const linked = this.p.alias('c');
    const nested = this.nested(targets, linked, filter.code);
    const condition = nested.filter(nestedFilter(targets, rest, filter));
    return `EXISTS (SELECT 1 FROM sp_reference s JOIN resource ${linked}
      ON ${linked}.resource_type = s.target_type AND ${linked}.id = s.target_id
      WHERE s.rid = ${this.a}.rid AND s.param = ANY(${this.p.add(this.paramIds(code))}::int[])
        AND ${nested.visible()} AND ${condition})`;
  }

  /**
   * `_has:Observation:subject:code=x`: some visible Observation whose `subject` points at this
   * resource matches `code=x` (the last part may itself be a `_has`).
   */
  private reverseChain(filter: Filter): string {
    const [, type, refCode, ...restParts] = filter.code.split(':');
    const rest = restParts.join(':');
    if (!type || !refCode || !rest) {
      throw new OperationOutcomeError(badRequest(`Invalid _has parameter: ${filter.code}`, filter.code));
    }
    const refParam = getSearchParameters(type)?.[refCode];
    if (refParam?.type !== 'reference') {
      throw new OperationOutcomeError(badRequest(`Unknown reference parameter ${type}.${refCode} in ${filter.code}`, filter.code));
    }
    const referrer = this.p.alias('h');
    const nested = this.nested([type], referrer, filter.code);
    const refIds = this.ctx.registry.get(type, refCode);
    const condition = nested.filter(nestedFilter([type], rest, filter));
    return `EXISTS (SELECT 1 FROM sp_reference s JOIN resource ${referrer} ON ${referrer}.rid = s.rid
      WHERE s.param = ${this.p.add(refIds ?? -1)} AND s.target_type = ${this.a}.resource_type AND s.target_id = ${this.a}.id
        AND ${nested.visible()} AND ${condition})`;
  }

  private nested(types: readonly string[], alias: string, code: string): FilterCompiler {
    if (this.depth + 1 > MAX_CHAIN_DEPTH) {
      throw new OperationOutcomeError(badRequest(`Chains are limited to ${MAX_CHAIN_DEPTH} links: ${code}`, code));
    }
    return new FilterCompiler(types, this.ctx, this.p, alias, this.depth + 1);
  }

  /** The conditions every row this compiler reads must meet: its types, the caller's projects, not deleted. */
  visible(): string {
    const type =
      this.types.length === 1
        ? `${this.a}.resource_type = ${this.p.add(this.types[0])}`
        : `${this.a}.resource_type = ANY(${this.p.add(this.types)}::text[])`;
    return `${type} AND ${this.a}.project_id = ANY(${this.p.add(this.ctx.projects)}::uuid[]) AND NOT ${this.a}.deleted`;
  }

  private idFilter(filter: Filter): string {
    const values = splitValues(filter.value);
    const match = `${this.a}.id = ANY(${this.p.add(values)}::text[])`;
    if (filter.operator === Operator.NOT || filter.operator === Operator.NOT_EQUALS) {
      return `NOT (${match})`;
    }
    return match;
  }

  private tokenFilter(param: SearchParameter, ids: number[], filter: Filter): string {
    const values = splitValues(filter.value);
    switch (filter.operator) {
      case Operator.EQUALS:
      case Operator.EXACT:
        return this.existsAny(param, ids, orAll(values.map((v) => this.tokenValue(v))));
      case Operator.NOT:
      case Operator.NOT_EQUALS:
        return `NOT ${this.existsAny(param, ids, orAll(values.map((v) => this.tokenValue(v))))}`;
      case Operator.TEXT:
        return this.existsAny(
          param,
          ids,
          orAll(values.map((v) => `s.text LIKE ${this.p.add('%' + escapeLike(normalizeText(v)) + '%')}`))
        );
      case Operator.BELOW:
        if (param.type === 'uri') {
          return this.existsAny(param, ids, orAll(values.map((v) => `s.code LIKE ${this.p.add(escapeLike(v) + '%')}`)));
        }
        break;
      case Operator.ABOVE:
        if (param.type === 'uri') {
          return this.existsAny(param, ids, orAll(values.map((v) => `${this.p.add(v)} LIKE s.code || '%'`)));
        }
        break;
    }
    throw new OperationOutcomeError(
      badRequest(`Modifier :${filter.operator} is not supported for ${param.type} parameter ${filter.code}`)
    );
  }

  private tokenValue(value: string): string {
    const bar = value.indexOf('|');
    if (bar < 0) {
      // e-mail addresses are indexed in lower case (ContactPoint with system email)
      return value.includes('@') && value !== value.toLowerCase()
        ? `(s.code = ${this.p.add(value)} OR (s.system = 'email' AND s.code = ${this.p.add(value.toLowerCase())}))`
        : `s.code = ${this.p.add(value)}`;
    }
    const system = value.slice(0, bar);
    const code = value.slice(bar + 1);
    if (!system) {
      return `(s.code = ${this.p.add(code)} AND s.system IS NULL)`;
    }
    if (!code) {
      return `s.system = ${this.p.add(system)}`;
    }
    return `(s.code = ${this.p.add(code)} AND s.system = ${this.p.add(system)})`;
  }

  private stringFilter(ids: number[], filter: Filter): string {
    const values = splitValues(filter.value);
    const stringParam = { type: 'string' } as SearchParameter;
    switch (filter.operator) {
      case Operator.EQUALS:
      case Operator.STARTS_WITH:
        return this.existsAny(
          stringParam,
          ids,
          orAll(values.map((v) => `s.norm LIKE ${this.p.add(escapeLike(normalizeText(v)) + '%')}`))
        );
      case Operator.EXACT:
        return this.existsAny(stringParam, ids, orAll(values.map((v) => `s.exact = ${this.p.add(v)}`)));
      case Operator.CONTAINS:
        return this.existsAny(
          stringParam,
          ids,
          orAll(values.map((v) => `s.norm LIKE ${this.p.add('%' + escapeLike(normalizeText(v)) + '%')}`))
        );
      case Operator.NOT_EQUALS:
      case Operator.NOT:
        return `NOT ${this.existsAny(stringParam, ids, orAll(values.map((v) => `s.norm = ${this.p.add(normalizeText(v))}`)))}`;
      default:
        throw new OperationOutcomeError(
          badRequest(`Modifier :${filter.operator} is not supported for string parameter ${filter.code}`)
        );
    }
  }

  private dateFilter(ids: number[], filter: Filter): string {
    const dateParam = { type: 'date' } as SearchParameter;
    const values = splitValues(filter.value);
    if (filter.operator === Operator.NOT_EQUALS) {
      const eq = orAll(values.map((v) => dateCondition(this.p, 's.low', 's.high', Operator.EQUALS, v)));
      return `NOT ${this.existsAny(dateParam, ids, eq)}`;
    }
    return this.existsAny(
      dateParam,
      ids,
      orAll(values.map((v) => dateCondition(this.p, 's.low', 's.high', filter.operator, v)))
    );
  }

  private quantityFilter(param: SearchParameter, ids: number[], filter: Filter): string {
    const conditions = splitValues(filter.value).map((raw) => {
      const [numberText, system, code] = raw.split('|');
      const n = Number(numberText);
      if (numberText === '' || !Number.isFinite(n)) {
        throw new OperationOutcomeError(badRequest(`Invalid ${param.type} search value: ${raw}`, filter.code));
      }
      const parts = [numberCondition(this.p, filter.operator, numberText)];
      if (system) {
        parts.push(`s.system = ${this.p.add(system)}`);
      }
      if (code) {
        parts.push(`s.code = ${this.p.add(code)}`);
      }
      return '(' + parts.join(' AND ') + ')';
    });
    if (filter.operator === Operator.NOT_EQUALS) {
      // numberCondition gives the eq condition for ne; the negation wraps it here.
      return `NOT ${this.existsAny(param, ids, orAll(conditions))}`;
    }
    return this.existsAny(param, ids, orAll(conditions));
  }

  private referenceFilter(ids: number[], filter: Filter): string {
    const values = splitValues(filter.value);
    if (filter.operator === Operator.IDENTIFIER) {
      return this.existsAny({ type: 'token' } as SearchParameter, ids, orAll(values.map((v) => this.tokenValue(v))));
    }
    const referenceParam = { type: 'reference' } as SearchParameter;
    const condition = orAll(
      values.map((v) => {
        const parsed = parseReferenceString(v);
        if (parsed) {
          return `((s.target_id = ${this.p.add(parsed.id)} AND s.target_type = ${this.p.add(parsed.resourceType)}) OR s.ref = ${this.p.add(v)})`;
        }
        if (v.includes('/') || v.includes(':')) {
          // canonical URL, optionally with |version
          const url = v.split('|')[0];
          return `(s.ref = ${this.p.add(v)} OR s.ref = ${this.p.add(url)} OR s.ref LIKE ${this.p.add(escapeLike(url) + '|%')})`;
        }
        return `s.target_id = ${this.p.add(v)}`;
      })
    );
    if (filter.operator === Operator.NOT || filter.operator === Operator.NOT_EQUALS) {
      return `NOT ${this.existsAny(referenceParam, ids, condition)}`;
    }
    if (filter.operator !== Operator.EQUALS) {
      throw new OperationOutcomeError(
        badRequest(`Modifier :${filter.operator} is not supported for reference parameter ${filter.code}`)
      );
    }
    return this.existsAny(referenceParam, ids, condition);
  }

  private filterExpression(expr: FilterExpressionNode): string {
    switch (expr.kind) {
      case 'and':
        return `(${this.filterExpression(expr.left)} AND ${this.filterExpression(expr.right)})`;
      case 'or':
        return `(${this.filterExpression(expr.left)} OR ${this.filterExpression(expr.right)})`;
      case 'not':
        return `NOT (${this.filterExpression(expr.child)})`;
      case 'compare':
        return this.filter(expr.filter);
    }
  }
}

type FilterExpressionNode =
  | { kind: 'and' | 'or'; left: FilterExpressionNode; right: FilterExpressionNode }
  | { kind: 'not'; child: FilterExpressionNode }
  | { kind: 'compare'; filter: Filter };

/**
 * The filter that the rest of a chain (`name:exact` of `subject:Patient.name:exact`) or of a `_has`
 * stands for on the linked types, parsed by core like a top-level parameter (prefixes, modifiers).
 */
function nestedFilter(types: readonly string[], key: string, original: Filter): Filter {
  for (const type of types) {
    const parsed = parseSearchRequest(type, { [key]: original.value }).filters?.[0];
    if (parsed && (parsed.code.startsWith('_') || getSearchParameters(type)?.[parsed.code.split(/[.:]/)[0]])) {
      return parsed;
    }
  }
  throw new OperationOutcomeError(badRequest(`Unknown search parameter ${key} on ${types.join(', ')}`, original.code));
}

/** Turns core's `_filter` parse tree into plain filters joined by and/or/not. */
export function parseFilterExpression(input: string): FilterExpressionNode {
  let parsed: unknown;
  try {
    parsed = parseFilterParameter(input);
  } catch (err) {
    throw new OperationOutcomeError(badRequest(`Invalid _filter: ${(err as Error).message}`, '_filter'));
  }
  return convertFilterTree(parsed);
}

function convertFilterTree(node: unknown): FilterExpressionNode {
  const n = node as Record<string, unknown>;
  if ('keyword' in n) {
    return {
      kind: n.keyword as 'and' | 'or',
      left: convertFilterTree(n.left),
      right: convertFilterTree(n.right),
    };
  }
  if ('child' in n) {
    return { kind: 'not', child: convertFilterTree(n.child) };
  }
  const operator = n.operator as Operator;
  return {
    kind: 'compare',
    filter: { code: n.path as string, operator: operator === Operator.STARTS_WITH ? Operator.EQUALS : operator, value: n.value as string },
  };
}

/**
 * Date comparison with range semantics: the stored value covers [low, high], the search value the
 * range its precision implies. https://hl7.org/fhir/R4/search.html#prefix
 */
function dateCondition(p: SqlParams, low: string, high: string, operator: Operator, value: string): string {
  const range = parseDateRange(value);
  if (!range) {
    throw new OperationOutcomeError(badRequest(`Invalid date search value: ${value}`));
  }
  // Bind parameters are added only when used: Postgres rejects a statement with an unused, untyped one.
  const sl = (): string => p.add(range.low.toISOString()) + '::timestamptz';
  const sh = (): string => p.add(range.high.toISOString()) + '::timestamptz';
  const within = (): string => `(${low} >= ${sl()} AND ${high} <= ${sh()})`;
  switch (operator) {
    case Operator.EQUALS:
      return within();
    case Operator.NOT_EQUALS:
      return `NOT ${within()}`;
    case Operator.GREATER_THAN:
      return `${high} > ${sh()}`;
    case Operator.LESS_THAN:
      return `${low} < ${sl()}`;
    case Operator.GREATER_THAN_OR_EQUALS:
      return `(${high} > ${sh()} OR ${within()})`;
    case Operator.LESS_THAN_OR_EQUALS:
      return `(${low} < ${sl()} OR ${within()})`;
    case Operator.STARTS_AFTER:
      return `${low} > ${sh()}`;
    case Operator.ENDS_BEFORE:
      return `${high} < ${sl()}`;
    case Operator.APPROXIMATELY: {
      // ap: overlap with the search range widened by 10% of its distance from now.
      const margin = Math.abs(Date.now() - range.low.getTime()) * 0.1;
      const al = p.add(new Date(range.low.getTime() - margin).toISOString()) + '::timestamptz';
      const ah = p.add(new Date(range.high.getTime() + margin).toISOString()) + '::timestamptz';
      return `(${low} <= ${ah} AND ${high} >= ${al})`;
    }
    default:
      throw new OperationOutcomeError(badRequest(`Operator ${operator} is not supported for dates`));
  }
}

/**
 * Number comparison; `eq` honours the precision the value is written with ("100" matches [99.5, 100.5),
 * "5.40" matches [5.395, 5.405)). Arithmetic is done in SQL numeric, not in floating point.
 */
function numberCondition(p: SqlParams, operator: Operator, text: string): string {
  const n = Number(text);
  const v = (): string => p.add(text) + '::numeric';
  switch (operator) {
    case Operator.EQUALS:
    case Operator.NOT_EQUALS: {
      const value = p.add(text) + '::numeric';
      const half = p.add(precisionHalfStep(text).toString()) + '::numeric';
      const lo = `(${value} - ${half})`;
      const hi = `(${value} + ${half})`;
      return `((s.value IS NOT NULL AND s.value >= ${lo} AND s.value < ${hi}) OR (s.value IS NULL AND s.low >= ${lo} AND s.high <= ${hi}))`;
    }
    case Operator.GREATER_THAN:
    case Operator.STARTS_AFTER:
      return `coalesce(s.value, s.high) > ${v()}`;
    case Operator.LESS_THAN:
    case Operator.ENDS_BEFORE:
      return `coalesce(s.value, s.low) < ${v()}`;
    case Operator.GREATER_THAN_OR_EQUALS:
      return `coalesce(s.value, s.high) >= ${v()}`;
    case Operator.LESS_THAN_OR_EQUALS:
      return `coalesce(s.value, s.low) <= ${v()}`;
    case Operator.APPROXIMATELY: {
      const margin = Math.abs(n) * 0.1;
      return `coalesce(s.value, s.low) BETWEEN ${p.add(String(n - margin))}::numeric AND ${p.add(String(n + margin))}::numeric`;
    }
    default:
      throw new OperationOutcomeError(badRequest(`Operator ${operator} is not supported for numbers`));
  }
}

function indexTable(param: SearchParameter): string {
  switch (param.type) {
    case 'token':
    case 'uri':
      return 'sp_token';
    case 'string':
      return 'sp_string';
    case 'date':
      return 'sp_date';
    case 'number':
    case 'quantity':
      return 'sp_quantity';
    case 'reference':
      return 'sp_reference';
    default:
      throw new OperationOutcomeError(badRequest(`Parameter type ${param.type} has no index`));
  }
}

function sortColumn(param: SearchParameter, descending: boolean | undefined): string {
  switch (param.type) {
    case 'token':
    case 'uri':
      return 's.code';
    case 'string':
      return 's.norm';
    case 'date':
      return descending ? 's.high' : 's.low';
    case 'number':
    case 'quantity':
      return 'coalesce(s.value, s.low)';
    case 'reference':
      return 's.ref';
    default:
      throw new OperationOutcomeError(badRequest(`Cannot sort on ${param.type} parameter ${param.code}`));
  }
}

/** Splits a search value on unescaped commas (the OR separator) and unescapes `\,` `\|` `\$` `\\`. */
export function splitValues(value: string): string[] {
  const result: string[] = [];
  let current = '';
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === '\\' && i + 1 < value.length) {
      current += value[++i];
    } else if (c === ',') {
      result.push(current);
      current = '';
    } else {
      current += c;
    }
  }
  result.push(current);
  return result;
}

function escapeLike(value: string): string {
  return value.replace(/[\\%_]/g, (c) => '\\' + c);
}

function orAll(conditions: string[]): string {
  return conditions.length === 1 ? conditions[0] : '(' + conditions.join(' OR ') + ')';
}
