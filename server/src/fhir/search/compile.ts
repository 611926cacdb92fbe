import { badRequest, getSearchParameters, Operator, OperationOutcomeError, parseFilterParameter, parseSearchRequest } from '@medplum/core';
import type { Filter, SearchRequest, SortRule } from '@medplum/core';
import type { SearchParameter } from '@medplum/fhirtypes';
import { parseDateRange } from './dates.ts';
import { MAX_INDEXED_CHARS, normalizeText, parseReferenceString, precisionHalfStep } from './index-values.ts';
import type { ParamRegistry } from './param-registry.ts';
import { patientCompartmentParams } from './compartments.ts';
import { compositeComponents, ofTypeSystem } from './parameters.ts';
import type { AccessRules, Interaction } from '../repo/access-rules.ts';

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
  /** Projects whose rows the caller may see; undefined means every project (super admin). */
  projects: readonly string[] | undefined;
  /** The caller's access policy; undefined means unrestricted (the server's own work). */
  access?: AccessRules;
  /** The caller's own project: administration types are never read from linked projects. */
  ownProject?: string;
  /** Codes of `:in`, `:not-in`, `:below` and `:above` values, resolved beforehand (see codeSetKey). */
  codeSets?: ReadonlyMap<string, readonly { system: string; code: string }[]>;
}

