// `npm run sim -- --seed S [--path P]`: replay one simulated run of the
// cluster property (the case fast-check generates first for seed S, or the
// exact counterexample at path P) and print its trace and verdict.
// `--plan` runs randomPlan(S) on a plain SimCluster instead.

import fc from 'fast-check';
import { SimCluster, randomPlan } from '../src/sim/index.js';
import { clusterProperty, lastRun } from './model.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const seed = Number(arg('seed') ?? NaN);
if (!Number.isInteger(seed)) {
  console.error('usage: npm run sim -- --seed S [--path P] [--plan]');
  process.exit(2);
}
const path = arg('path');

if (process.argv.includes('--plan')) {
  const cluster = await SimCluster.create({ seed, secondaries: 3 });
  const result = await cluster.run(randomPlan(seed, { secondaries: 3 }));
  await cluster.close();
  console.log(result.trace.join('\n'));
  console.log(JSON.stringify(result.stats));
  console.log(result.ok ? 'OK: every invariant held and the cluster converged' : `FAILED:\n${result.violations.map((v) => `  [${v.invariant}] ${v.node} at ${v.atMs} ms: ${v.detail}`).join('\n')}`);
  process.exit(result.ok ? 0 : 1);
}

const details = await fc.check(clusterProperty(), { seed, path, numRuns: 1, endOnFailure: true });
console.log(`cluster: ${lastRun.cluster}  simulation seed: ${lastRun.seed}`);
console.log(`commands: ${lastRun.commands}`);
console.log(lastRun.trace.join('\n'));
console.log(JSON.stringify(lastRun.stats));
if (details.failed) {
  const message = String((details.errorInstance as Error | null)?.message ?? '').split('\n--- trace')[0];
  console.log(`FAILED: ${message}`);
  process.exit(1);
}
console.log('OK: every invariant held and the cluster converged');
