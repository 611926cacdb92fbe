/**
 * SMART App Launch 2 standalone launch, end to end, in a real browser: a SMART app on another
 * origin uses fhirclient to authorize against ermis (PKCE S256), the user signs in on ermis's
 * login page (the app/ workspace, served by the server), picks a patient, and the app then reads
 * FHIR limited to that patient. Drives Debian's Chromium (`chromium` on PATH) with playwright-core.
 */
import type { Bundle, ClientApplication, Observation, OperationOutcome, Patient, ProjectMembership } from '@medplum/fhirtypes';
import { createHash, randomBytes } from 'node:crypto';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { useTestServer } from '../../server/test/harness.ts';
import { ensureAppBuilt } from './app-build.ts';
import { launchChromium, recordTraffic, smartAppResult, startSmartApp } from './smart-app.ts';
import type { SmartApp, SmartAppResult } from './smart-app.ts';

const SCOPE = 'launch/patient openid fhirUser patient/*.rs';

// Before useTestServer: the server serves app/dist only if it exists when it starts.
beforeAll(() => ensureAppBuilt());
const t = useTestServer();

describe('SMART standalone launch in Chromium', () => {
  let smartApp: SmartApp;
  let browser: Browser;
  let clientId: string;
  let maria: Patient;
  let andreas: Patient;
  const observations = new Map<string, Observation>();
  const practitioner = { email: `dr.smart.${process.pid}@example.org`, password: 'Correct-Horse-Battery-Staple-42' };

  beforeAll(async () => {
    smartApp = await startSmartApp({
      clientId: () => clientId,
      scope: SCOPE,
      iss: `${t.server.baseUrl}fhir/R4`,
      patientIds: () => [maria.id as string, andreas.id as string],
    });

    // As the project's admin: two patients with an Observation each, the client, a practitioner.
    const medplum = t.medplum;
    maria = await medplum.createResource<Patient>({
      resourceType: 'Patient',
      name: [{ given: ['Maria'], family: 'Georgiou' }],
      birthDate: '1980-04-12',
    });
    andreas = await medplum.createResource<Patient>({
      resourceType: 'Patient',
      name: [{ given: ['Andreas'], family: 'Nicolaou' }],
      birthDate: '1975-09-30',
    });
    for (const patient of [maria, andreas]) {
      const observation = await medplum.createResource<Observation>({
        resourceType: 'Observation',
        status: 'final',
        code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }] },
        subject: { reference: `Patient/${patient.id}` },
        valueQuantity: { value: 72, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
      });
      observations.set(patient.id as string, observation);
    }
    const client = await medplum.createResource<ClientApplication>({
      resourceType: 'ClientApplication',
      name: 'smart-test',
      redirectUris: [smartApp.redirectUri],
      pkceOptional: false,
    });
    clientId = client.id as string;
    const membership = (await medplum.invite(t.server.projectId, {
      resourceType: 'Practitioner',
      firstName: 'Eleni',
      lastName: 'Smart',
      email: practitioner.email,
      password: practitioner.password,
      sendEmail: false,
    })) as ProjectMembership;
    expect(membership.resourceType).toBe('ProjectMembership');

    browser = await launchChromium();
  });

  afterAll(async () => {
    await browser?.close();
    await smartApp?.close();
  });

  test('authorize with PKCE, sign in, pick a patient, read only that patient', { timeout: 120_000 }, async () => {
    const ermisOrigin = new URL(t.server.baseUrl).origin;
    const page = await browser.newPage();
    const log = recordTraffic(page, ermisOrigin);

    let chosenId: string;
    let result: SmartAppResult;
    try {
      await page.goto(smartApp.launchUrl);

      // fhirclient discovered the endpoints and sent the browser to ermis's login page.
      await page.waitForURL((url) => url.origin === ermisOrigin && url.pathname === '/oauth', { timeout: 20_000 });
      await page.getByLabel('Email').fill(practitioner.email);
      await page.getByRole('button', { name: 'Continue' }).click();
      await page.getByLabel(/^Password/).fill(practitioner.password);
      await page.getByRole('button', { name: 'Sign in' }).click();

      // The patient picker lists the patients this practitioner may see; a search narrows it.
      const search = page.getByLabel('Search patients');
      await search.waitFor({ timeout: 20_000 });
      const rows = page.getByTestId('patient-row');
      await expect.poll(() => rows.count(), { timeout: 10_000 }).toBe(2);
      await search.fill('Georgiou');
      await expect.poll(() => rows.count(), { timeout: 10_000 }).toBe(1);
      const first = rows.first();
      chosenId = (await first.getByTestId('patient-id').innerText()).trim();
      await first.getByRole('button', { name: 'Select' }).click();

      // Back on the app, which has exchanged the code and made its FHIR calls.
      await page.waitForURL((url) => url.origin === smartApp.origin && url.pathname === '/app.html', { timeout: 20_000 });
      result = await smartAppResult(page);
      expect(result.error, 'app.html failed').toBeUndefined();
    } catch (err) {
      const text = await page.locator('body').innerText().catch(() => '(no page)');
      await log.settled();
      throw new Error(`${(err as Error).message}\n--- page ${page.url()}:\n${text}\n--- traffic:\n${log.describe()}`, { cause: err });
    }
    await log.settled();

    // The picked patient is Maria, listed with her id.
    expect(chosenId).toBe(maria.id);

    // The authorize request carried PKCE S256 and the SMART parameters.
    const navigations = log.navigations.map((u) => new URL(u));
    const authorize = navigations.find((u) => u.origin === ermisOrigin && u.pathname === '/oauth2/authorize');
    expect(authorize, log.describe()).toBeDefined();
    const query = (authorize as URL).searchParams;
    expect(query.get('response_type')).toBe('code');
    expect(query.get('client_id')).toBe(clientId);
    expect(query.get('redirect_uri')).toBe(smartApp.redirectUri);
    expect(query.get('scope')).toBe(SCOPE);
    expect(query.get('aud')).toBe(`${t.server.baseUrl}fhir/R4`);
    expect(query.get('state')).toBeTruthy();
    expect(query.get('code_challenge_method')).toBe('S256');
    expect(query.get('code_challenge')).toMatch(/^[A-Za-z0-9_-]{43}$/);

    // ...which ermis handed to its login page, which sent the code back with the state.
    const login = navigations.find((u) => u.origin === ermisOrigin && u.pathname === '/oauth');
    expect(login?.searchParams.get('code_challenge')).toBe(query.get('code_challenge'));
    const callback = navigations.find((u) => u.origin === smartApp.origin && u.pathname === '/app.html');
    expect(callback?.searchParams.get('code')).toBeTruthy();
    expect(callback?.searchParams.get('state')).toBe(query.get('state'));

    // The token response names the chosen patient.
    expect(log.tokenResponses, log.describe()).toHaveLength(1);
    const token = log.tokenResponses[0];
    expect(token.patient).toBe(chosenId);
    expect(String(token.token_type).toLowerCase()).toBe('bearer');
    expect(token.access_token).toBeTruthy();
    expect(token.id_token).toBeTruthy();
    expect(result.patientContext).toBe(chosenId);

    // The app reads its patient...
    expect(result.patient?.ok, JSON.stringify(result.patient)).toBe(true);
    expect(result.patient?.resource?.id).toBe(chosenId);
    const reads = result.reads ?? {};
    expect(reads[`Patient/${chosenId}`]?.status).toBe(200);

    // ...but not the other one,
    const other = reads[`Patient/${andreas.id}`];
    expect([403, 404], JSON.stringify(other)).toContain(other?.status);
    expect((other?.body as OperationOutcome | undefined)?.resourceType).toBe('OperationOutcome');

    // and an Observation search finds the chosen patient's Observation only.
    const observationSearch = reads['Observation'];
    expect(observationSearch?.status, JSON.stringify(observationSearch)).toBe(200);
    const found = ((observationSearch?.body as Bundle<Observation>).entry ?? []).map((entry) => entry.resource as Observation);
    expect(found.map((o) => o.id)).toContain(observations.get(chosenId)?.id);
    expect(found.map((o) => o.subject?.reference)).not.toContain(`Patient/${andreas.id}`);
    const otherSearch = reads[`Observation?subject=Patient/${andreas.id}`];
    if (otherSearch?.status === 200) {
      expect((otherSearch.body as Bundle).entry ?? [], JSON.stringify(otherSearch)).toHaveLength(0);
    } else {
      expect([403, 404], JSON.stringify(otherSearch)).toContain(otherSearch?.status);
    }
  });

  test('the login page never sends a code to a redirect_uri other than the authorized one', { timeout: 60_000 }, async () => {
    // An attacker starts a genuine authorization (their own PKCE verifier, the client's registered
    // redirect_uri), then lures the user to the login page with the redirect_uri swapped for theirs.
    const ermisOrigin = new URL(t.server.baseUrl).origin;
    const challenge = createHash('sha256').update(randomBytes(32).toString('base64url')).digest('base64url');
    const authorize = new URL(`${t.server.baseUrl}oauth2/authorize`);
    for (const [key, value] of Object.entries({
      response_type: 'code',
      client_id: clientId,
      redirect_uri: smartApp.redirectUri,
      scope: 'openid fhirUser patient/*.rs',
      state: 'attacker-state',
      code_challenge: challenge,
      code_challenge_method: 'S256',
    })) {
      authorize.searchParams.set(key, value);
    }
    const response = await fetch(authorize, { redirect: 'manual' });
    expect(response.status).toBe(302);
    const loginPage = new URL(response.headers.get('location') as string, t.server.baseUrl);
    expect(loginPage.pathname).toBe('/oauth');
    const stolen = `${smartApp.origin}/stolen.html`;
    loginPage.searchParams.set('redirect_uri', stolen);

    const page = await browser.newPage();
    const log = recordTraffic(page, ermisOrigin);
    await page.goto(loginPage.toString());
    await page.getByLabel('Email').fill(practitioner.email);
    await page.getByRole('button', { name: 'Continue' }).click();
    await page.getByLabel(/^Password/).fill(practitioner.password);
    await page.getByRole('button', { name: 'Sign in' }).click();
    // Either the sign-in is refused on the page, or the browser leaves for the swapped URI.
    await Promise.race([
      page.getByRole('alert').first().waitFor({ timeout: 20_000 }),
      page.waitForURL((url) => url.origin === smartApp.origin, { timeout: 20_000 }),
    ]).catch(() => undefined);
    await log.settled();
    const leaked = log.navigations.filter((url) => url.startsWith(stolen));
    expect(leaked, `the login page sent the code to ${stolen}:\n${log.describe()}`).toEqual([]);
    await expect.poll(() => page.getByRole('alert').count()).toBeGreaterThan(0);
    await page.close();
  });
});
