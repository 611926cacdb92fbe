/**
 * The echo bot: the first bot of ermis, and the smallest one that exercises every way a bot is
 * called.
 *
 * - HL7 v2 (`x-application/hl7-v2+er7`, an Hl7Message): an ORU is acknowledged with an ACK (MSA|AA);
 *   any other message type is rejected (MSA|AR with an ERR segment), so that a sender sees the
 *   message was not taken in.
 * - CSV (`text/csv`): the text is parsed (header line, quoted fields) and a summary comes back.
 * - A FHIR resource (what a Subscription with a `Bot/<id>` endpoint hands over, or a resource posted
 *   to `$execute`): a Communication about it is created (its subject is the resource when it is a
 *   Patient) and its id returned. A deleted resource (`{deletedResource}`) is noted the same way.
 * - Anything else (other JSON, plain text): echoed back unchanged.
 *
 * Like every bot it imports only @medplum/core (it must run unchanged on a hosted Medplum).
 */
import { AckCode, ContentType, createReference, getReferenceString, Hl7Message, Hl7Segment, isResource } from '@medplum/core';
import type { BotEvent, MedplumClient, WithId } from '@medplum/core';
import type { Communication, Resource } from '@medplum/fhirtypes';

export interface NumericColumn {
  count: number;
  min: number;
  max: number;
  mean: number;
}

export interface CsvSummary {
  /** The header line's fields. */
  columns: string[];
  /** Data rows (blank lines are not counted). */
  rowCount: number;
  /** 1-based numbers of the data rows whose field count differs from the header's. */
  invalidRows: number[];
  /** The columns whose every non-empty value is a number. */
  numeric: Record<string, NumericColumn>;
}

export interface CommunicationResult {
  communication: string;
  about: string;
  interaction: string;
}

/** An Hl7Message (HL7 in), a CsvSummary (CSV in), a CommunicationResult (a resource in), or the input itself. */
export async function handler(medplum: MedplumClient, event: BotEvent): Promise<Hl7Message | CsvSummary | CommunicationResult | unknown> {
  const { contentType, input } = event;
  if (contentType === ContentType.HL7_V2) {
    return acknowledge(input instanceof Hl7Message ? input : Hl7Message.parse(String(input)));
  }
  if (contentType === 'text/csv') {
    return summarizeCsv(typeof input === 'string' ? input : String(input));
  }
  const deleted = deletedResource(input);
  if (deleted) {
    return noteResource(medplum, deleted, 'delete');
  }
  if (isResource(input) && typeof input.id === 'string') {
    return noteResource(medplum, input as WithId<Resource>, header(event, 'X-Medplum-Interaction') ?? 'execute');
  }
  return input;
}

/** ORU^R01 and the other ORU events are accepted; the rest is rejected with the reason. */
export function acknowledge(message: Hl7Message): Hl7Message {
  const messageType = message.getSegment('MSH')?.getComponent(9, 1);
  if (messageType === 'ORU') {
    return message.buildAck();
  }
  const err = new Hl7Segment(['ERR', '', '', `200^Unsupported message type ${messageType || '(none)'}^HL70357`, 'E'], message.context);
  return message.buildAck({ ackCode: AckCode.AR, errSegment: err });
}

/** RFC 4180 CSV: comma-separated, double-quoted fields may hold commas, quotes ("") and line breaks. */
export function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  const endRow = (): void => {
    row.push(field);
    field = '';
    if (!(row.length === 1 && row[0] === '')) {
      rows.push(row);
    }
    row = [];
  };
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c === '"' && field === '') {
      quoted = true;
    } else if (c === ',') {
      row.push(field);
      field = '';
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') {
        i++;
      }
      endRow();
    } else {
      field += c;
    }
  }
  if (quoted) {
    throw new Error('CSV ends inside a quoted field');
  }
  if (field !== '' || row.length > 0) {
    endRow();
  }
  return rows;
}

export function summarizeCsv(text: string): CsvSummary {
  const [header = [], ...data] = parseCsv(text.replace(/^\uFEFF/, ''));
  const columns = header.map((c) => c.trim());
  const invalidRows: number[] = [];
  const values: number[][] = columns.map(() => []);
  const numericColumn = columns.map(() => true);
  data.forEach((row, index) => {
    if (row.length !== columns.length) {
      invalidRows.push(index + 1);
      return;
    }
    row.forEach((raw, col) => {
      const value = raw.trim();
      if (value === '') {
        return;
      }
      const n = Number(value);
      if (Number.isFinite(n)) {
        values[col].push(n);
      } else {
        numericColumn[col] = false;
      }
    });
  });
  const numeric: Record<string, NumericColumn> = {};
  columns.forEach((name, col) => {
    const v = values[col];
    if (numericColumn[col] && v.length > 0) {
      numeric[name] = { count: v.length, min: Math.min(...v), max: Math.max(...v), mean: v.reduce((a, b) => a + b, 0) / v.length };
    }
  });
  return { columns, rowCount: data.length, invalidRows, numeric };
}

async function noteResource(medplum: MedplumClient, resource: WithId<Resource>, interaction: string): Promise<CommunicationResult> {
  const about = getReferenceString(resource);
  const communication = await medplum.createResource<Communication>({
    resourceType: 'Communication',
    status: 'completed',
    subject: resource.resourceType === 'Patient' ? createReference(resource) : undefined,
    about: [{ reference: about }],
    sent: new Date().toISOString(),
    payload: [{ contentString: `${interaction} ${about}` }],
  });
  return { communication: communication.id, about, interaction };
}

function deletedResource(input: unknown): WithId<Resource> | undefined {
  if (typeof input === 'object' && input !== null && 'deletedResource' in input) {
    const resource = (input as { deletedResource: unknown }).deletedResource;
    if (isResource(resource) && typeof resource.id === 'string') {
      return resource as WithId<Resource>;
    }
  }
  return undefined;
}

/** A request header, whatever its case (the server passes $execute's headers lower-cased). */
function header(event: BotEvent, name: string): string | undefined {
  const key = Object.keys(event.headers ?? {}).find((k) => k.toLowerCase() === name.toLowerCase());
  const value = key ? event.headers?.[key] : undefined;
  return Array.isArray(value) ? value[0] : value;
}
