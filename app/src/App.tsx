import type { MedplumClient } from '@medplum/core';
import { MedplumProvider } from '@medplum/react';
import type { JSX } from 'react';
import { Route, Routes, useNavigate } from 'react-router';
import { HomePage } from './pages/HomePage.tsx';
import { NotFoundPage } from './pages/NotFoundPage.tsx';
import { OAuthPage } from './pages/OAuthPage.tsx';

export function App({ medplum }: { medplum: MedplumClient }): JSX.Element {
  const navigate = useNavigate();
  return (
    <MedplumProvider medplum={medplum} navigate={navigate}>
      <Routes>
        <Route path="/" element={<HomePage />} />
        <Route path="/oauth" element={<OAuthPage />} />
        <Route path="*" element={<NotFoundPage />} />
      </Routes>
    </MedplumProvider>
  );
}
