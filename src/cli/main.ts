// Entry point of the `zrs` command (bin/zrs.js, `npm run zrs -- …`): runs the
// command line against the real process and sets the exit code.

import { runCli } from './cli.js';
import { processIo } from './io.js';

const io = processIo();
const code = await runCli(process.argv.slice(2), io);
process.exitCode = code;
if (process.argv[2] === 'serve') {
  // Everything is closed by now; should a stray handle keep the loop alive, leave anyway.
  setTimeout(() => process.exit(code), 2000).unref();
}
