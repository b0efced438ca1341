// Session logic of HeraldClient against a scripted in-process server (the `ws` package plus this
// package's own codec for the server side): resubscription, tokens, GOAWAY, RESET/DENIED,
// heartbeat, fatal closes, close() hygiene and the long-poll fallback. The real gateway is
// exercised by test/e2e/.
import test from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { WebSocketServer } from 'ws';
import { HeraldClient, backoffDelay, decodeClient, encodeServer } from '../../dist/index.js';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Waits until `f()` is truthy, polling every 10 ms, at most `ms`. */
async function until(f, ms = 5000, what = 'condition') {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await sleep(10);
  }
}

/**
 * A scripted Herald server on a free loopback port. Every client frame is decoded and recorded in
 * `frames` (with the connection number); `onFrame(conn, frame, send)` scripts the answers. WELCOME
 * is sent for HELLO unless `onFrame` returns true. `blockUpgrades` refuses WebSocket upgrades (a
 * proxy that blocks them); `longpoll(body)` answers POST /v1/longpoll.
 */
async function scripted({ onFrame = () => false, heartbeatMs = 60000n, longpoll } = {}) {
  const s = { frames: [], conns: [], blockUpgrades: false, polls: [] };
  const server = http.createServer(async (req, res) => {
    let body = '';
    for await (const c of req) body += c;
    s.polls.push(JSON.parse(body));
    const [status, reply] = await longpoll(JSON.parse(body), s.polls.length);
    res.writeHead(status, { 'content-type': 'application/json', 'retry-after': '1' });
    res.end(JSON.stringify(reply));
  });
  const wss = new WebSocketServer({ noServer: true, handleProtocols: (p) => (p.has('herald.v1') ? 'herald.v1' : false) });
  server.on('upgrade', (req, sock, head) => {
    if (s.blockUpgrades) return sock.destroy();
    wss.handleUpgrade(req, sock, head, (ws) => {
      const conn = s.conns.push(ws) - 1;
      const send = (f) => ws.send(encodeServer(f));
      ws.on('message', (data) => {
        const f = decodeClient(new Uint8Array(data));
        s.frames.push({ conn, ...f });
        if (onFrame(conn, f, send, ws)) return;
        if (f.type == 'hello') send({ type: 'welcome', version: 1n, heartbeatMs, maxSubscriptions: 100n, sessionId: new Uint8Array([1, 2]) });
      });
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  s.url = `http://127.0.0.1:${server.address().port}`;
  s.stop = async () => {
    for (const ws of s.conns) ws.terminate();
    wss.close();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  };
  return s;
}

/** A client with a counting token provider and an in-memory cursor store. */
function client(url, extra = {}) {
  const store = new Map([[7n, 3n]]);
  const log = { tokens: 0, changed: [], reset: [], denied: [], states: [] };
  const c = new HeraldClient({
    url,
    token: async () => `tok-${++log.tokens}`,
    storage: { load: (ns) => store.get(ns), save: (ns, s) => store.set(ns, s) },
    backoffMs: 50,
    backoffMaxMs: 200,
    ...extra,
  });
  c.on('changed', (ns, s) => log.changed.push([ns, s]));
  c.on('reset', (ns) => log.reset.push(ns));
  c.on('denied', (ns, code) => log.denied.push([ns, code]));
  c.on('state', (st, d) => log.states.push(d ? `${st}:${d}` : st));
  return { c, store, log };
}

test('full-jitter backoff stays within [0, min(max, initial * 2^attempt)]', () => {
  assert.equal(backoffDelay(0, 500, 30000, 0), 0);
  assert.equal(backoffDelay(0, 500, 30000, 1), 500);
  assert.equal(backoffDelay(3, 500, 30000, 1), 4000);
  assert.equal(backoffDelay(20, 500, 30000, 1), 30000);
  for (let a = 0; a < 30; a++) {
    const d = backoffDelay(a, 100, 5000);
    assert.ok(d >= 0 && d <= Math.min(5000, 100 * 2 ** a), `${a}: ${d}`);
  }
});

test('HELLO carries the provider token; subscriptions use stored cursors; CHANGED saves and reports', async (t) => {
  const srv = await scripted({
    onFrame: (conn, f, send) => {
      if (f.type == 'subscribe') send({ type: 'changed', pairs: [[7n, 9n], [8n, 2n ** 60n]] });
    },
  });
  const { c, store, log } = client(srv.url);
  t.after(() => (c.close(), srv.stop()));
  await c.subscribe(7); // cursor from storage: 3
  await c.subscribe(8n, 5n);
  await until(() => log.changed.length == 2, 5000, 'two changes');
  const hello = srv.frames.find((f) => f.type == 'hello');
  assert.deepEqual(hello, { conn: 0, type: 'hello', version: 1n, token: 'tok-1' });
  const subs = srv.frames.filter((f) => f.type == 'subscribe').flatMap((f) => f.pairs);
  assert.deepEqual(new Map(subs), new Map([[7n, 3n], [8n, 5n]]));
  assert.deepEqual(log.changed, [[7n, 9n], [8n, 2n ** 60n]]);
  assert.equal(store.get(8n), 2n ** 60n, 'big SJID saved exactly');
  assert.deepEqual(c.cursors(), new Map([[7n, 9n], [8n, 2n ** 60n]]));
  assert.equal(c.state, 'connected');
});

test('refresh() sends the provider token on the live session as REFRESH', async (t) => {
  const srv = await scripted();
  const { c } = client(srv.url);
  t.after(() => (c.close(), srv.stop()));
  await until(() => c.state == 'connected', 5000, 'connected');
  await c.refresh();
  await until(() => srv.frames.some((f) => f.type == 'refresh'), 5000, 'REFRESH');
  const refresh = srv.frames.find((f) => f.type == 'refresh');
  assert.deepEqual(refresh, { conn: 0, type: 'refresh', token: 'tok-2' });
  assert.equal(srv.conns.length, 1, 'no reconnect');
});

test('after a dropped connection: new token, every namespace resubscribed with its latest cursor', async (t) => {
  const srv = await scripted({
    onFrame: (conn, f, send, ws) => {
      if (conn == 0 && f.type == 'subscribe' && f.pairs.some(([ns]) => ns == 8n)) {
        send({ type: 'changed', pairs: [[7n, 20n]] });
        setTimeout(() => ws.terminate(), 50);
      }
    },
  });
  const { c, log } = client(srv.url);
  t.after(() => (c.close(), srv.stop()));
  await c.subscribe(7);
  await c.subscribe(8, 1);
  await until(() => srv.frames.some((f) => f.conn == 1 && f.type == 'subscribe'), 5000, 'resubscribe');
  const hello2 = srv.frames.find((f) => f.conn == 1 && f.type == 'hello');
  assert.equal(hello2.token, 'tok-2', 'token provider called again for the new connection');
  const resub = srv.frames.filter((f) => f.conn == 1 && f.type == 'subscribe').flatMap((f) => f.pairs);
  assert.deepEqual(new Map(resub), new Map([[7n, 20n], [8n, 1n]]));
  assert.ok(log.states.includes('backoff:close 1006'), log.states.join());
});

test("GOAWAY's reconnect_after_ms is honoured, not the backoff", async (t) => {
  let closedAt = 0;
  const srv = await scripted({
    onFrame: (conn, f, send, ws) => {
      if (conn == 0 && f.type == 'subscribe') {
        send({ type: 'goaway', code: 100n, reconnectAfterMs: 700n });
        closedAt = Date.now();
        ws.close(4100);
      }
    },
  });
  const { c } = client(srv.url, { backoffMs: 1, backoffMaxMs: 1 });
  t.after(() => (c.close(), srv.stop()));
  await c.subscribe(7);
  await until(() => srv.frames.some((f) => f.conn == 1 && f.type == 'hello'), 5000, 'second HELLO');
  const waited = Date.now() - closedAt;
  // Never earlier than asked; later only by the machine's scheduling (margin 1 s on this noisy VM).
  assert.ok(waited >= 690 && waited < 1700, `reconnected after ${waited} ms`);
});

test('RESET and DENIED end subscriptions, which are not resubscribed', async (t) => {
  const srv = await scripted({
    onFrame: (conn, f, send, ws) => {
      if (conn == 0 && f.type == 'subscribe' && f.pairs.some(([ns]) => ns == 9n)) {
        send({ type: 'reset', ns: [7n] });
        send({ type: 'denied', code: 4n, ns: [9n] });
        setTimeout(() => ws.terminate(), 50);
      }
    },
  });
  const { c, log } = client(srv.url);
  t.after(() => (c.close(), srv.stop()));
  await c.subscribe(7);
  await c.subscribe(8);
  await c.subscribe(9);
  await until(() => srv.frames.some((f) => f.conn == 1 && f.type == 'subscribe'), 5000, 'resubscribe');
  assert.deepEqual(log.reset, [7n]);
  assert.deepEqual(log.denied, [[9n, 4]]);
  const resub = srv.frames.filter((f) => f.conn == 1 && f.type == 'subscribe').flatMap((f) => f.pairs);
  assert.deepEqual(resub, [[8n, 0n]]);
});

test('heartbeat: PING every heartbeat_ms from WELCOME, PONG to a server PING', async (t) => {
  const srv = await scripted({ heartbeatMs: 100n });
  const { c } = client(srv.url);
  t.after(() => (c.close(), srv.stop()));
  await until(() => c.state == 'connected', 5000, 'connected');
  srv.conns[0].send(encodeServer({ type: 'ping', nonce: 77n }));
  await sleep(650);
  const pings = srv.frames.filter((f) => f.type == 'ping');
  assert.ok(pings.length >= 3 && pings.length <= 7, `${pings.length} pings in 650 ms at 100 ms`);
  assert.ok(srv.frames.some((f) => f.type == 'pong' && f.nonce == 77n), 'PONG 77');
});

test('a 4001 close (bad_frame) is fatal: state closed, no reconnect', async (t) => {
  const srv = await scripted({
    onFrame: (conn, f, send, ws) => {
      if (f.type == 'hello') {
        send({ type: 'error', code: 1n, message: 'bad' });
        ws.close(4001);
        return true;
      }
    },
  });
  const { c, log } = client(srv.url);
  t.after(() => (c.close(), srv.stop()));
  await until(() => c.state == 'closed', 5000, 'closed');
  await sleep(500);
  assert.equal(srv.frames.filter((f) => f.type == 'hello').length, 1);
  assert.ok(log.states.at(-1).startsWith('closed:error 1: bad'), log.states.join());
});

test('close() leaves no timer and no socket behind', async () => {
  const srv = await scripted({ heartbeatMs: 100n });
  const before = process.getActiveResourcesInfo().filter((r) => r != 'TTYWrap');
  const { c } = client(srv.url);
  await c.subscribe(7);
  await until(() => c.state == 'connected', 5000, 'connected');
  c.close();
  await srv.stop();
  // The socket's close handshake finishes asynchronously: allow it 2 s.
  const left = () => process.getActiveResourcesInfo().filter((r) => r != 'TTYWrap');
  await until(() => left().length <= before.length - 1, 2000, `resources to go: ${left()} (before: ${before})`);
  assert.equal(c.state, 'closed');
  const frames = srv.frames.length;
  await sleep(300);
  assert.equal(srv.frames.length, frames, 'nothing sent after close');
});

test('WebSocket blocked: long-poll takes over (token per poll, backoff_s), WebSocket retried later', async (t) => {
  const srv = await scripted({
    longpoll: async (body, n) => {
      if (n == 1) return [200, { changes: [{ ns: 7, sjid: '9007199254740993' }], reset: [], backoff_s: 1 }];
      await sleep(100);
      return [200, { changes: [], reset: [], backoff_s: null }];
    },
  });
  srv.blockUpgrades = true;
  const { c, log } = client(srv.url, { wsRetryMs: 2500 });
  t.after(() => (c.close(), srv.stop()));
  await c.subscribe(7);
  await until(() => srv.polls.length >= 2, 5000, 'two polls');
  assert.deepEqual(srv.polls[0], { token: srv.polls[0].token, cursors: { 7: 3 }, timeout_s: 30 });
  assert.deepEqual(log.changed, [[7n, 9007199254740993n]]);
  assert.deepEqual(srv.polls[1].cursors, { 7: '9007199254740993' }, 'second poll carries the new cursor as a string');
  assert.notEqual(srv.polls[0].token, srv.polls[1].token, 'token provider called for each poll');
  assert.ok(log.states.includes('polling'));
  srv.blockUpgrades = false;
  await until(() => c.state == 'connected', 8000, 'back on WebSocket');
  const sub = srv.frames.find((f) => f.type == 'subscribe');
  assert.deepEqual(sub.pairs, [[7n, 9007199254740993n]]);
});

test('long-poll errors: 401 asks for a new token, 403 denies the namespaces, 503 waits Retry-After', async (t) => {
  const at = [];
  const srv = await scripted({
    longpoll: async (body, n) => {
      at.push(Date.now());
      if (n == 1) return [401, { error: 'token_expired', message: 'expired' }];
      if (n == 2) return [403, { error: 'forbidden_namespace', message: 'no', namespaces: [9] }];
      if (n == 3) return [503, { error: 'overloaded', message: 'busy' }]; // Retry-After: 1
      await sleep(100);
      return [200, { changes: [{ ns: 7, sjid: 4 }], reset: [], backoff_s: null }];
    },
  });
  srv.blockUpgrades = true;
  const { c, log } = client(srv.url, { backoffMs: 1, backoffMaxMs: 1 });
  t.after(() => (c.close(), srv.stop()));
  await c.subscribe(7);
  await c.subscribe(9);
  await until(() => log.changed.length == 1, 8000, 'a change after the errors');
  assert.deepEqual(log.denied, [[9n, 4]]);
  assert.deepEqual(srv.polls[2].cursors, { 7: 3 }, 'denied namespace no longer polled');
  assert.notEqual(srv.polls[0].token, srv.polls[1].token, 'a new token after 401');
  assert.ok(at[3] - at[2] >= 990, `Retry-After 1 s honoured (${at[3] - at[2]} ms)`);
  assert.ok(log.states.some((s) => s.startsWith('backoff:HTTP 401')), log.states.join());
});

test('a silent server is given up after 2 heartbeats and the client reconnects', async (t) => {
  const srv = await scripted({
    heartbeatMs: 100n,
    onFrame: (conn, f) => conn == 0 && f.type == 'ping', // connection 0 never answers PING
  });
  const { c } = client(srv.url);
  t.after(() => (c.close(), srv.stop()));
  const t0 = Date.now();
  await until(() => srv.frames.some((f) => f.conn == 1 && f.type == 'hello'), 3000, 'reconnect');
  // Pings every 100 ms; nothing heard for more than 200 ms closes: well under 3 s even here.
  assert.ok(Date.now() - t0 >= 200, `${Date.now() - t0} ms`);
});

test('unsubscribe sends UNSUBSCRIBE, and the namespace is not resubscribed after a reconnect', async (t) => {
  const srv = await scripted({
    onFrame: (conn, f, send) => {
      if (f.type == 'subscribe') send({ type: 'changed', pairs: f.pairs.map(([ns, c]) => [ns, c + 1n]) });
    },
  });
  const { c, log } = client(srv.url);
  t.after(() => (c.close(), srv.stop()));
  await c.subscribe(7);
  await until(() => c.state == 'connected' && log.changed.length == 1, 5000, 'first change');
  await c.subscribe(8, 10);
  await until(() => log.changed.length == 2, 5000, 'second change');
  c.unsubscribe(7);
  await until(() => srv.frames.some((f) => f.type == 'unsubscribe'), 5000, 'UNSUBSCRIBE');
  assert.deepEqual(srv.frames.find((f) => f.type == 'unsubscribe').ns, [7n]);
  assert.deepEqual(c.cursors(), new Map([[8n, 11n]]));
  srv.conns[0].terminate();
  await until(() => srv.frames.some((f) => f.conn == 1 && f.type == 'subscribe'), 5000, 'resubscribe');
  assert.deepEqual(srv.frames.filter((f) => f.conn == 1 && f.type == 'subscribe').flatMap((f) => f.pairs), [[8n, 11n]]);
});
