import { Alert, Button, Loader, Paper, Stack, Table, Text, TextInput, Title } from '@mantine/core';
import { useDebouncedValue } from '@mantine/hooks';
import { formatHumanName, normalizeErrorString } from '@medplum/core';
import type { Bundle, Patient } from '@medplum/fhirtypes';
import { useMedplum } from '@medplum/react';
import type { JSX } from 'react';
import { useEffect, useState } from 'react';

export interface PatientPickerProps {
  /** The authorization code of this login: the credential for the two calls below. */
  readonly code: string;
  readonly onSelected: (patientId: string) => void;
}

/**
 * SMART standalone launch with `launch/patient`: the user picks the patient the app will be
 * limited to. `POST /auth/patients {code, name}` lists the patients this login may see;
 * `POST /auth/launch-patient {code, patient}` binds the choice to the code.
 */
export function PatientPicker({ code, onSelected }: PatientPickerProps): JSX.Element {
  const medplum = useMedplum();
  const [search, setSearch] = useState('');
  const [name] = useDebouncedValue(search.trim(), 250);
  const [patients, setPatients] = useState<Patient[]>();
  const [error, setError] = useState<string>();
  const [selecting, setSelecting] = useState<string>();

  useEffect(() => {
    let current = true;
    setPatients(undefined);
    medplum
      .post<Bundle<Patient>>('auth/patients', { code, name: name || undefined })
      .then((bundle) => {
        if (current) {
          setError(undefined);
          setPatients((bundle.entry ?? []).flatMap((entry) => (entry.resource ? [entry.resource] : [])));
        }
      })
      .catch((err: unknown) => {
        if (current) {
          setError(normalizeErrorString(err));
          setPatients([]);
        }
      });
    return () => {
      current = false;
    };
  }, [medplum, code, name]);

  const select = (patientId: string): void => {
    setSelecting(patientId);
    setError(undefined);
    medplum
      .post<{ ok?: boolean }>('auth/launch-patient', { code, patient: patientId })
      .then(() => onSelected(patientId))
      .catch((err: unknown) => {
        setError(normalizeErrorString(err));
        setSelecting(undefined);
      });
  };

  return (
    <Paper withBorder shadow="sm" radius="md" p="xl" w={560} maw="100%">
      <Stack gap="md">
        <Title order={3}>Choose a patient</Title>
        <Text size="sm" c="dimmed">
          The application will see this patient's record only.
        </Text>
        <TextInput
          label="Search patients"
          placeholder="Name"
          value={search}
          autoFocus
          onChange={(event) => setSearch(event.currentTarget.value)}
        />
        {error && (
          <Alert color="red" title="Error" role="alert">
            {error}
          </Alert>
        )}
        {patients === undefined ? (
          <Loader size="sm" aria-label="Loading patients" />
        ) : patients.length === 0 ? (
          <Text>No patients found.</Text>
        ) : (
          <Table aria-label="Patients">
            <Table.Thead>
              <Table.Tr>
                <Table.Th>Name</Table.Th>
                <Table.Th>Birth date</Table.Th>
                <Table.Th>ID</Table.Th>
                <Table.Th />
              </Table.Tr>
            </Table.Thead>
            <Table.Tbody>
              {patients.map((patient) => {
                const display = patientName(patient);
                return (
                  <Table.Tr key={patient.id} data-testid="patient-row" data-patient-id={patient.id}>
                    <Table.Td>{display}</Table.Td>
                    <Table.Td>{patient.birthDate ?? ''}</Table.Td>
                    <Table.Td>
                      <Text size="xs" ff="monospace" data-testid="patient-id">
                        {patient.id}
                      </Text>
                    </Table.Td>
                    <Table.Td>
                      <Button
                        size="xs"
                        aria-label={`Select ${display}`}
                        disabled={selecting !== undefined}
                        loading={selecting === patient.id}
                        onClick={() => patient.id && select(patient.id)}
                      >
                        Select
                      </Button>
                    </Table.Td>
                  </Table.Tr>
                );
              })}
            </Table.Tbody>
          </Table>
        )}
      </Stack>
    </Paper>
  );
}

function patientName(patient: Patient): string {
  const name = patient.name?.[0];
  return (name && formatHumanName(name)) || '(no name)';
}
