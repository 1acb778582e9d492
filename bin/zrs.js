#!/usr/bin/env node
// The `zrs` command. In a checkout (src/ is there) it runs the TypeScript
// sources through tsx, so it always runs the code as it stands; an installed
// package holds only the compiled dist/ (package.json "files") and runs that.
import { existsSync } from 'node:fs';

const source = new URL('../src/cli/main.ts', import.meta.url);
if (existsSync(source)) {
  const { register } = await import('tsx/esm/api');
  register();
  await import(source.href);
} else {
  await import('../dist/src/cli/main.js');
}
