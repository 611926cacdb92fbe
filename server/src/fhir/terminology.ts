import type { TypedValueWithPath } from '@medplum/core';
import type {
  CodeableConcept,
  Coding,
  CodeSystem,
  CodeSystemConcept,
  OperationOutcomeIssue,
  ValueSet,
  ValueSetComposeInclude,
  ValueSetExpansionContains,
} from '@medplum/fhirtypes';
import type { DefinitionsOverlay } from './repo/definitions-overlay.ts';

/** Finds a ValueSet or CodeSystem by canonical URL (base definitions, and for $expand the project's own). */
export type CanonicalLookup = <T extends ValueSet | CodeSystem>(
  resourceType: T['resourceType'],
  url: string
) => Promise<T | undefined>;

/**
 * The concepts of a value set: explicit concept lists, whole code systems, `is-a`/`descendent-of`
 * filters, nested value sets, minus excludes. Returns undefined when some part cannot be resolved
 * here (an unknown code system, an unsupported filter), so callers can tell "empty" from "unknown".
 */
export async function expandValueSet(
  valueSet: ValueSet,
  lookup: CanonicalLookup,
  depth = 0
): Promise<ValueSetExpansionContains[] | undefined> {
  if (depth > 10) {
    return undefined;
  }
  const included: ValueSetExpansionContains[] = [];
  for (const include of valueSet.compose?.include ?? []) {
    const concepts = await includeConcepts(include, lookup, depth);
    if (!concepts) {
      return undefined;
    }
    included.push(...concepts);
  }
  if (!valueSet.compose && valueSet.expansion?.contains) {
    included.push(...flattenContains(valueSet.expansion.contains));
  }
  const excluded = new Set<string>();
  for (const exclude of valueSet.compose?.exclude ?? []) {
    for (const c of (await includeConcepts(exclude, lookup, depth)) ?? []) {
      excluded.add(`${c.system}|${c.code}`);
    }
  }
  return included.filter((c) => !excluded.has(`${c.system}|${c.code}`));
}

async function includeConcepts(
  include: ValueSetComposeInclude,
  lookup: CanonicalLookup,
  depth: number
): Promise<ValueSetExpansionContains[] | undefined> {
  const system = include.system;
  let result: ValueSetExpansionContains[] = [];
  if (include.concept?.length) {
    result = include.concept.map((c) => ({ system, code: c.code, display: c.display }));
  } else if (system) {
    const codeSystem = await lookup<CodeSystem>('CodeSystem', system);
    if (!codeSystem?.concept || (codeSystem.content && codeSystem.content !== 'complete')) {
      return undefined;
    }
    let concepts = flattenConcepts(codeSystem.concept);
    for (const filter of include.filter ?? []) {
      if ((filter.op === 'is-a' || filter.op === 'descendent-of') && filter.property === 'concept') {
        concepts = descendants(codeSystem.concept, filter.value, filter.op === 'is-a');
      } else {
        return undefined;
      }
    }
    result = concepts.map((c) => ({ system, code: c.code, display: c.display }));
  }
  for (const nested of include.valueSet ?? []) {
    const vs = await lookup<ValueSet>('ValueSet', nested);
    const inner = vs ? await expandValueSet(vs, lookup, depth + 1) : undefined;
    if (!inner) {
      return undefined;
    }
    // Several valueSets in one include intersect; with a system they constrain it. Either way, keep common codes.
    result = system || include.concept?.length || result.length ? result.filter((c) => inner.some((i) => i.code === c.code)) : inner;
  }
  return result;
}

function flattenConcepts(concepts: CodeSystemConcept[]): CodeSystemConcept[] {
  return concepts.flatMap((c) => [c, ...flattenConcepts(c.concept ?? [])]);
}

function descendants(concepts: CodeSystemConcept[], code: string, includeSelf: boolean): CodeSystemConcept[] {
  for (const c of concepts) {
    if (c.code === code) {
      const below = flattenConcepts(c.concept ?? []);
      return includeSelf ? [c, ...below] : below;
    }
    const found = descendants(c.concept ?? [], code, includeSelf);
    if (found.length) {
      return found;
    }
  }
  return [];
}

