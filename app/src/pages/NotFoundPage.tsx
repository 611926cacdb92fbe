import { Anchor, Container, Text, Title } from '@mantine/core';
import type { JSX } from 'react';
import { Link } from 'react-router';

export function NotFoundPage(): JSX.Element {
  return (
    <Container size="sm" py="xl">
      <Title order={1}>Page not found</Title>
      <Text mt="md">
        <Anchor component={Link} to="/">
          Back to the start page
        </Anchor>
      </Text>
    </Container>
  );
}
