// Builds dist/: ES modules + .d.ts with tsc, and the minified browser bundle dist/herald.min.js
// with esbuild (the `ws` package is only for Node and is left out). Prints the bundle's size
// minified and gzipped, fails above the 6000-byte budget, and with --compare measures the
// published `centrifuge` and `nats.ws` packages the same way (for the README's table).
import { execFileSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const root = fileURLToPath(new URL('..', import.meta.url));
const LIMIT = 6000;

rmSync(`${root}/dist`, { recursive: true, force: true });
execFileSync(process.execPath, [`${root}/node_modules/typescript/bin/tsc`, '-p', root], { stdio: 'inherit' });

/** Bundles `stdin` (an ES module source) minified for browsers; returns [min bytes, min+gzip bytes]. */
async function measure(contents, outfile) {
  const r = await esbuild.build({
    stdin: { contents, resolveDir: root, loader: 'js' },
    bundle: true,
    minify: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2020',
    external: ['ws', 'crypto'], // nats.ws guards an optional require('crypto') (tweetnacl)
    write: !!outfile,
    outfile: outfile ?? 'out.js',
    logLevel: 'error',
  });
  const bytes = r.outputFiles ? r.outputFiles[0].contents : (await import('node:fs')).readFileSync(outfile);
  return [bytes.length, gzipSync(bytes, { level: 9 }).length];
}

const [min, gz] = await measure(`export * from './dist/index.js';`, `${root}/dist/herald.min.js`);
console.log(`dist/herald.min.js: ${min} B minified, ${gz} B minified+gzipped (limit ${LIMIT} B)`);
if (process.argv.includes('--compare')) {
  for (const [name, src] of [
    ['centrifuge', `export * from 'centrifuge';`],
    ['nats.ws', `export * from 'nats.ws';`],
  ]) {
    const version = JSON.parse((await import('node:fs')).readFileSync(`${root}/node_modules/${name}/package.json`, 'utf8')).version;
    const [m, g] = await measure(src);
    console.log(`${name}@${version}: ${m} B minified, ${g} B minified+gzipped (${(g / 1024).toFixed(1)} KiB)`);
  }
}
if (gz > LIMIT) {
  console.error(`bundle over budget: ${gz} B > ${LIMIT} B`);
  process.exit(1);
}
