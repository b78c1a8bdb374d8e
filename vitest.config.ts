import { defineConfig } from 'vitest/config';

// GPU tests share two CPU cores with lavapipe: run files one at a time in forked
// processes (each gets its own Dawn device) with generous timeouts for first compiles.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 600_000,
    hookTimeout: 600_000,
    teardownTimeout: 60_000,
  },
});
