// End-to-end harness: real herald-gateway processes (standalone mode, their own data dirs and
// ports on loopback), an Ed25519 key pair made here with node:crypto and handed to the gateways,
// JWTs signed with it, publishing through the admin `POST /v1/publish`, and a "front" TCP
// proxy that serves the browser test page and forwards /gwN/... to gateway N byte for byte, so
// the page and the gateways share one origin (the gateway sends no CORS headers) and a test can
// block WebSocket upgrades or cut the gateways off, as a corporate proxy or a network outage would.
import { spawn } from 'node:child_process';
import { generateKeyPairSync, sign } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const pkgRoot = fileURLToPath(new URL('../../', import.meta.url));
export const repoRoot = path.resolve(pkgRoot, '../..');

/** The gateway binary: $HERALD_GATEWAY_BIN, else the workspace's debug build. */
export function gatewayBinary() {
  const bin = process.env.HERALD_GATEWAY_BIN ?? path.join(process.env.CARGO_TARGET_DIR ?? path.join(repoRoot, 'target'), 'debug/herald-gateway');
  if (!existsSync(bin)) throw new Error(`${bin} not found: run cargo build -p herald-gateway --bin herald-gateway (or set HERALD_GATEWAY_BIN)`);
  return bin;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until `f()` resolves truthy, every 25 ms, at most `ms`; returns its value. */
export async function until(f, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(25);
  }
}

/** A free loopback TCP port (bound, read, released). */
export async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

const b64url = (x) => Buffer.from(x).toString('base64url');

/** An Ed25519 signing key whose public half the gateways trust under kid `ts`. */
export class Keys {
  constructor(dir) {
    const { publicKey, privateKey } = generateKeyPairSync('ed25519');
    this.privateKey = privateKey;
    this.pubPath = path.join(dir, 'ts.pub.pem');
    writeFileSync(this.pubPath, publicKey.export({ type: 'spki', format: 'pem' }));
  }
  /** A JWT for `ns` (default every namespace) expiring `ttlS` seconds from now (negative: expired). */
  token({ ns = ['*'], ttlS = 3600, sub = 'ts-e2e' } = {}) {
    const head = b64url(JSON.stringify({ alg: 'EdDSA', typ: 'JWT', kid: 'ts' }));
    const body = b64url(JSON.stringify({ sub, ns, exp: Math.floor(Date.now() / 1000) + ttlS }));
    return `${head}.${body}.${b64url(sign(null, Buffer.from(`${head}.${body}`), this.privateKey))}`;
  }
}

/** One herald-gateway process with fixed ports (so a restart comes back at the same address). */
export class Gateway {
  constructor(dir, name, keys, extraArgs = []) {
    this.dir = path.join(dir, name);
    this.keys = keys;
    this.extraArgs = extraArgs;
    this.child = null;
  }

  async start() {
    this.wsPort ??= await freePort();
    this.adminPort ??= await freePort();
    const args = [
      '--listen', `127.0.0.1:${this.wsPort}`, '--admin-listen', `127.0.0.1:${this.adminPort}`,
      '--data-dir', path.join(this.dir, 'data'), '--auth-key', `ts=${this.keys.pubPath}`, ...this.extraArgs,
    ];
    const child = (this.child = spawn(gatewayBinary(), args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, HERALD_LOG: 'info', NO_COLOR: '1' },
    }));
    this.log = '';
    child.stderr.on('data', (d) => (this.log = (this.log + d).slice(-20000)));
    this.exited = new Promise((r) => child.on('exit', (code, sig) => r({ code, sig })));
    let out = '';
    await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('gateway not ready in 20 s:\n' + this.log)), 20000);
      child.stdout.on('data', (d) => {
        out += d;
        if (/herald-gateway ready /.test(out)) clearTimeout(t), resolve();
      });
      child.on('exit', (c) => (clearTimeout(t), reject(new Error(`gateway exited (${c}):\n${this.log}`))));
    });
    child.stdout.resume();
    return this;
  }

  get url() {
    return `http://127.0.0.1:${this.wsPort}`;
  }

  /** SIGKILL, and wait for the exit. */
  async kill() {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }

  /** SIGTERM: the gateway drains (GOAWAY to every client), then exits. */
  sigterm() {
    this.child.kill('SIGTERM');
  }

  /** `POST /v1/publish` on the admin listener; `changes` is `[[ns, sjid]...]` (bigint or number). */
  async publish(changes) {
    const body = JSON.stringify({ changes: changes.map(([ns, sjid]) => ({ ns: String(ns), sjid: String(sjid) })) });
    const res = await fetch(`http://127.0.0.1:${this.adminPort}/v1/publish`, { method: 'POST', body });
    if (res.status != 202) throw new Error(`publish: HTTP ${res.status} ${await res.text()}`);
  }
}

/**
 * The front: serves `pages` (path → [content type, body]) and forwards `/gwN/rest` to gateway
 * `gateways[N]` as `/rest`, one request per connection (it adds `Connection: close`) or one
 * WebSocket. `blockWs` answers upgrades 403; `down` drops every forwarded connection at once.
 */
export class Front {
  constructor(gateways, pages = {}) {
    this.gateways = gateways;
    this.pages = pages;
    this.blockWs = false;
    this.down = false;
    this.sockets = new Set();
    this.server = net.createServer((c) => this.handle(c));
  }

  async start() {
    await new Promise((r) => this.server.listen(0, '127.0.0.1', r));
    this.origin = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  /** The base URL a client uses to reach gateway `i` through the front. */
  url(i) {
    return `${this.origin}/gw${i}`;
  }

  /** Drops every forwarded connection now (and, with `down`, refuses new ones). */
  cut() {
    for (const s of this.sockets) s.destroy();
  }

  handle(c) {
    let buf = Buffer.alloc(0);
    c.on('error', () => {});
    const onData = (d) => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      c.off('data', onData);
      c.pause();
      let head = buf.subarray(0, end).toString('latin1');
      const rest = buf.subarray(end + 4);
      const [method, target] = head.split(' ');
      const m = /^\/gw(\d+)(\/.*)$/.exec(target);
      if (!m) {
        const page = this.pages[target.split('?')[0]];
        const [type, body] = page ?? ['text/plain', 'not found'];
        c.end(`HTTP/1.1 ${page ? 200 : 404} X\r\ncontent-type: ${type}\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
        return;
      }
      const upgrade = /^upgrade:\s*websocket/im.test(head);
      if (this.down) return c.destroy();
      if (upgrade && this.blockWs) return c.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      head = head.replace(target, m[2]);
      if (!upgrade) head = head.replace(/\r\nconnection:[^\r]*/gi, '') + '\r\nconnection: close';
      const gw = this.gateways[+m[1]];
      const up = net.connect(gw.wsPort, '127.0.0.1');
      this.sockets.add(c).add(up);
      const done = () => {
        this.sockets.delete(c);
        this.sockets.delete(up);
        c.destroy();
        up.destroy();
      };
      up.on('error', done).on('close', done);
      c.on('close', done);
      up.write(head + '\r\n\r\n');
      up.write(rest);
      c.pipe(up).pipe(c);
      c.resume();
    };
    c.on('data', onData);
  }

  async stop() {
    this.cut();
    await new Promise((r) => this.server.close(r));
  }
}

/** A temp dir for one test file, removed by `cleanup()`. */
export function tempDir() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'herald-ts-e2e-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The built browser bundle, to serve to the page. */
export const bundle = () => readFileSync(path.join(pkgRoot, 'dist/herald.min.js'), 'utf8');
