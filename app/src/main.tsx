import '@mantine/core/styles.css';
import '@mantine/notifications/styles.css';
import '@medplum/react/styles.css';
import { MantineProvider } from '@mantine/core';
import { Notifications } from '@mantine/notifications';
import { MedplumClient } from '@medplum/core';
import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { BrowserRouter } from 'react-router';
import { App } from './App.tsx';

// The app is served by the ermis server itself: same origin, so no CORS and no configuration.
const medplum = new MedplumClient({ baseUrl: window.location.origin + '/' });

createRoot(document.getElementById('root') as HTMLElement).render(
  <StrictMode>
    <BrowserRouter>
      <MantineProvider>
        <Notifications />
        <App medplum={medplum} />
      </MantineProvider>
    </BrowserRouter>
  </StrictMode>
);
