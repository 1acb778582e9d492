#!/usr/bin/env node
// The `zrs` command: load the TypeScript sources through tsx and run the CLI.
import { register } from 'tsx/esm/api';

register();
await import('../src/cli/main.ts');
