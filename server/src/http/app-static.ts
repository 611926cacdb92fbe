import fastifyStatic from '@fastify/static';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

/** Paths the API owns: the SPA fallback never answers below them (an unknown one stays a 404 OperationOutcome). */
const API_PREFIXES = ['/fhir', '/auth', '/oauth2', '/admin', '/.well-known', '/storage', '/healthcheck', '/ws'];

/** Client-side routes served with index.html whatever the Accept header says. */
const APP_ROUTES = ['/', '/oauth', '/signin'];

/**
 * The app's pages hold the login form: no framing (clickjacking), no third-party code, and the
 * authorize query (state, code_challenge) is not leaked through Referer. Mantine injects
 * `<style>` elements, hence 'unsafe-inline' for styles only.
 */
const PAGE_HEADERS: Record<string, string> = {
  'Content-Type': 'text/html; charset=utf-8',
  'Cache-Control': 'no-cache',
  'Content-Security-Policy': [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
  ].join('; '),
  'X-Frame-Options': 'DENY',
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
};

export function isApiPath(pathname: string): boolean {
  return API_PREFIXES.some((prefix) => pathname === prefix || pathname.startsWith(prefix + '/'));
}

/**
 * Serves the built app (`app/dist`, from `vite build`) from the server's own origin: hashed assets
 * under /assets/ (cached for good), other files of the build at their path, and index.html for the
 * app's client-side routes: `/`, `/oauth`, `/signin`, and any other GET outside the API prefixes
 * whose Accept names text/html (a browser navigation). Registers nothing when `distDir` has no
 * build. A `GET /` route registered before this one is left in place.
 */
export async function registerAppStatic(app: FastifyInstance, distDir: string): Promise<void> {
  const root = path.resolve(distDir);
  const indexFile = path.join(root, 'index.html');
  if (!isFile(indexFile)) {
    return;
  }
  const appRoutes = APP_ROUTES.filter((url) => !app.hasRoute({ method: 'GET', url }));

  await app.register(async (scope) => {
    const assets = path.join(root, 'assets');
    if (isDirectory(assets)) {
      await scope.register(fastifyStatic, {
        root: assets,
        prefix: '/assets/',
        decorateReply: false,
        index: false,
        dotfiles: 'ignore',
        cacheControl: false,
        setHeaders: (reply: FastifyReply) => reply.header('Cache-Control', 'public, max-age=31536000, immutable'),
      });
    }
    // Other files of the build (public/ copies such as favicon.ico): one route each, listed at start.
    await scope.register(fastifyStatic, {
      root,
      prefix: '/',
      wildcard: false,
      globIgnore: ['index.html', 'assets/**'],
      decorateReply: false,
      index: false,
      dotfiles: 'ignore',
      cacheControl: false,
      setHeaders: (reply: FastifyReply) => reply.header('Cache-Control', 'no-cache'),
    });

    // Read on each request (it is small), so a rebuild of the app needs no restart.
    const sendIndex = async (_request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> => {
      const html = await readFile(indexFile);
      return reply.headers(PAGE_HEADERS).send(html);
    };
    for (const url of appRoutes) {
      scope.get(url, sendIndex);
    }
    scope.get('/*', async (request, reply) => {
      const pathname = request.url.split('?')[0];
      if (isApiPath(pathname) || !(request.headers.accept ?? '').includes('text/html')) {
        return reply.callNotFound();
      }
      return sendIndex(request, reply);
    });
  });
}

function isFile(file: string): boolean {
  return statSync(file, { throwIfNoEntry: false })?.isFile() ?? false;
}

function isDirectory(dir: string): boolean {
  return statSync(dir, { throwIfNoEntry: false })?.isDirectory() ?? false;
}
