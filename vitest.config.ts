import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['server/test/**/*.test.ts', 'agent/test/**/*.test.ts', 'tests/**/*.test.ts', 'app/src/**/*.test.ts', 'bots/**/*.test.ts'],
    globalSetup: ['server/test/global-setup.ts'],
    reporters: ['default', './server/test/summary-reporter.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Two cores: more parallel files than that only adds contention on Postgres.
    maxWorkers: 2,
  },
});
