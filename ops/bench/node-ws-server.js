#!/usr/bin/env node
// A Node `ws` fan-out server: the peer that `herald-loadgen fanout --paths node-ws` (and
// ops/bench/compare.sh) runs Herald's workload against. It is what a team would write in an
// afternoon instead of running Herald: one process, one event loop, the `ws` library with its
// defaults (no permessage-deflate), a map from namespace to the set of subscribed sockets.
//
//   node ops/bench/node-ws-server.js [--host 127.0.0.1] [--port 0]
//
// Prints one line when it listens, then nothing unless something fails:
//
//   node-ws-server ready port=<port> pid=<pid> ws=<ws version> node=<node version>
//
// and stops on SIGTERM or SIGINT (or SIGKILL; it keeps no state on disk).
//
// Wire format (one HTTP/1.1 listener for both):
//
//   WebSocket, any path (e.g. ws://127.0.0.1:<port>/), text frames of JSON:
//     client → server  {"sub":[7,9]}              subscribe this socket to namespaces 7 and 9
//     server → client  {"subscribed":[7,9]}       the subscriptions are live (sent after they are)
//     server → client  {"ns":7,"sjid":42}         namespace 7 changed at SJID 42, one frame per change
//     Anything else from a client is ignored. A socket's subscriptions end when it closes.
//
//   HTTP, as Herald's admin publish endpoint:
//     POST /v1/publish  {"changes":[{"ns":7,"sjid":42}, …]}
//       → 202 {"accepted":<n>} once every change's frame has been handed to every subscriber's
//         socket (ws.send; the kernel or ws's own queue has it), or 400 {"error":…}.
//     GET /health → 200 ok
//
// SJIDs are integers below 2^53 (the load generator uses µs since the Unix epoch), so JSON numbers
// carry them exactly.
'use strict';

const http = require('node:http');
const { WebSocketServer } = require('ws');
const wsVersion = require('ws/package.json').version;

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const host = arg('host', '127.0.0.1');
const port = Number(arg('port', '0'));

/** namespace → Set of subscribed sockets. */
const subscribers = new Map();
/** socket → namespaces it subscribed to (for cleanup on close). */
const subscriptions = new WeakMap();
const TEXT = { binary: false };

function subscribe(ws, namespaces) {
  let mine = subscriptions.get(ws);
  if (!mine) {
    mine = [];
    subscriptions.set(ws, mine);
  }
  for (const ns of namespaces) {
    let set = subscribers.get(ns);
    if (!set) {
      set = new Set();
      subscribers.set(ns, set);
    }
    if (!set.has(ws)) {
      set.add(ws);
      mine.push(ns);
    }
  }
}

function unsubscribeAll(ws) {
  const mine = subscriptions.get(ws);
  if (!mine) return;
  for (const ns of mine) {
    const set = subscribers.get(ns);
    if (set) {
      set.delete(ws);
      if (set.size === 0) subscribers.delete(ns);
    }
  }
  subscriptions.delete(ws);
}

/** Sends each change to its namespace's subscribers; returns how many changes it took. */
function fanOut(changes) {
  let accepted = 0;
  for (const c of changes) {
    if (!Number.isSafeInteger(c.ns) || !Number.isSafeInteger(c.sjid)) {
      throw new Error('each change needs integer ns and sjid');
    }
    accepted += 1;
    const set = subscribers.get(c.ns);
    if (!set) continue;
    // Encode once per change, write the same bytes to every subscriber.
    const frame = Buffer.from(`{"ns":${c.ns},"sjid":${c.sjid}}`);
    for (const ws of set) {
      if (ws.readyState === ws.OPEN) ws.send(frame, TEXT);
    }
  }
  return accepted;
}

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/health') {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 2 });
    res.end('ok');
    return;
  }
  if (req.method !== 'POST' || req.url !== '/v1/publish') {
    reply(res, 404, { error: 'not found' });
    return;
  }
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    let accepted;
    try {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      if (!Array.isArray(body.changes)) throw new Error('body needs a "changes" array');
      accepted = fanOut(body.changes);
    } catch (e) {
      reply(res, 400, { error: String(e.message || e) });
      return;
    }
    reply(res, 202, { accepted });
  });
});
server.keepAliveTimeout = 0; // the load generator keeps one publishing connection for the whole run

const wss = new WebSocketServer({ server });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    let msg;
    try {
      msg = JSON.parse(data.toString('utf8'));
    } catch {
      return;
    }
    if (!Array.isArray(msg.sub)) return;
    const namespaces = msg.sub.filter(Number.isSafeInteger);
    subscribe(ws, namespaces);
    ws.send(JSON.stringify({ subscribed: namespaces }));
  });
  ws.on('close', () => unsubscribeAll(ws));
  ws.on('error', () => unsubscribeAll(ws));
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}

server.listen(port, host, () => {
  const actual = server.address().port;
  process.stdout.write(
    `node-ws-server ready port=${actual} pid=${process.pid} ws=${wsVersion} node=${process.version}\n`,
  );
});
