/**
 * Test-only FHIR R4 XML → FHIR JSON converter, just enough to read the public FHIR test cases
 * (https://hl7.org/fhir/R4/xml.html → https://hl7.org/fhir/R4/json.html). It is driven by the type
 * information in @medplum/core, so the definitions must be loaded (`loadDefinitions()`) first.
 *
 * Anything it does not understand (an unknown element or attribute, stray text, a repeated
 * singleton) is an error rather than silently dropped, so a conversion mistake fails the tests.
 */
import { capitalize, getDataType, isPrimitiveType, isResourceType } from '@medplum/core';
import type { InternalSchemaElement } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import { XMLParser } from 'fast-xml-parser';

export const FHIR_NS = 'http://hl7.org/fhir';
const XHTML_NS = 'http://www.w3.org/1999/xhtml';

/** A parsed XML element: namespace resolved, attributes decoded, children in document order. */
export interface XmlElement {
  name: string;
  ns: string | undefined;
  attrs: Record<string, string>;
  children: XmlNode[];
}
export type XmlNode = XmlElement | string;

// fast-xml-parser's "ordered" output: [{ tag: children, ':@': attrs }, { '#text': '...' }]
type OrderedNode = Record<string, unknown> & { ':@'?: Record<string, string> };

const parser = new XMLParser({
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: '',
  trimValues: false, // whitespace matters inside XHTML
  parseTagValue: false,
  parseAttributeValue: false,
  entityDecoder: {
    decode: decodeXmlReferences,
    // The test files declare no DTD entities; nothing to register or reset.
    setExternalEntities: () => undefined,
    addInputEntities: () => undefined,
    reset: () => undefined,
    setXmlVersion: () => undefined,
  },
});

const PREDEFINED_ENTITIES: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

/**
 * Replaces XML's five predefined entities and character references (&#10; &#xE9;) in one pass, so that
 * "&amp;#10;" stays the text "&#10;". Any other named entity is undefined in XML without a DTD: an error.
 */
function decodeXmlReferences(text: string): string {
  return text.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[A-Za-z][A-Za-z0-9]*);/g, (_ref, name: string) => {
    if (name.startsWith('#x')) {
      return String.fromCodePoint(parseInt(name.slice(2), 16));
    }
    if (name.startsWith('#')) {
      return String.fromCodePoint(parseInt(name.slice(1), 10));
    }
    const value = PREDEFINED_ENTITIES[name];
    if (value === undefined) {
      throw new Error(`Undefined XML entity &${name};`);
    }
    return value;
  });
}

/** Parses an XML document and returns its root element. */
export function parseXml(xml: string): XmlElement {
  // XML end-of-line handling (XML 1.0 §2.11): CR LF and lone CR become LF before parsing.
  const ordered = parser.parse(xml.replace(/\r\n?/g, '\n')) as OrderedNode[];
  const roots = ordered.map((n) => toXmlNode(n, undefined)).filter((n): n is XmlElement => typeof n !== 'string');
  if (roots.length !== 1) {
    throw new Error(`Expected one root element, found ${roots.length}`);
  }
  return roots[0];
}

function toXmlNode(node: OrderedNode, parentNs: string | undefined): XmlNode | undefined {
  if ('#text' in node) {
    return String(node['#text']);
  }
  const name = Object.keys(node).find((k) => k !== ':@') as string;
  if (name.startsWith('?')) {
    return undefined; // the XML declaration or a processing instruction
  }
  if (name.includes(':')) {
    throw new Error(`Namespace prefixes are not supported: <${name}>`);
  }
  const attrs = { ...node[':@'] };
  const ns = attrs.xmlns ?? parentNs;
  const children = (node[name] as OrderedNode[]).map((c) => toXmlNode(c, ns)).filter((c) => c !== undefined);
  return { name, ns, attrs, children };
}

export function childElements(el: XmlElement): XmlElement[] {
  return el.children.filter((c): c is XmlElement => typeof c !== 'string');
}

/** Converts a FHIR resource element (e.g. `<Patient xmlns="http://hl7.org/fhir">`) to FHIR JSON. */
export function resourceFromXml<T extends Resource = Resource>(el: XmlElement): T {
  if (el.ns !== FHIR_NS) {
    throw new Error(`<${el.name}> is not in the FHIR namespace`);
  }
  if (!isResourceType(el.name)) {
    throw new Error(`<${el.name}> is not a FHIR resource type`);
  }
  // A resource's id is an element (<id value=".."/>), not an attribute.
  return { resourceType: el.name, ...complexFromXml(el, el.name, false) } as T;
}

