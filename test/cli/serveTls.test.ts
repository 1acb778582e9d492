// `zrs serve` with an <ssl> section and metrics-address, as child processes:
// a TLS primary and a TLS secondary replicate and serve Prometheus text; a
// secondary whose CA does not match is refused and stays empty.

import { get } from 'node:http';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { makeTestCerts, type TestCerts } from '../helpers/certs.js';
import { cleanupTempDirs, copyZodbFixture, tempDir } from '../helpers/fixtures.js';
import { transactions, ZrsProcess } from './helpers.js';

const children: ZrsProcess[] = [];
function start(config: string): ZrsProcess {
  const p = ZrsProcess.start(['serve', '--log-format', 'json', config]);
  children.push(p);
  return p;
}

let certs: TestCerts;
beforeAll(() => {
  certs = makeTestCerts();
});
afterEach(async () => {
  for (const c of children.splice(0)) if (c.child.exitCode === null && c.child.signalCode === null) await c.stop('SIGKILL');
});
afterAll(cleanupTempDirs);

function scrape(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    get(url, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => (body += c));
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

const sampleOf = (text: string, name: string): number | null => {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : null;
};

describe('zrs serve with <ssl> and metrics-address', () => {
  it('replicates over TLS and serves metrics; a secondary trusting another CA gets nothing', async () => {
    const pDir = await copyZodbFixture('basic'); // 53 transactions
    const sDir = await tempDir();
    // Ports chosen by the system (0), read back from each node's ready line: a port found free first could be taken before the node binds it.
    const pConf = join(pDir, 'primary.conf');
    await writeFile(
      pConf,
      `%import zc.zrs
<zrs>
  replicate-to 127.0.0.1:0
  metrics-address 127.0.0.1:0
  <ssl>
    certificate ${certs.server.certificate}
    key ${certs.server.key}
    authenticate ${certs.caDir}
  </ssl>
  <filestorage>
    path ${join(pDir, 'Data.fs')}
  </filestorage>
</zrs>
`,
    );
    const primary = start(pConf);
    const ready = await primary.ready();
    expect(ready.storages).toMatchObject([{ kind: 'primary', replicateTo: expect.stringMatching(/^127\.0\.0\.1:\d+$/), metrics: expect.stringMatching(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/) }]);
    const [{ replicateTo, metrics: pMetrics }] = ready.storages as [{ replicateTo: string; metrics: string }];
    expect(replicateTo).not.toBe('127.0.0.1:0');

    const secondaryConf = (dir: string, ca: string, metrics: string): string => `%import zc.zrs
<zrs>
  replicate-from ${replicateTo}
  reconnect-delay 0.05
  ${metrics}
  <ssl>
    certificate ${certs.client.certificate}
    key ${certs.client.key}
    authenticate ${ca}
    check-hostname true
  </ssl>
  <filestorage>
    path ${join(dir, 'Data.fs')}
  </filestorage>
</zrs>
`;
    const sConf = join(sDir, 'secondary.conf');
    await writeFile(sConf, secondaryConf(sDir, certs.ca, 'metrics-address 127.0.0.1:0'));
    const badDir = await tempDir();
    const badConf = join(badDir, 'bad.conf');
    await writeFile(badConf, secondaryConf(badDir, certs.otherCa, ''));

    const secondary = start(sConf);
    const [{ metrics: sMetrics }] = (await secondary.ready()).storages as [{ metrics: string }];
    const bad = start(badConf);
    await bad.ready();
    const refused = await bad.waitForLog((l) => l.message.startsWith('TLS: refused primary'));
    expect(refused.level).toBe('error');

    const want = await transactions(join(pDir, 'Data.fs'));
    expect(want).toHaveLength(53);
    // The secondary's metrics show every transaction received; then the files agree.
    for (let i = 0; ; i++) {
      const text = await scrape(sMetrics);
      if (sampleOf(text, 'zrs_transactions_received_total') === 53) break;
      if (i > 200) throw new Error(`not replicated:\n${text}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const p = await scrape(pMetrics);
    expect(sampleOf(p, 'zrs_transactions_sent_total')).toBe(53);
    expect(sampleOf(p, 'zrs_connected_secondaries')).toBe(1);

    expect(await bad.stop('SIGTERM')).toBe(0);
    expect(await secondary.stop('SIGTERM')).toBe(0);
    expect(await primary.stop('SIGTERM')).toBe(0);
    expect(await transactions(join(sDir, 'Data.fs'))).toEqual(want);
    expect(await transactions(join(badDir, 'Data.fs'))).toEqual([]);
  });
});
