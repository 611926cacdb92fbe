/**
 * A problem found in an HL7 message, located the way ERR-2 (ERL) needs it:
 * `segment^sequence^field^^component`. Codes are table 0357; severity table 0516.
 */
export type Hl7ErrorCode = '100' | '101' | '102' | '103' | '104' | '199' | '200' | '201' | '203' | '204' | '205' | '207';

export interface Hl7Issue {
  segment: string;
  /** 1-based occurrence of that segment in the message. */
  sequence: number;
  field?: number;
  component?: number;
  code: Hl7ErrorCode;
  severity: 'E' | 'W';
  reason: string;
}
