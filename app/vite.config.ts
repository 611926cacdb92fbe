import react from '@vitejs/plugin-react';
import mantinePreset from 'postcss-preset-mantine';
import simpleVars from 'postcss-simple-vars';
import { defineConfig } from 'vite';

/** The server that `vite` (dev mode) forwards API calls to; the built app is served by the server itself. */
const apiTarget = process.env.ERMIS_URL ?? 'http://localhost:8103';
const apiPrefixes = ['/fhir', '/auth', '/oauth2', '/admin', '/.well-known', '/storage', '/healthcheck'];

export default defineConfig({
  plugins: [react()],
  resolve: {
    // fhirclient's dependency chain hoists React 18 to the root node_modules; the app and the
    // Mantine/Medplum packages must all share this workspace's React 19.
    dedupe: ['react', 'react-dom'],
  },
  css: {
    postcss: {
      // Mantine's PostCSS setup: @medplum/react's stylesheet (and Mantine-style CSS modules) use
      // `$mantine-breakpoint-*` variables and Mantine mixins, which plain CSS minifiers reject.
      plugins: [
        mantinePreset(),
        simpleVars({
          variables: {
            'mantine-breakpoint-xs': '36em',
            'mantine-breakpoint-sm': '48em',
            'mantine-breakpoint-md': '62em',
            'mantine-breakpoint-lg': '75em',
            'mantine-breakpoint-xl': '88em',
          },
        }),
      ],
    },
  },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    chunkSizeWarningLimit: 2048,
  },
  server: {
    proxy: Object.fromEntries(apiPrefixes.map((prefix) => [prefix, { target: apiTarget, changeOrigin: true }])),
  },
});
