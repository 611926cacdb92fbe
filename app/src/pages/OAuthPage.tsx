import { Alert, Center, Stack, Title } from '@mantine/core';
import { normalizeErrorString } from '@medplum/core';
import { Logo, SignInForm } from '@medplum/react';
import type { JSX } from 'react';
import { useCallback, useMemo, useState } from 'react';
import { useLocation } from 'react-router';
import { authorizeRequestProblem, buildCodeRedirect, parseAuthorizeParams, wantsPatientLaunch } from '../oauth.ts';
import { PatientPicker } from './PatientPicker.tsx';

/**
 * The login page of the OAuth2 / SMART authorization flow: `/oauth2/authorize` sends the browser
 * here with the original request in the query string. After the sign-in (and, for
 * `launch/patient`, the choice of a patient) the browser goes back to the client's redirect_uri
 * with the code and state.
 */
export function OAuthPage(): JSX.Element {
  const location = useLocation();
  const params = useMemo(() => parseAuthorizeParams(location.search), [location.search]);
  const problem = authorizeRequestProblem(params);
  const [pickerCode, setPickerCode] = useState<string>();
  const [error, setError] = useState<string>();

  const redirect = useCallback(
    (code: string) => {
      try {
        window.location.assign(buildCodeRedirect(params.redirectUri ?? '', code, params.state));
      } catch (err) {
        setError(normalizeErrorString(err));
      }
    },
    [params]
  );

  const handleCode = useCallback(
    (code: string) => {
      if (wantsPatientLaunch(params.scope)) {
        setPickerCode(code);
      } else {
        redirect(code);
      }
    },
    [params, redirect]
  );

  let content: JSX.Element;
  if (problem || error) {
    content = (
      <Alert color="red" title="Cannot sign in" maw={400}>
        {problem ?? error}
      </Alert>
    );
  } else if (pickerCode) {
    content = <PatientPicker code={pickerCode} onSelected={() => redirect(pickerCode)} />;
  } else {
    content = (
      <SignInForm
        clientId={params.clientId}
        scope={params.scope}
        nonce={params.nonce}
        launch={params.launch}
        codeChallenge={params.codeChallenge}
        codeChallengeMethod={params.codeChallengeMethod}
        redirectUri={params.redirectUri}
        chooseScopes={false}
        disableGoogleAuth
        onCode={handleCode}
      >
        <Stack align="center" gap="xs" mb="md">
          <Logo size={32} />
          <Title order={3}>Sign in to ermis</Title>
        </Stack>
      </SignInForm>
    );
  }
  return (
    <Center mih="100vh" p="md">
      {content}
    </Center>
  );
}
