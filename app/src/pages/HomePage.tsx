import { Anchor, Container, Text, Title } from '@mantine/core';
import type { JSX } from 'react';

/** Placeholder until the clinician views and the admin console arrive. */
export function HomePage(): JSX.Element {
  const fhirBase = `${window.location.origin}/fhir/R4/`;
  return (
    <Container size="sm" py="xl">
      <Title order={1}>ermis</Title>
      <Text mt="md">Interoperability hub for clinic networks. The clinician views and the admin console are on their way.</Text>
      <Text mt="md">
        FHIR R4 base: <Anchor href={`${fhirBase}metadata`}>{fhirBase}</Anchor>
      </Text>
    </Container>
  );
}
