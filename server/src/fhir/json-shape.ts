import type { OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';

/**
 * FHIR JSON forbids empty arrays, empty objects and empty strings (http://hl7.org/fhir/R4/json.html).
 * `@medplum/core`'s validator lets them through, so writes are checked here.
 */
export function emptyValueIssues(resource: Resource): OperationOutcomeIssue[] {
  const issues: OperationOutcomeIssue[] = [];
  const visit = (value: unknown, path: string): void => {
    if (Array.isArray(value)) {
      if (value.length === 0) {
        issues.push(issue(path, 'Invalid empty array'));
      }
      value.forEach((item, i) => visit(item, `${path}[${i}]`));
    } else if (value && typeof value === 'object') {
      const entries = Object.entries(value);
      if (entries.length === 0) {
        issues.push(issue(path, 'Invalid empty object'));
      }
      for (const [key, child] of entries) {
        // contained resources start a new path, as FHIRPath does
        visit(child, key === 'contained' ? `${path}.contained` : `${path}.${key}`);
      }
    } else if (typeof value === 'string' && value.trim() === '') {
      issues.push(issue(path, 'Invalid empty string'));
    }
  };
  for (const [key, value] of Object.entries(resource)) {
    visit(value, `${resource.resourceType}.${key}`);
  }
  return issues;
}

/** Removes the empty arrays and objects a patch can leave behind (removing the last item of a list). */
export function pruneEmptyValues<T>(value: T): T {
  if (Array.isArray(value)) {
    return value.map(pruneEmptyValues).filter((v) => !isEmpty(v)) as T;
  }
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [key, child] of Object.entries(value)) {
      const pruned = pruneEmptyValues(child);
      if (!isEmpty(pruned)) {
        out[key] = pruned;
      }
    }
    return out as T;
  }
  return value;
}

function isEmpty(value: unknown): boolean {
  return (Array.isArray(value) && value.length === 0) || (!!value && typeof value === 'object' && !Array.isArray(value) && Object.keys(value).length === 0);
}

function issue(path: string, text: string): OperationOutcomeIssue {
  return { severity: 'error', code: 'structure', details: { text }, expression: [path] };
}
