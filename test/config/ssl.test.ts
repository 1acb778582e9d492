// The <ssl> section inside <zrs>: ZEO's keys map onto the `tls` option of
// Primary.open / Secondary.open; a listening storage needs authenticate;
// unknown keys (password-function included) and a second <ssl> are errors.

import { describe, expect, it } from 'vitest';
import { ConfigError, loadZrsConfigText } from '../../src/config/zrs.js';

const noDirs = { checkDirectories: false };

function conf(zrs: string, ssl: string): string {
  return `%import zc.zrs\n<zrs>\n${zrs}\n<ssl>\n${ssl}\n</ssl>\n<filestorage>\npath /tmp/Data.fs\n</filestorage>\n</zrs>\n`;
}

function errorOf(text: string): ConfigError {
  try {
    loadZrsConfigText(text, '/etc/zrs/t.conf', noDirs);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('no ConfigError');
}

describe('<ssl> inside <zrs>', () => {
  it('gives a primary its server certificate and the CA for client certificates', () => {
    const c = loadZrsConfigText(conf('replicate-to 127.0.0.1:5000\nmetrics-address 127.0.0.1:9100', 'certificate /etc/zrs/server.pem\nkey /etc/zrs/server.key\nauthenticate /etc/zrs/ca.pem'), 't', noDirs);
    const p = c.storages[0]!;
    expect(p.kind).toBe('primary');
    expect(p.options).toMatchObject({ tls: { certificate: '/etc/zrs/server.pem', key: '/etc/zrs/server.key', authenticate: '/etc/zrs/ca.pem' } });
    expect(p.metricsAddress).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 9100 });
  });

  it('gives a secondary its client certificate, the hostname check and a server-hostname', () => {
    const c = loadZrsConfigText(
      conf('replicate-from db1:5000', 'certificate /c.pem\nkey /c.key\nauthenticate /ca\ncheck-hostname true\nserver-hostname db1.example'),
      't',
      noDirs,
    );
    expect(c.storages[0]!.options).toMatchObject({
      tls: { certificate: '/c.pem', key: '/c.key', authenticate: '/ca', checkHostname: true, serverHostname: 'db1.example' },
    });
  });

  it('lets a pure secondary leave authenticate out (the system CAs verify the primary)', () => {
    const c = loadZrsConfigText(conf('replicate-from db1:5000', 'certificate /c.pem'), 't', noDirs);
    expect(c.storages[0]!.options).toMatchObject({ tls: { certificate: '/c.pem' } });
  });

  it('needs authenticate on a storage that listens', () => {
    const e = errorOf(conf('replicate-to 5000', 'certificate /s.pem'));
    expect(e.message).toMatch(/t\.conf:4: <ssl>: needs authenticate/);
  });

  it('needs a certificate', () => {
    expect(errorOf(conf('replicate-from 5000', 'authenticate /ca.pem')).message).toMatch(/needs certificate/);
  });

  it('rejects password-function and unknown keys with file and line', () => {
    expect(errorOf(conf('replicate-from 5000', 'certificate /c.pem\npassword-function x.y')).message).toMatch(/t\.conf:6: password-function: unknown key in <ssl> \(encrypted keys/);
    expect(errorOf(conf('replicate-from 5000', 'certificate /c.pem\ncafile /x')).message).toMatch(/cafile: unknown key in <ssl>/);
    expect(errorOf(conf('replicate-from 5000', 'certificate /c.pem\ncheck-hostname maybe')).message).toMatch(/not a boolean/);
  });

  it('allows one <ssl> per <zrs>', () => {
    const text = `%import zc.zrs\n<zrs>\nreplicate-from 5000\n<ssl>\ncertificate /a\n</ssl>\n<ssl>\ncertificate /b\n</ssl>\n<filestorage>\npath /tmp/Data.fs\n</filestorage>\n</zrs>\n`;
    expect(errorOf(text).message).toMatch(/t\.conf:7: <ssl>: duplicate section/);
  });

  it('checks that the files exist when directories are checked', () => {
    expect(() => loadZrsConfigText(conf('replicate-from 5000', 'certificate /nonexistent/c.pem'), '/tmp/t.conf', {})).toThrow(/certificate: "\/nonexistent\/c.pem" does not exist/);
  });
});
