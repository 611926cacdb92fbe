import type { Bundle, ElementDefinition, Resource, StructureDefinition } from '@medplum/fhirtypes';
import type { DefinitionsOverlay } from './repo/definitions-overlay.ts';

/** How a response should be shaped: the `_summary`, `_elements` and `X-Medplum` choices of the request. */
export interface PresentationOptions {
  summary?: string;
  elements?: string[];
  /** Keep Medplum's extended meta fields (meta.project, meta.author): `X-Medplum: extended`. */
  extended: boolean;
}

const SUBSETTED = { system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'SUBSETTED' };
const ALWAYS_KEPT = new Set(['resourceType', 'id', 'meta']);

/** Applies `_summary`/`_elements` and hides the extended meta fields; resources inside Bundles too. */
export class Presenter {
  private readonly overlay: DefinitionsOverlay;
  private readonly elementSets = new Map<string, Set<string>>();

  constructor(overlay: DefinitionsOverlay) {
    this.overlay = overlay;
  }

  present<T extends Resource>(resource: T, options: PresentationOptions): T {
    if (resource.resourceType === 'Bundle') {
      const bundle = resource as Bundle;
      for (const entry of bundle.entry ?? []) {
        if (entry.resource) {
          entry.resource = this.presentOne(entry.resource, options);
        }
      }
      return options.extended ? resource : this.hideExtendedMeta(resource);
    }
    return this.presentOne(resource, options);
  }

  private presentOne<T extends Resource>(resource: T, options: PresentationOptions): T {
    let result = resource;
    if (options.elements?.length) {
      const wanted = new Set(options.elements.map((e) => e.trim().split('.')[0]));
      result = this.subset(result, (key) => wanted.has(key));
    } else if (options.summary === 'true') {
      const summary = this.topLevelElements(resource.resourceType, 'summary');
      result = this.subset(result, (key) => hasElement(summary, key));
    } else if (options.summary === 'text') {
      result = this.subset(result, (key) => key === 'text');
    } else if (options.summary === 'data') {
      const { text: _text, ...rest } = resource as Resource & { text?: unknown };
      result = markSubsetted(rest as T);
    }
    return options.extended ? result : this.hideExtendedMeta(result);
  }

  private subset<T extends Resource>(resource: T, keep: (key: string) => boolean): T {
    const mandatory = this.topLevelElements(resource.resourceType, 'mandatory');
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(resource)) {
      if (ALWAYS_KEPT.has(key) || keep(key) || hasElement(mandatory, key)) {
        out[key] = value;
      }
    }
    return markSubsetted(out as T);
  }

  /** Names of the resource type's summary or mandatory top-level elements (choice names without [x]). */
  private topLevelElements(resourceType: string, kind: 'summary' | 'mandatory'): Set<string> {
    const predicate = kind === 'summary' ? (el: ElementDefinition) => el.isSummary === true : (el: ElementDefinition) => (el.min ?? 0) > 0;
    const cacheKey = resourceType + '\0' + kind;
    let set = this.elementSets.get(cacheKey);
    if (!set) {
      set = new Set();
      const sd = this.overlay.byCanonical('StructureDefinition', `http://hl7.org/fhir/StructureDefinition/${resourceType}`) as
        | StructureDefinition
        | undefined;
      for (const el of sd?.snapshot?.element ?? []) {
        const parts = el.path.split('.');
        if (parts.length === 2 && predicate(el)) {
          set.add(parts[1].replace('[x]', ''));
        }
      }
      this.elementSets.set(cacheKey, set);
    }
    return set;
  }

  private hideExtendedMeta<T extends Resource>(resource: T): T {
    if (!resource.meta || (resource.meta.project === undefined && resource.meta.author === undefined)) {
      return resource;
    }
    const { project: _p, author: _a, ...meta } = resource.meta;
    return { ...resource, meta };
  }
}

function markSubsetted<T extends Resource>(resource: T): T {
  const tags = (resource.meta?.tag ?? []).filter((t) => t.code !== SUBSETTED.code);
  return { ...resource, meta: { ...resource.meta, tag: [...tags, SUBSETTED] } };
}

/** True when `key` is one of the elements, or a typed form of a choice element (valueQuantity for value). */
function hasElement(elements: Set<string>, key: string): boolean {
  if (elements.has(key)) {
    return true;
  }
  for (const base of elements) {
    if (key.length > base.length && key.startsWith(base) && /^[A-Z]/.test(key[base.length])) {
      return true;
    }
  }
  return false;
}
