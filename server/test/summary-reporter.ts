import type { Reporter, TestModule } from 'vitest/node';

/** Prints the plain closing line CI looks for: "N passed, N failed" (", N skipped" when any were). */
export default class SummaryReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>): void {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    for (const module of testModules) {
      for (const test of module.children.allTests()) {
        const state = test.result().state;
        if (state === 'passed') {
          passed++;
        } else if (state === 'failed') {
          failed++;
        } else {
          skipped++;
        }
      }
      if (module.state() === 'failed' && !module.children.size) {
        failed++; // a file that failed to load counts as a failure
      }
    }
    console.log(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
  }
}
