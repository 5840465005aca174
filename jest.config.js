/** @type {import('jest').Config} */
const tsJest = [
  'ts-jest',
  {
    diagnostics: false,
    // jose 6 is ESM-only: Node 20 require()s it natively, Jest's loader does not, so tests transpile it.
    tsconfig: { allowJs: true, module: 'commonjs', target: 'ES2022', esModuleInterop: true, resolveJsonModule: true, isolatedModules: true },
  },
];
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.[tj]s$': tsJest },
  transformIgnorePatterns: ['/node_modules/(?!jose/)'],
  globalSetup: '<rootDir>/test/helpers/global-setup.ts',
  globalTeardown: '<rootDir>/test/helpers/global-teardown.ts',
  testTimeout: 60000,
  maxWorkers: 2,
};
