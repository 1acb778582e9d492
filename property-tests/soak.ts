// `npm run soak -- --minutes M [--property NAME]`: run a named property
// (default: 'default') with fresh random seeds until the time is up; report
// runs, faults injected, events simulated and events per second of wall
// time, and every failure's replay command. A seed whose runs take longer
// than STALL_MS of wall time (a simulation waiting on something that never
// comes) is reported with its seed, and the soak ends there.

import fc from 'fast-check';
import { randomSeed } from '../src/node/clock.js';
import { totals } from './model.js';
import { PROPERTY_NAMES, counterexampleOf, isPropertyName, namedProperty, replayCommand } from './properties.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const minutes = Number(arg('minutes') ?? 1);
const property = arg('property') ?? 'default';
if (!isPropertyName(property)) {
  console.error(`unknown property ${property}; one of: ${PROPERTY_NAMES.join(', ')}`);
  process.exit(2);
}
/** Wall time after which one seed's runs count as stalled (they normally take well under a second). */
const STALL_MS = 120_000;
const deadline = performance.now() + minutes * 60_000;
const started = performance.now();
const failures: string[] = [];
let batches = 0;
while (performance.now() < deadline) {
  const seed = randomSeed();
  batches += 1;
  const stalled = setTimeout(() => {
    console.log(`STALLED (seed ${seed}): its runs took over ${STALL_MS / 1000} s of wall time\n  replay each of its cases: npm run sim -- --property ${property} --seed ${seed} --path N (N = 0 … 9)`);
    process.exit(1);
  }, STALL_MS);
  const details = await fc.check(namedProperty(property), { seed, numRuns: 10, endOnFailure: true });
  clearTimeout(stalled);
  const counterexample = counterexampleOf(property, details);
  if (counterexample) {
    const line = replayCommand(counterexample);
    failures.push(line);
    console.log(`FAILED (seed ${details.seed}): ${String((details.errorInstance as Error | null)?.message ?? '').split('\n')[0]}\n  replay: ${line}`);
  }
  if (batches % 5 === 0) console.log(`… ${totals.runs} runs, ${failures.length} failures`);
}
const wallS = (performance.now() - started) / 1000;
console.log(
  [
    `runs: ${totals.runs} (${batches} seeds × up to 10)`,
    `failures: ${failures.length}`,
    `faults injected: ${totals.faults}`,
    `commits: ${totals.commits}`,
    `events simulated: ${totals.events} (${Math.round(totals.events / wallS)} per second of wall time)`,
    `virtual time: ${(totals.virtualMs / 1000).toFixed(1)} s in ${wallS.toFixed(1)} s of wall time`,
  ].join('\n'),
);
for (const f of failures) console.log(`  ${f}`);
process.exit(failures.length ? 1 : 0);
