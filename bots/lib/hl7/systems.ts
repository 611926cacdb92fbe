/**
 * URIs ermis uses for its own code systems and identifiers (lab codes, order numbers, result keys).
 * The patient identifier systems are defaults; a deployment may set its own (bot secrets).
 */
export const ERMIS = 'https://ermis.health/fhir';

export const LOINC = 'http://loinc.org';
export const UCUM = 'http://unitsofmeasure.org';
export const V3_INTERPRETATION = 'http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation';
export const V2_0203 = 'http://terminology.hl7.org/CodeSystem/v2-0203';
export const OBSERVATION_CATEGORY = 'http://terminology.hl7.org/CodeSystem/observation-category';

export const v2Table = (table: string): string => `http://terminology.hl7.org/CodeSystem/v2-${table}`;

/** A lab's local test codes (OBX-3 / OBR-4 when the lab does not send LOINC). */
export const labCodeSystem = (labKey: string): string => `${ERMIS}/CodeSystem/lab-code/${labKey}`;
export const fillerOrderSystem = (labKey: string): string => `${ERMIS}/sid/filler-order/${labKey}`;
export const PLACER_ORDER_SYSTEM = `${ERMIS}/sid/placer-order`;
/** One result of one report: `${filler}|${obx3 code}|${obx4 sub-id}`, the key of idempotent upserts. */
export const labResultSystem = (labKey: string): string => `${ERMIS}/sid/lab-result/${labKey}`;
export const specimenSystem = (labKey: string): string => `${ERMIS}/sid/specimen/${labKey}`;

export const DEFAULT_CY_ID_SYSTEM = `${ERMIS}/sid/cy-id-card`;
export const DEFAULT_MRN_SYSTEM = `${ERMIS}/sid/mrn`;

/** The HL7 message log (AuditEvent + Binary). */
export const MESSAGE_TYPE_SYSTEM = `${ERMIS}/CodeSystem/hl7-message-type`;
export const MESSAGE_STATUS_SYSTEM = `${ERMIS}/CodeSystem/hl7-message-status`;
/** Extension on the lab's Organization: the profile settings (charset, where the national ID is, ...). */
export const LAB_PROFILE_EXTENSION = `${ERMIS}/StructureDefinition/lab-profile`;
