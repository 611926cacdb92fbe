/**
 * A SMART app for browser tests (fhirclient's browser build on two static pages, served from its
 * own origin), Chromium from the machine's PATH, and a recorder of what the browser did.
 */
import { accessSync, constants, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { chromium } from 'playwright-core';
import type { Browser, Page } from 'playwright-core';
import { REPO_ROOT } from './app-build.ts';

export interface SmartAppOptions {
  /** Read when launch.html is requested (the client is registered after the app's origin is known). */
  clientId: () => string;
  scope: string;
  /** The FHIR base URL the app launches against (`iss`). */
  iss: string;
  /** Patients app.html tries to read (Patient/{id}) and to search Observations of. */
  patientIds: () => string[];
}

/** What app.html leaves in `window.__result`. */
export interface SmartAppResult {
  error?: string;
  patientContext?: string;
  tokenResponse?: Record<string, unknown>;
  /** Patient/{id} of the launch context, read through fhirclient's `client.request`. */
  patient?: { ok: boolean; resource?: { resourceType: string; id?: string }; error?: string };
  /** Plain fetches with the access token, by path below the FHIR base. */
  reads?: Record<string, { status: number; body: unknown }>;
}

export interface SmartApp {
  origin: string;
  launchUrl: string;
  redirectUri: string;
  close(): Promise<void>;
}

/**
 * Serves `/launch.html` (fhirclient standalone authorize, PKCE required, redirect to app.html) and
 * `/app.html` (completes the flow, reads the context patient with fhirclient, then every patient,
 * an Observation search, and an Observation search for each other patient) on 127.0.0.1.
 */
export async function startSmartApp(options: SmartAppOptions): Promise<SmartApp> {
  const fhirClientJs = readFileSync(path.join(REPO_ROOT, 'node_modules/fhirclient/build/fhir-client.js'));
  const pages: Record<string, { type: string; body: () => string | Buffer }> = {
    '/fhir-client.js': { type: 'text/javascript', body: () => fhirClientJs },
    '/launch.html': {
      type: 'text/html; charset=utf-8',
      body: () => launchPage({ clientId: options.clientId(), scope: options.scope, iss: options.iss, redirectUri: 'app.html', pkceMode: 'required' }),
    },
    '/app.html': { type: 'text/html; charset=utf-8', body: () => appPage(options.patientIds()) },
  };
  const server = createServer((req, res) => {
    const page = pages[new URL(req.url ?? '/', 'http://x').pathname];
    res.writeHead(page ? 200 : 404, { 'Content-Type': page?.type ?? 'text/plain', 'Cache-Control': 'no-store' });
    res.end(page ? page.body() : 'not found');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    origin,
    launchUrl: `${origin}/launch.html`,
    redirectUri: `${origin}/app.html`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

function launchPage(authorizeOptions: Record<string, string>): string {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>launch</title><script src="/fhir-client.js"></script></head>
<body><p id="status">Launching…</p>
<script>
FHIR.oauth2.authorize(${JSON.stringify(authorizeOptions)}).catch(function (err) {
  window.__launchError = String(err && err.stack || err);
  document.getElementById('status').textContent = 'Launch failed: ' + window.__launchError;
});
</script></body></html>`;
}

function appPage(patientIds: string[]): string {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>app</title><script src="/fhir-client.js"></script></head>
<body><pre id="result">Loading…</pre>
<script>
(async function () {
  var patientIds = ${JSON.stringify(patientIds)};
  var result = {};
  try {
    var client = await FHIR.oauth2.ready();
    var token = client.state.tokenResponse;
    result.tokenResponse = token;
    result.patientContext = client.patient.id;
    result.patient = await client.request('Patient/' + client.patient.id).then(
      function (resource) { return { ok: true, resource: resource }; },
      function (err) { return { ok: false, error: String(err) }; }
    );
    var paths = patientIds.map(function (id) { return 'Patient/' + id; });
    paths.push('Observation');
    patientIds.forEach(function (id) {
      if (id !== client.patient.id) paths.push('Observation?subject=Patient/' + id);
    });
    result.reads = {};
    for (var i = 0; i < paths.length; i++) {
      var res = await fetch(client.state.serverUrl.replace(/\\/$/, '') + '/' + paths[i], {
        headers: { Authorization: 'Bearer ' + token.access_token, Accept: 'application/fhir+json' }
      });
      var text = await res.text();
      var body;
      try { body = JSON.parse(text); } catch (e) { body = text; }
      result.reads[paths[i]] = { status: res.status, body: body };
    }
  } catch (err) {
    result.error = String(err && err.stack || err);
  }
  window.__result = result;
  document.getElementById('result').textContent = JSON.stringify(result, null, 2);
})();
</script></body></html>`;
}

/** Waits for app.html to finish and returns what it found. */
export async function smartAppResult(page: Page, timeout = 20_000): Promise<SmartAppResult> {
  await page.waitForFunction(() => (window as unknown as { __result?: unknown }).__result !== undefined, undefined, { timeout });
  return (await page.evaluate(() => (window as unknown as { __result: unknown }).__result)) as SmartAppResult;
}

export interface TrafficLog {
  /** Main-frame navigations (redirect hops included), in order. */
  navigations: string[];
  /** Bodies of successful `POST {server}/oauth2/token` responses. */
  tokenResponses: Record<string, unknown>[];
  /** Failed requests to the server, console errors and page errors. */
  failures: string[];
  /** Waits for the response bodies still being read. */
  settled(): Promise<void>;
  describe(): string;
}

export function recordTraffic(page: Page, serverOrigin: string): TrafficLog {
  const navigations: string[] = [];
  const tokenResponses: Record<string, unknown>[] = [];
  const failures: string[] = [];
  const pending: Promise<unknown>[] = [];
  page.on('request', (request) => {
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
      navigations.push(request.url());
    }
  });
  page.on('response', (response) => {
    const url = new URL(response.url());
    if (url.origin !== serverOrigin) {
      return;
    }
    const method = response.request().method();
    if (url.pathname === '/oauth2/token' && method === 'POST' && response.ok()) {
      pending.push(response.json().then((body) => tokenResponses.push(body as Record<string, unknown>)));
    }
    if (response.status() >= 400) {
      pending.push(
        response
          .text()
          .catch(() => '')
          .then((body) => failures.push(`${method} ${response.url()} → ${response.status()} ${body.slice(0, 500)}`))
      );
    }
  });
  page.on('console', (message) => {
    if (message.type() === 'error') {
      failures.push(`console: ${message.text()}`);
    }
  });
  page.on('pageerror', (err) => failures.push(`page error: ${err.message}`));
  return {
    navigations,
    tokenResponses,
    failures,
    settled: async () => {
      await Promise.allSettled(pending);
    },
    describe: () => [...navigations.map((u) => `navigate ${u}`), ...failures].join('\n'),
  };
}

/** Debian's Chromium from PATH, headless; playwright-core never downloads a browser here. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: findOnPath('chromium'),
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

function findOnPath(command: string): string {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const file = path.join(dir, command);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // not in this directory
    }
  }
  throw new Error(`${command} is not on PATH: install Debian's chromium (apt-get install -y chromium; .ci/run does it)`);
}