/** A complex type or backbone element: attributes id/url, then child elements by name. */
function complexFromXml(el: XmlElement, typeName: string, idIsAttribute = true): Record<string, unknown> {
  const schema = getDataType(typeName);
  const out: Record<string, unknown> = {};
  for (const [attr, value] of Object.entries(el.attrs)) {
    if (attr === 'xmlns') {
      continue;
    }
    // Element.id and Extension.url are XML attributes (https://hl7.org/fhir/R4/xml.html).
    if ((attr === 'id' && idIsAttribute) || (attr === 'url' && typeName === 'Extension')) {
      out[attr] = value;
      continue;
    }
    throw new Error(`Unexpected attribute ${attr} on ${typeName}`);
  }

  // Primitive values and their `_name` companions are collected per JSON property, in order.
  const values = new Map<string, { isArray: boolean; items: unknown[]; extras: (Record<string, unknown> | null)[] }>();
  for (const child of el.children) {
    if (typeof child === 'string') {
      if (child.trim() !== '') {
        throw new Error(`Unexpected text in ${typeName}: ${JSON.stringify(child.trim())}`);
      }
      continue;
    }
    if (child.ns !== FHIR_NS && !(child.name === 'div' && child.ns === XHTML_NS)) {
      throw new Error(`<${child.name}> in ${typeName} has namespace ${child.ns}`);
    }
    if ((child.name === 'id' && idIsAttribute) || (child.name === 'url' && typeName === 'Extension')) {
      throw new Error(`${typeName}.${child.name} must be an attribute`);
    }
    const { element, type } = resolveElement(schema.elements, child.name, typeName);
    let entry = values.get(child.name);
    if (!entry) {
      entry = { isArray: isArrayElement(element), items: [], extras: [] };
      values.set(child.name, entry);
    } else if (!entry.isArray) {
      throw new Error(`${typeName}.${child.name} repeats but is not a list`);
    }
    if (type === 'xhtml') {
      if (child.name !== 'div' || child.ns !== XHTML_NS) {
        throw new Error(`${typeName}.${child.name} must be an XHTML <div>`);
      }
      entry.items.push(serializeXhtml(child));
      entry.extras.push(null);
    } else if (isPrimitiveType(type)) {
      const { value, extra } = primitiveFromXml(child, type);
      entry.items.push(value);
      entry.extras.push(extra);
    } else if (type === 'Resource') {
      // e.g. Parameters.parameter.resource, DomainResource.contained: <resource><Patient>..</Patient></resource>
      const inner = childElements(child);
      if (inner.length !== 1) {
        throw new Error(`${typeName}.${child.name} must hold exactly one resource`);
      }
      entry.items.push(resourceFromXml(inner[0]));
      entry.extras.push(null);
    } else {
      entry.items.push(complexFromXml(child, type));
      entry.extras.push(null);
    }
  }

  for (const [name, { isArray, items, extras }] of values) {
    // JSON (https://hl7.org/fhir/R4/json.html#primitive): `name` holds the values, `_name` their id/extension,
    // with null where one of a pair of arrays has nothing; a property that would be all nulls is left out.
    if (items.some((v) => v !== null)) {
      out[name] = isArray ? items : items[0];
    }
    if (extras.some((e) => e !== null)) {
      out[`_${name}`] = isArray ? extras : extras[0];
    }
  }
  return out;
}

/** Finds the element for an XML child name, including choice elements (`valueDate` → `value[x]` of type date). */
function resolveElement(
  elements: Record<string, InternalSchemaElement>,
  name: string,
  typeName: string
): { element: InternalSchemaElement; type: string } {
  const direct = elements[name];
  if (direct) {
    if (direct.type.length !== 1) {
      throw new Error(`${typeName}.${name} has ${direct.type.length} types`);
    }
    return { element: direct, type: direct.type[0].code };
  }
  for (const [key, element] of Object.entries(elements)) {
    if (key.endsWith('[x]') && name.startsWith(key.slice(0, -3))) {
      const suffix = name.slice(key.length - 3);
      const type = element.type.find((t) => capitalize(t.code) === suffix);
      if (type) {
        return { element, type: type.code };
      }
    }
  }
  throw new Error(`Unknown element ${typeName}.${name}`);
}

function isArrayElement(element: InternalSchemaElement): boolean {
  return element.isArray ?? element.max > 1;
}

/** `<birthDate id=".." value="..."><extension ../></birthDate>` → value and the `_birthDate` object. */
function primitiveFromXml(el: XmlElement, type: string): { value: unknown; extra: Record<string, unknown> | null } {
  const extra: Record<string, unknown> = {};
  let value: unknown = null;
  for (const [attr, raw] of Object.entries(el.attrs)) {
    if (attr === 'value') {
      value = primitiveValue(raw, type);
    } else if (attr === 'id') {
      extra.id = raw;
    } else if (attr !== 'xmlns') {
      throw new Error(`Unexpected attribute ${attr} on a ${type}`);
    }
  }
  for (const child of el.children) {
    if (typeof child === 'string') {
      if (child.trim() !== '') {
        throw new Error(`Unexpected text in a ${type}: ${JSON.stringify(child.trim())}`);
      }
    } else if (child.name === 'extension' && child.ns === FHIR_NS) {
      ((extra.extension ??= []) as unknown[]).push(complexFromXml(child, 'Extension'));
    } else {
      throw new Error(`Unexpected <${child.name}> in a ${type}`);
    }
  }
  return { value, extra: Object.keys(extra).length > 0 ? extra : null };
}

/** JSON representation of a primitive: booleans and numbers are JSON literals, the rest strings. */
function primitiveValue(raw: string, type: string): unknown {
  switch (type) {
    case 'boolean':
      if (raw !== 'true' && raw !== 'false') {
        throw new Error(`Invalid boolean: ${raw}`);
      }
      return raw === 'true';
    case 'integer':
    case 'positiveInt':
    case 'unsignedInt':
    case 'decimal': {
      const n = Number(raw);
      if (raw.trim() === '' || !Number.isFinite(n)) {
        throw new Error(`Invalid ${type}: ${raw}`);
      }
      return n;
    }
    default:
      return raw;
  }
}

/** Narrative.div is kept as XHTML text: the element re-serialized with XML escaping of text and attributes. */
export function serializeXhtml(node: XmlNode): string {
  if (typeof node === 'string') {
    return node.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  }
  const attrs = Object.entries(node.attrs)
    .map(([k, v]) => ` ${k}="${v.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/"/g, '&quot;')}"`)
    .join('');
  if (node.children.length === 0) {
    return `<${node.name}${attrs}/>`;
  }
  return `<${node.name}${attrs}>${node.children.map(serializeXhtml).join('')}</${node.name}>`;
}
