// `npm run sim -- --property NAME --seed S [--path P] [--replay-path R]`:
// replay one simulated run of a named property (property-tests/properties.ts;
// 'default' when omitted): the case fast-check generates first for seed S,
// or the exact counterexample at path P (R: the replayPath fast-check prints
// for a shrunk command list). Prints its trace and verdict; the same
// arguments always print the same trace.
// `--plan` runs randomPlan(S) on a plain SimCluster instead; `--list` names the properties.

import { SimCluster, randomPlan } from '../src/sim/index.js';
import { PROPERTY_NAMES, describeProperty, isPropertyName, replay } from './properties.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

if (process.argv.includes('--list')) {
  for (const name of PROPERTY_NAMES) console.log(`${name.padEnd(24)} ${describeProperty(name)}`);
  process.exit(0);
}

const seed = Number(arg('seed') ?? NaN);
const property = arg('property') ?? 'default';
if (!Number.isInteger(seed) || !isPropertyName(property)) {
  console.error('usage: npm run sim -- [--property NAME] --seed S [--path P] [--replay-path R] | --seed S --plan | --list');
  if (!isPropertyName(property)) console.error(`unknown property ${property}; one of: ${PROPERTY_NAMES.join(', ')}`);
  process.exit(2);
}

if (process.argv.includes('--plan')) {
  const cluster = await SimCluster.create({ seed, secondaries: 3 });
  const result = await cluster.run(randomPlan(seed, { secondaries: 3 }));
  await cluster.close();
  console.log(result.trace.join('\n'));
  console.log(JSON.stringify(result.stats));
  console.log(result.ok ? 'OK: every invariant held and the cluster converged' : `FAILED:\n${result.violations.map((v) => `  [${v.invariant}] ${v.node} at ${v.atMs} ms: ${v.detail}`).join('\n')}`);
  process.exit(result.ok ? 0 : 1);
}

const result = await replay({ property, seed, path: arg('path'), replayPath: arg('replay-path') });
console.log(`property: ${property}  cluster: ${result.cluster}  simulation seed: ${result.seed}`);
console.log(`commands: ${result.commands}`);
console.log(result.trace.join('\n'));
console.log(JSON.stringify(result.stats));
if (result.failed) {
  console.log(`FAILED: ${result.message}`);
  process.exit(1);
}
console.log('OK: every invariant held and the cluster converged');
