#!/usr/bin/env node
/**
 * Runs a compiled entry point, compiling first only when a source is newer than the last build:
 *   node scripts/built.js dist/scripts/seed.js [args…]
 * (`npm start` and the npm scripts go through it, so a run does not pay for tsc each time.)
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const Module = require('node:module');

const root = path.resolve(__dirname, '..');
const marker = path.join(root, 'dist', '.built');

function newest(target) {
  let latest = 0;
  const stack = [target];
  while (stack.length) {
    const p = stack.pop();
    let st;
    try {
      st = fs.statSync(p);
    } catch {
      continue;
    }
    if (st.isDirectory()) for (const e of fs.readdirSync(p)) stack.push(path.join(p, e));
    else if (/\.(ts|json)$/.test(p)) latest = Math.max(latest, st.mtimeMs);
  }
  return latest;
}

const builtAt = fs.existsSync(marker) ? fs.statSync(marker).mtimeMs : 0;
const sources = Math.max(newest(path.join(root, 'src')), newest(path.join(root, 'scripts')), newest(path.join(root, 'tsconfig.json')), newest(path.join(root, 'package.json')));
if (sources > builtAt) {
  const tsc = spawnSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', path.join(root, 'tsconfig.json')], { stdio: 'inherit' });
  if (tsc.status !== 0) process.exit(tsc.status ?? 1);
  fs.mkdirSync(path.dirname(marker), { recursive: true });
  fs.writeFileSync(marker, new Date().toISOString());
}

const target = process.argv[2];
if (!target) {
  console.error('usage: node scripts/built.js <compiled entry point> [args…]');
  process.exit(2);
}
// Run the entry point as the main module, with its own arguments.
process.argv.splice(1, 2, path.resolve(root, target));
Module.runMain();
