// Mutation checks: switch a deliberate bug on (the test-only `mutations`
// option of SimCluster, forwarded to every secondary) and require the
// property to find a counterexample within its budget; then run the same
// cases with the bug off and require them to pass, so the failure is the
// bug's. A suite that passes with the bug on proves nothing.

import { describe, expect, it } from 'vitest';
import { checkNamed, controlOf, replayCommand, type PropertyName } from './properties.js';

/** Fixed, so the budget below is known to suffice. */
const SEED = 42;

async function expectCaught(name: PropertyName, numRuns: number, verdict: RegExp): Promise<void> {
  const { details, counterexample } = await checkNamed(name, { numRuns, seed: SEED, endOnFailure: true });
  expect(details.failed, `${name}: no counterexample in ${numRuns} runs`).toBe(true);
  expect(String((details.errorInstance as Error | null)?.message)).toMatch(verdict);
  expect(counterexample && replayCommand(counterexample)).toMatch(new RegExp(`^npm run sim -- --property ${name} --seed ${SEED} --path \\d+`));
  // The control: the same cases, up to and including the counterexample, with the bug off.
  const control = await checkNamed(controlOf(name), { numRuns: details.numRuns, seed: SEED, endOnFailure: true });
  const replay = control.counterexample ? ` (replay: ${replayCommand(control.counterexample)})` : '';
  expect(control.details.failed, `${controlOf(name)} fails without the bug${replay}: ${String((control.details.errorInstance as Error | null)?.message).slice(0, 2000)}`).toBe(false);
  expect(control.details.numRuns).toBe(details.numRuns);
}

describe('mutations the simulation must catch', () => {
  it('a secondary that does not verify the stream checksum stores a flipped byte', async () => {
    await expectCaught('mutation-checksum', 60, /\[(corruption|prefix)\]/);
  }, 120_000);

  it('a secondary that does not abort a half-received transaction on disconnect', async () => {
    await expectCaught('mutation-no-abort', 40, /\[(convergence|partial|prefix|error)\]/);
  }, 120_000);

  it('a secondary that reports transactions applied (and acknowledges them) without syncing them', async () => {
    await expectCaught('mutation-no-sync', 60, /\[no-loss\] s\d .*reported applied \(and acknowledged\) before the crash, is missing after restart/);
  }, 120_000);

  it('a secondary that acknowledges transactions once written, before their sync', async () => {
    await expectCaught('mutation-ack-early', 80, /\[no-loss\] s\d .*acknowledged to its upstream before the crash, is missing after restart/);
  }, 120_000);

  it('a secondary that commits once the records are in, before the commit message and its checksum', async () => {
    await expectCaught('mutation-early-commit', 60, /\[(corruption|prefix|convergence)\]/);
  }, 120_000);
});