/**
 * The codes at or below (`below`) or at or above (`above`) a code in a code system's hierarchy, for
 * the token modifiers :below and :above. Undefined when the code system is not known here.
 */
export async function hierarchyCodes(
  lookup: CanonicalLookup,
  system: string,
  code: string,
  direction: 'below' | 'above'
): Promise<{ system: string; code: string }[] | undefined> {
  const codeSystem = await lookup<CodeSystem>('CodeSystem', system);
  if (!codeSystem?.concept) {
    return undefined;
  }
  const codes =
    direction === 'below'
      ? descendants(codeSystem.concept, code, true).map((c) => c.code)
      : (pathTo(codeSystem.concept, code) ?? []).map((c) => c.code);
  return codes.map((c) => ({ system, code: c }));
}

/** The concepts from a root down to the one with `code`, or undefined. */
function pathTo(concepts: CodeSystemConcept[], code: string): CodeSystemConcept[] | undefined {
  for (const c of concepts) {
    if (c.code === code) {
      return [c];
    }
    const below = pathTo(c.concept ?? [], code);
    if (below) {
      return [c, ...below];
    }
  }
  return undefined;
}

function flattenContains(contains: ValueSetExpansionContains[]): ValueSetExpansionContains[] {
  return contains.flatMap((c) => [{ system: c.system, code: c.code, display: c.display }, ...flattenContains(c.contains ?? [])]);
}

/**
 * Checks values of elements with a required binding against the bound value set, as collected by
 * `@medplum/core`'s validator. Only base value sets that expand fully here are enforced.
 */
export class RequiredBindings {
  private readonly overlay: DefinitionsOverlay;
  private readonly cache = new Map<string, Promise<Set<string> | undefined>>();

  constructor(overlay: DefinitionsOverlay) {
    this.overlay = overlay;
  }

  async check(tokens: Record<string, TypedValueWithPath[]>): Promise<OperationOutcomeIssue[]> {
    const issues: OperationOutcomeIssue[] = [];
    for (const [url, values] of Object.entries(tokens)) {
      const allowed = await this.codes(url);
      if (!allowed) {
        continue;
      }
      for (const value of values) {
        if (!isAllowed(value, allowed)) {
          issues.push({
            severity: 'error',
            code: 'code-invalid',
            details: { text: `Value ${describe(value)} is not in the required value set ${url}` },
            expression: [value.path],
          });
        }
      }
    }
    return issues;
  }

  private codes(url: string): Promise<Set<string> | undefined> {
    const canonical = url.split('|')[0];
    let pending = this.cache.get(canonical);
    if (!pending) {
      const lookup: CanonicalLookup = async (type, u) => this.overlay.byCanonical(type, u) as never;
      pending = (async () => {
        const vs = this.overlay.byCanonical('ValueSet', canonical) as ValueSet | undefined;
        const concepts = vs ? await expandValueSet(vs, lookup) : undefined;
        return concepts && concepts.length > 0
          ? new Set(concepts.flatMap((c) => [`${c.system}|${c.code}`, `|${c.code}`]))
          : undefined;
      })();
      this.cache.set(canonical, pending);
    }
    return pending;
  }
}

function isAllowed(value: TypedValueWithPath, allowed: Set<string>): boolean {
  const v = value.value as unknown;
  switch (value.type) {
    case 'code':
    case 'string':
    case 'uri':
      return typeof v !== 'string' || allowed.has(`|${v}`);
    case 'Coding':
      return codingAllowed(v as Coding, allowed);
    case 'CodeableConcept': {
      const codings = (v as CodeableConcept).coding ?? [];
      return codings.length === 0 || codings.some((c) => codingAllowed(c, allowed));
    }
    default:
      return true;
  }
}

function codingAllowed(coding: Coding, allowed: Set<string>): boolean {
  if (!coding.code) {
    return true;
  }
  return coding.system ? allowed.has(`${coding.system}|${coding.code}`) : allowed.has(`|${coding.code}`);
}

function describe(value: TypedValueWithPath): string {
  const v = value.value as unknown;
  if (typeof v === 'string') {
    return `"${v}"`;
  }
  return JSON.stringify(v);
}