/** The key under which the codes of a `:in`/`:not-in`/`:below`/`:above` value are passed to the compiler. */
export function codeSetKey(operator: string, value: string): string {
  return `${operator}\0${value}`;
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

/**
 * The SQL condition that a `resource r` row of the given type is within the caller's projects and
 * access policy for an interaction (reads by id, history, and the before/after checks of writes).
 */
export function compileAccess(resourceTypes: readonly string[], interaction: Interaction, ctx: CompileContext, params: SqlParams): string {
  return new FilterCompiler(resourceTypes, ctx, params).accessible(interaction);
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
    if (code === '_compartment') {
      return this.compartmentFilter(filter);
    }
    if (code === '_project') {
      throw new OperationOutcomeError(badRequest('Search parameter _project is not supported', code));
    }
    if (code.startsWith('_has:')) {
      return this.reverseChain(filter);
    }
    if (code.includes('.')) {
      return this.chain(filter);
    }
    const param = this.searchParam(code);
    this.refuseHidden(param, code);
    const ids = this.paramIds(code);
    if (filter.operator === Operator.MISSING || filter.operator === Operator.PRESENT) {
      const missing = (filter.operator === Operator.MISSING) === (filter.value === 'true');
      let exists = this.existsAny(param, ids, 'TRUE');
      if (param.type === 'reference') {
        // a reference given only by identifier is indexed as a token row
        exists = `(${exists} OR ${this.existsAny({ type: 'token' } as SearchParameter, ids, 'TRUE')})`;
      }
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
      case 'composite':
        return this.compositeFilter(param, ids, filter);
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
        this.refuseHidden(param, rule.code);
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

  /**
   * A parameter over a field the policy hides would tell its value by what matches (or by the
   * order): refused, as if the parameter did not exist for this caller.
   */
  private refuseHidden(param: SearchParameter, code: string): void {
    const access = this.ctx.access;
    if (!access || !param.expression) {
      return;
    }
    for (const type of this.types) {
      for (const field of access.hiddenFields(type)) {
        const head = field.split('.')[0].replace(/\[x\]$/, '');
        if (new RegExp(`\\b${type}\\.${head}(?![a-z0-9])`).test(param.expression)) {
          throw new OperationOutcomeError(badRequest(`Search parameter ${code} is not available`, code));
        }
      }
    }
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

  /**
   * `_compartment=Patient/123`: resources in that patient's compartment — the patient itself, and
   * resources whose compartment parameters (CompartmentDefinition) refer to it.
   */
  private compartmentFilter(filter: Filter): string {
    const alternatives = splitValues(filter.value).map((value) => {
      const target = parseReferenceString(value);
      if (!target || target.resourceType !== 'Patient') {
        throw new OperationOutcomeError(badRequest(`Only Patient compartments are supported: ${value}`, '_compartment'));
      }
      const compartment = patientCompartmentParams();
      const ids = this.types.flatMap((type) =>
        (compartment.get(type) ?? []).map((code) => this.ctx.registry.get(type, code)).filter((id) => id !== undefined)
      );
      const self = this.types.includes('Patient')
        ? `(${this.a}.resource_type = 'Patient' AND ${this.a}.id = ${this.p.add(target.id)})`
        : 'FALSE';
      const linked = ids.length
        ? `EXISTS (SELECT 1 FROM sp_reference s WHERE s.rid = ${this.a}.rid AND s.param = ANY(${this.p.add(ids)}::int[])
             AND s.target_type = 'Patient' AND s.target_id = ${this.p.add(target.id)})`
        : 'FALSE';
      return `(${self} OR ${linked})`;
    });
    return orAll(alternatives);
  }

  private nested(types: readonly string[], alias: string, code: string): FilterCompiler {
    if (this.depth + 1 > MAX_CHAIN_DEPTH) {
      throw new OperationOutcomeError(badRequest(`Chains are limited to ${MAX_CHAIN_DEPTH} links: ${code}`, code));
    }
    return new FilterCompiler(types, this.ctx, this.p, alias, this.depth + 1);
  }

  /**
   * The conditions every row this compiler reads must meet: its types, the caller's projects and
   * access policy, not deleted. Chains and `_has` compile their linked rows through this too.
   */
  visible(): string {
    const type =
      this.types.length === 1
        ? `${this.a}.resource_type = ${this.p.add(this.types[0])}`
        : `${this.a}.resource_type = ANY(${this.p.add(this.types)}::text[])`;
    return `${type} AND ${this.accessible('search')} AND NOT ${this.a}.deleted`;
  }

  /** The caller's projects and the policy's row criteria for an interaction, over this compiler's types. */
  accessible(interaction: Interaction): string {
    const access = this.ctx.access;
    const own = access && this.ctx.ownProject && this.types.some((t) => access.isProtected(t)) ? [this.ctx.ownProject] : undefined;
    const projects = own ?? this.ctx.projects;
    const project = projects ? `${this.a}.project_id = ANY(${this.p.add(projects)}::uuid[])` : 'TRUE';
    if (!access) {
      return project;
    }
    // The policy's own criteria are compiled without the policy (they define it).
    const unrestricted: CompileContext = { ...this.ctx, access: undefined };
    const open: string[] = [];
    const restricted: string[] = [];
    for (const type of this.types) {
      const scope = access.rowScope(type, interaction);
      if (scope.kind === 'all') {
        open.push(type);
      } else if (scope.kind === 'criteria') {
        const compiler = new FilterCompiler([type], unrestricted, this.p, this.a, this.depth);
        const condition = orAll(scope.alternatives.map((filters) => `(${filters.map((f) => compiler.filter(f)).join(' AND ')})`));
        restricted.push(this.types.length === 1 ? condition : `(${this.a}.resource_type = ${this.p.add(type)} AND ${condition})`);
      }
    }
    if (this.types.length === 1) {
      return `${project} AND ${open.length ? 'TRUE' : (restricted[0] ?? 'FALSE')}`;
    }
    const alternatives = [...restricted];
    if (open.length) {
      alternatives.unshift(`${this.a}.resource_type = ANY(${this.p.add(open)}::text[])`);
    }
    return `${project} AND ${alternatives.length ? orAll(alternatives) : 'FALSE'}`;
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
    const any = (condition: (v: string) => string): string => this.existsAny(param, ids, orAll(values.map(condition)));
    switch (filter.operator) {
      case Operator.EQUALS:
      case Operator.EXACT:
        return any((v) => tokenCondition(this.p, 's', v));
      case Operator.NOT:
      case Operator.NOT_EQUALS:
        return `NOT ${any((v) => tokenCondition(this.p, 's', v))}`;
      case Operator.TEXT:
        return any((v) => `s.text LIKE ${this.p.add('%' + escapeLike(normalizeText(v)) + '%')}`);
      case Operator.OF_TYPE:
        return any((v) => {
          const [typeSystem, typeCode, value] = v.split('|');
          if (!typeSystem || !typeCode || value === undefined) {
            throw new OperationOutcomeError(badRequest(`:of-type needs system|code|value, got ${v}`, filter.code));
          }
          return `(s.system = ${this.p.add(ofTypeSystem(typeSystem, typeCode))} AND s.code = ${this.p.add(value)})`;
        });
      case Operator.IN:
      case Operator.NOT_IN:
      case Operator.BELOW:
      case Operator.ABOVE: {
        if (param.type === 'uri' && (filter.operator === Operator.BELOW || filter.operator === Operator.ABOVE)) {
          return filter.operator === Operator.BELOW
            ? any((v) => `s.code LIKE ${this.p.add(escapeLike(v) + '%')}`)
            : any((v) => `${this.p.add(v)} LIKE replace(replace(replace(s.code, '\\', '\\\\'), '%', '\\%'), '_', '\\_') || '%'`);
        }
        const codes = this.ctx.codeSets?.get(codeSetKey(filter.operator, filter.value));
        if (!codes) {
          throw new OperationOutcomeError(
            badRequest(`Modifier :${filter.operator} could not be resolved for ${filter.code}=${filter.value}`, filter.code)
          );
        }
        // A `code` element has no system of its own (it is implied by its binding): match it by code.
        const inSet = this.existsAny(
          param,
          ids,
          `((s.system, s.code) IN (SELECT * FROM unnest(${this.p.add(codes.map((c) => c.system))}::text[], ${this.p.add(codes.map((c) => c.code))}::text[]))` +
            ` OR (s.system IS NULL AND s.code = ANY(${this.p.add(codes.map((c) => c.code))}::text[])))`
        );
        return filter.operator === Operator.NOT_IN ? `NOT ${inSet}` : inSet;
      }
    }
    throw new OperationOutcomeError(
      badRequest(`Modifier :${filter.operator} is not supported for ${param.type} parameter ${filter.code}`)
    );
  }

  private stringFilter(ids: number[], filter: Filter): string {
    const stringParam = { type: 'string' } as SearchParameter;
    const values = splitValues(filter.value);
    if (filter.operator === Operator.NOT_EQUALS || filter.operator === Operator.NOT) {
      return `NOT ${this.existsAny(stringParam, ids, orAll(values.map((v) => `s.norm = ${this.p.add(normalizeText(v))}`)))}`;
    }
    return this.existsAny(stringParam, ids, orAll(values.map((v) => stringCondition(this.p, 's', filter.operator, v, filter.code))));
  }

  /** Each comma-separated value may carry its own prefix (`date=ge2024,lt2000`); `ne` needs a value that differs. */
  private dateFilter(ids: number[], filter: Filter): string {
    const conditions = prefixed(filter).map(({ operator, value }) => dateCondition(this.p, 's.low', 's.high', operator, value));
    return this.existsAny({ type: 'date' } as SearchParameter, ids, orAll(conditions));
  }

  private quantityFilter(param: SearchParameter, ids: number[], filter: Filter): string {
    const conditions = prefixed(filter).map(({ operator, value }) => quantityCondition(this.p, 's', operator, value, filter.code));
    return this.existsAny(param, ids, orAll(conditions));
  }

  private referenceFilter(ids: number[], filter: Filter): string {
    const values = splitValues(filter.value);
    if (filter.operator === Operator.IDENTIFIER) {
      return this.existsAny({ type: 'token' } as SearchParameter, ids, orAll(values.map((v) => tokenCondition(this.p, 's', v))));
    }
    const referenceParam = { type: 'reference' } as SearchParameter;
    const condition = orAll(values.map((v) => referenceCondition(this.p, 's', v)));
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

  /**
   * `component-code-value-quantity=http://loinc.org|8480-6$gt100`: the parts must hold for the same
   * repetition (the same component). Each part is matched in its own index table; rows of one
   * repetition share `grp`.
   */
  private compositeFilter(param: SearchParameter, ids: number[], filter: Filter): string {
    const components = compositeComponents(this.types[0], param);
    const alternatives = splitValues(filter.value).map((value) => {
      const parts = value.split('$');
      if (parts.length !== components.length) {
        throw new OperationOutcomeError(
          badRequest(`${filter.code} needs ${components.length} parts separated by $, got ${value}`, filter.code)
        );
      }
      const aliases = components.map(() => this.p.alias('k'));
      const from = components
        .map((c, i) =>
          i === 0
            ? `${indexTable(c)} ${aliases[0]}`
            : `JOIN ${indexTable(c)} ${aliases[i]} ON ${aliases[i]}.rid = ${aliases[0]}.rid AND ${aliases[i]}.param = ${aliases[0]}.param AND ${aliases[i]}.grp = ${aliases[0]}.grp`
        )
        .join(' ');
      const conditions = components.map((c, i) => componentCondition(this.p, aliases[i], c, parts[i], filter.code));
      return `EXISTS (SELECT 1 FROM ${from} WHERE ${aliases[0]}.rid = ${this.a}.rid AND ${aliases[0]}.param = ANY(${this.p.add(ids)}::int[]) AND ${aliases[0]}.grp > 0 AND ${conditions.join(' AND ')})`;
    });
    return orAll(alternatives);
  }

  private filterExpression(expr: FilterExpressionNode): string {
    switch (expr.kind) {
      case 'and':
        return `(${this.filterExpression(expr.left)} AND ${this.filterExpression(expr.right)})`;
      case 'or':
        return `(${this.filterExpression(expr.left)} OR ${this.filterExpression(expr.right)})`;
      case 'not':
        return `NOT (${this.filterExpression(expr.child)})`;
      case 'compare': {
        // core parses _filter's `eq` as :exact, which only strings distinguish from plain equality
        const f = expr.filter;
        const isString = !f.code.startsWith('_') && !f.code.includes('.') && this.searchParam(f.code).type === 'string';
        return this.filter(f.operator === Operator.EXACT && !isString ? { ...f, operator: Operator.EQUALS } : f);
      }
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
function numberCondition(p: SqlParams, x: string, operator: Operator, text: string): string {
  const n = Number(text);
  const v = (): string => p.add(text) + '::numeric';
  switch (operator) {
    case Operator.EQUALS:
    case Operator.NOT_EQUALS: {
      const value = p.add(text) + '::numeric';
      const half = p.add(precisionHalfStep(text).toString()) + '::numeric';
      const lo = `(${value} - ${half})`;
      const hi = `(${value} + ${half})`;
      const eq = `((${x}.value IS NOT NULL AND ${x}.value >= ${lo} AND ${x}.value < ${hi}) OR (${x}.value IS NULL AND ${x}.low >= ${lo} AND ${x}.high <= ${hi}))`;
      return operator === Operator.NOT_EQUALS ? `NOT ${eq}` : eq;
    }
    case Operator.GREATER_THAN:
    case Operator.STARTS_AFTER:
      return `coalesce(${x}.value, ${x}.high) > ${v()}`;
    case Operator.LESS_THAN:
    case Operator.ENDS_BEFORE:
      return `coalesce(${x}.value, ${x}.low) < ${v()}`;
    case Operator.GREATER_THAN_OR_EQUALS:
      return `coalesce(${x}.value, ${x}.high) >= ${v()}`;
    case Operator.LESS_THAN_OR_EQUALS:
      return `coalesce(${x}.value, ${x}.low) <= ${v()}`;
    case Operator.APPROXIMATELY: {
      const margin = Math.abs(n) * 0.1;
      return `coalesce(${x}.value, ${x}.low) BETWEEN ${p.add(String(n - margin))}::numeric AND ${p.add(String(n + margin))}::numeric`;
    }
    default:
      throw new OperationOutcomeError(badRequest(`Operator ${operator} is not supported for numbers`));
  }
}

/** `system|code`, `|code`, `system|` or `code` against a token row `x`. */
function tokenCondition(p: SqlParams, x: string, value: string): string {
  const bar = value.indexOf('|');
  if (bar < 0) {
    // e-mail addresses are indexed in lower case (ContactPoint with system email)
    return value.includes('@') && value !== value.toLowerCase()
      ? `(${x}.code = ${p.add(value)} OR (${x}.system = 'email' AND ${x}.code = ${p.add(value.toLowerCase())}))`
      : `${x}.code = ${p.add(value)}`;
  }
  const system = value.slice(0, bar);
  const code = value.slice(bar + 1);
  if (!system) {
    return `(${x}.code = ${p.add(code)} AND ${x}.system IS NULL)`;
  }
  if (!code) {
    return `${x}.system = ${p.add(system)}`;
  }
  return `(${x}.code = ${p.add(code)} AND ${x}.system = ${p.add(system)})`;
}

/** Default (prefix), :exact and :contains string matching against a string row `x`. */
function stringCondition(p: SqlParams, x: string, operator: Operator, value: string, code: string): string {
  switch (operator) {
    case Operator.EQUALS:
    case Operator.STARTS_WITH:
      return `${x}.norm LIKE ${p.add(escapeLike(normalizeText(value)) + '%')}`;
    case Operator.EXACT: {
      // Equal exact values have equal normalized ones: the norm condition lets the (param, norm)
      // index find the rows (there is none on exact). Not for values near the indexing limit,
      // where the stored norm may have been cut at another place.
      const norm = normalizeText(value);
      const byNorm = value.length < MAX_INDEXED_CHARS && norm.length < MAX_INDEXED_CHARS ? `${x}.norm = ${p.add(norm)} AND ` : '';
      return `(${byNorm}${x}.exact = ${p.add(value)})`;
    }
    case Operator.CONTAINS:
      return `${x}.norm LIKE ${p.add('%' + escapeLike(normalizeText(value)) + '%')}`;
    default:
      throw new OperationOutcomeError(badRequest(`Modifier :${operator} is not supported for string parameter ${code}`));
  }
}

/** `[prefix]number[|system|code]` against a quantity row `x`. */
function quantityCondition(p: SqlParams, x: string, operator: Operator, raw: string, paramCode: string): string {
  const [numberText, system, code] = raw.split('|');
  if (numberText === '' || !Number.isFinite(Number(numberText))) {
    throw new OperationOutcomeError(badRequest(`Invalid number or quantity search value: ${raw}`, paramCode));
  }
  const parts = [numberCondition(p, x, operator, numberText)];
  if (system) {
    parts.push(`${x}.system = ${p.add(system)}`);
  }
  if (code) {
    parts.push(`${x}.code = ${p.add(code)}`);
  }
  return '(' + parts.join(' AND ') + ')';
}

/** `Type/id`, an absolute URL, a canonical (`url|version`) or a bare id against a reference row `x`. */
function referenceCondition(p: SqlParams, x: string, value: string): string {
  const parsed = parseReferenceString(value);
  if (parsed) {
    // Every stored literal reference (relative or absolute) is indexed by target type and id, so
    // these two columns decide alone; an OR on the reference text would keep the planner off the
    // (param, target_id, target_type) index (bench/SQL-VARIANTS.md: p95 18.5 ms → 2.6 ms at 1M rows).
    return `(${x}.target_id = ${p.add(parsed.id)} AND ${x}.target_type = ${p.add(parsed.resourceType)})`;
  }
  if (value.includes('/') || value.includes(':')) {
    const url = value.split('|')[0];
    return `(${x}.ref = ${p.add(value)} OR ${x}.ref = ${p.add(url)} OR ${x}.ref LIKE ${p.add(escapeLike(url) + '|%')})`;
  }
  return `${x}.target_id = ${p.add(value)}`;
}

/** One part of a composite value, matched as its component parameter's type. */
function componentCondition(p: SqlParams, x: string, component: SearchParameter, value: string, code: string): string {
  switch (component.type) {
    case 'token':
    case 'uri':
      return tokenCondition(p, x, value);
    case 'string':
      return stringCondition(p, x, Operator.EQUALS, value, code);
    case 'reference':
      return referenceCondition(p, x, value);
    case 'date': {
      const { operator, rest } = splitPrefix(value);
      return dateCondition(p, `${x}.low`, `${x}.high`, operator, rest);
    }
    case 'number':
    case 'quantity': {
      const { operator, rest } = splitPrefix(value);
      return quantityCondition(p, x, operator, rest, code);
    }
    default:
      throw new OperationOutcomeError(badRequest(`Composite part of type ${component.type} is not supported`, code));
  }
}

const PREFIXES = new Set(['eq', 'ne', 'gt', 'lt', 'ge', 'le', 'sa', 'eb', 'ap']);

/**
 * The values of an ordered (date, number, quantity) filter with their prefixes. core strips the
 * prefix of a single value into `operator`; in a comma-separated list each value keeps its own.
 */
function prefixed(filter: Filter): { operator: Operator; value: string }[] {
  return splitValues(filter.value).map((v) => {
    if (filter.operator !== Operator.EQUALS) {
      return { operator: filter.operator, value: v };
    }
    const { operator, rest } = splitPrefix(v);
    return { operator, value: rest };
  });
}

function splitPrefix(value: string): { operator: Operator; rest: string } {
  const prefix = value.slice(0, 2);
  return PREFIXES.has(prefix) ? { operator: prefix as Operator, rest: value.slice(2) } : { operator: Operator.EQUALS, rest: value };
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
