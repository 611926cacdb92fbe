import Fastify from 'fastify';
import type { FastifyInstance } from 'fastify';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { isApiPath, registerAppStatic } from '../src/http/app-static.ts';

const INDEX = '<!doctype html><html><body><div id="root"></div><script type="module" src="/assets/index-abc.js"></script></body></html>';
const HTML = { accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8' };

describe('the app served by the server (app/dist)', () => {
  let dist: string;
  let app: FastifyInstance;

  beforeAll(async () => {
    dist = mkdtempSync(path.join(tmpdir(), 'ermis-app-dist-'));
    mkdirSync(path.join(dist, 'assets'));
    writeFileSync(path.join(dist, 'index.html'), INDEX);
    writeFileSync(path.join(dist, 'assets/index-abc.js'), 'console.log("app")');
    writeFileSync(path.join(dist, 'favicon.ico'), 'icon');
    writeFileSync(path.join(dist, '.env'), 'SECRET=1');
    // As in buildApp: trailing slashes ignored.
    app = Fastify({ routerOptions: { ignoreTrailingSlash: true } });
    app.setNotFoundHandler((_request, reply) => reply.status(404).send({ resourceType: 'OperationOutcome', id: 'not-found' }));
    app.get('/fhir/R4/*', async () => ({ resourceType: 'Bundle' }));
    await registerAppStatic(app, dist);
    await app.ready();
  });

  afterAll(async () => {
    await app?.close();
    rmSync(dist, { recursive: true, force: true });
  });

  test('the login page and the other app routes answer index.html, not cached, not frameable', async () => {
    for (const url of ['/', '/oauth?client_id=c&redirect_uri=x', '/signin', '/oauth/']) {
      const res = await app.inject({ url });
      expect(res.statusCode, url).toBe(200);
      expect(res.body).toBe(INDEX);
      expect(res.headers['content-type']).toBe('text/html; charset=utf-8');
      expect(res.headers['cache-control']).toBe('no-cache');
      expect(res.headers['x-frame-options']).toBe('DENY');
      expect(res.headers['content-security-policy']).toContain("frame-ancestors 'none'");
    }
  });

  test('other browser navigations outside the API get index.html; other requests a 404', async () => {
    expect((await app.inject({ url: '/patients/123', headers: HTML })).body).toBe(INDEX);
    const plain = await app.inject({ url: '/patients/123', headers: { accept: 'application/json' } });
    expect(plain.statusCode).toBe(404);
    expect(plain.json().resourceType).toBe('OperationOutcome');
  });

  test('the fallback never answers below an API prefix', async () => {
    for (const url of ['/fhir', '/fhir/R5/Patient', '/auth/nope', '/oauth2/nope', '/admin/x', '/.well-known/x', '/storage/x', '/healthcheck', '/ws/agent']) {
      const res = await app.inject({ url, headers: HTML });
      expect(res.statusCode, url).toBe(404);
      expect(res.json().resourceType, url).toBe('OperationOutcome');
    }
    expect((await app.inject({ url: '/fhir/R4/Patient', headers: HTML })).json()).toEqual({ resourceType: 'Bundle' });
  });

  test('assets are served and cached for good; unknown assets, dotfiles and traversal are 404s', async () => {
    const asset = await app.inject({ url: '/assets/index-abc.js' });
    expect(asset.statusCode).toBe(200);
    expect(asset.body).toBe('console.log("app")');
    expect(asset.headers['cache-control']).toBe('public, max-age=31536000, immutable');
    const icon = await app.inject({ url: '/favicon.ico' });
    expect(icon.statusCode).toBe(200);
    expect(icon.headers['cache-control']).toBe('no-cache');
    for (const url of ['/assets/nope.js', '/.env', '/assets/../.env', '/assets/%2e%2e/.env', '/index.html/']) {
      const res = await app.inject({ url });
      expect(res.statusCode, url).toBeGreaterThanOrEqual(400);
      expect(res.body, url).not.toContain('SECRET');
    }
  });

  test('API prefixes are matched on whole segments', () => {
    expect(isApiPath('/oauth2/authorize')).toBe(true);
    expect(isApiPath('/oauth')).toBe(false);
    expect(isApiPath('/authors')).toBe(false);
    expect(isApiPath('/fhir')).toBe(true);
  });

  test('without a build nothing is registered, and an existing GET / is kept', async () => {
    const bare = Fastify();
    bare.get('/', async () => ({ ok: true }));
    await registerAppStatic(bare, path.join(dist, 'missing'));
    await registerAppStatic(bare, dist);
    expect((await bare.inject({ url: '/' })).json()).toEqual({ ok: true });
    expect((await bare.inject({ url: '/oauth' })).body).toBe(INDEX);
    const none = Fastify();
    await registerAppStatic(none, path.join(dist, 'missing'));
    expect((await none.inject({ url: '/oauth', headers: HTML })).statusCode).toBe(404);
    await Promise.all([bare.close(), none.close()]);
  });
});
