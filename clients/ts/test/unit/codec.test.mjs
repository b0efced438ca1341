// The frame codec and long-poll JSON against the shared corpus (proto/corpus), plus randomized
// round-trips. Runs against the built dist/ (npm run build first).
import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  decodeClient, decodeServer, encodeClient, encodeServer, FrameError, parseReply, requestBody,
  MAX_PAIRS_PER_CLIENT_FRAME, MAX_CLIENT_FRAME,
} from '../../dist/index.js';

const corpusDir = new URL('../../../../proto/corpus/', import.meta.url);
const frames = JSON.parse(readFileSync(new URL('frames.json', corpusDir), 'utf8'));
const longpoll = JSON.parse(readFileSync(new URL('longpoll.json', corpusDir), 'utf8'));

const hex = (h) => Uint8Array.from(Buffer.from(h, 'hex'));
function bytes(c) {
  const b = hex(c.hex);
  if (!c.fill) return b;
  const out = new Uint8Array(b.length + c.fill.count);
  out.set(b);
  out.fill(parseInt(c.fill.byte, 16), b.length);
  return out;
}
const B = (s) => BigInt(s);
/** The corpus' JSON form of a frame → this codec's object form. */
function fromCorpus(f) {
  switch (f.type) {
    case 'hello': return { type: 'hello', version: B(f.version), token: f.token };
    case 'refresh': return { type: 'refresh', token: f.token };
    case 'subscribe': case 'changed': return { type: f.type, pairs: f.pairs.map(([a, b]) => [B(a), B(b)]) };
    case 'unsubscribe': case 'reset': return { type: f.type, ns: f.ns.map(B) };
    case 'ping': case 'pong': return { type: f.type, nonce: B(f.nonce) };
    case 'welcome': return { type: 'welcome', version: B(f.version), heartbeatMs: B(f.heartbeat_ms), maxSubscriptions: B(f.max_subscriptions), sessionId: hex(f.session_id) };
    case 'denied': return { type: 'denied', code: B(f.code), ns: f.ns.map(B) };
    case 'goaway': return { type: 'goaway', code: B(f.code), reconnectAfterMs: B(f.reconnect_after_ms) };
    case 'error': return { type: 'error', code: B(f.code), message: f.message };
  }
  throw new Error('unknown corpus frame type ' + f.type);
}

test('frame corpus: every case decodes (or fails) as written, and encodes back', () => {
  assert.ok(frames.cases.length >= 100, `corpus has ${frames.cases.length} cases`);
  let encoded = 0;
  for (const c of frames.cases) {
    const b = bytes(c);
    const [decode, encode] = c.dir == 'client' ? [decodeClient, encodeClient] : [decodeServer, encodeServer];
    if (c.frame) {
      const want = fromCorpus(c.frame);
      assert.deepEqual(decode(b), want, c.name);
      if (c.encode !== false) {
        assert.deepEqual(encode(want), b, c.name + ': encoding');
        encoded++;
      }
    } else {
      assert.throws(() => decode(b), (e) => e instanceof FrameError && e.kind == c.error, c.name + ': expected ' + c.error);
    }
  }
  assert.ok(encoded > 50);
});

test('long-poll corpus: request bodies', () => {
  for (const c of longpoll.requests) {
    const body = requestBody(c.token, c.cursors.map(([a, b]) => [B(a), B(b)]), c.timeout_s);
    assert.deepEqual(JSON.parse(body), c.json, c.name);
  }
});

test('long-poll corpus: replies', () => {
  for (const c of longpoll.replies) {
    if (c.error) {
      assert.throws(() => parseReply(c.body), c.name);
      continue;
    }
    const r = parseReply(c.body);
    assert.deepEqual(r, {
      changes: c.reply.changes.map(([a, b]) => [B(a), B(b)]),
      reset: c.reply.reset.map(B),
      backoffS: c.reply.backoff_s,
    }, c.name);
  }
});

/** A small seeded PRNG (mulberry32), so a failure can be replayed from the printed seed. */
function rng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
/** A u64 biased towards the varint length boundaries. */
function u64(r) {
  const bits = BigInt(Math.floor(r() * 65));
  const top = bits == 0n ? 0n : 1n << (bits - 1n);
  const low = BigInt(Math.floor(r() * 2 ** 32)) * BigInt(Math.floor(r() * 2 ** 32));
  return bits == 0n ? 0n : top | (low % top);
}
const list = (r, n) => Array.from({ length: Math.floor(r() * n) }, () => u64(r));
const str = (r) => Array.from({ length: Math.floor(r() * 20) }, () => String.fromCodePoint([0x61, 0xe9, 0x2713, 0x1d11e][Math.floor(r() * 4)])).join('');

test('randomized round-trips of every frame type', () => {
  const seed = Date.now() % 100000;
  const r = rng(seed);
  for (let i = 0; i < 3000; i++) {
    const cf = [
      { type: 'hello', version: u64(r), token: str(r) },
      { type: 'subscribe', pairs: list(r, 10).map((n) => [n, u64(r)]) },
      { type: 'unsubscribe', ns: list(r, 10) },
      { type: 'ping', nonce: u64(r) },
      { type: 'pong', nonce: u64(r) },
    ][i % 5];
    assert.deepEqual(decodeClient(encodeClient(cf)), cf, `seed ${seed}, client frame ${i}`);
    const sf = [
      { type: 'welcome', version: u64(r), heartbeatMs: u64(r), maxSubscriptions: u64(r), sessionId: Uint8Array.from(list(r, 12), Number) },
      { type: 'changed', pairs: list(r, 10).map((n) => [n, u64(r)]) },
      { type: 'denied', code: u64(r), ns: list(r, 10) },
      { type: 'reset', ns: list(r, 10) },
      { type: 'goaway', code: u64(r), reconnectAfterMs: u64(r) },
      { type: 'error', code: u64(r), message: str(r) },
      { type: 'ping', nonce: u64(r) },
      { type: 'pong', nonce: u64(r) },
    ][i % 8];
    if (sf.type == 'welcome') sf.sessionId = sf.sessionId.map((x) => x & 255);
    const enc = encodeServer(sf);
    assert.deepEqual(decodeServer(enc), sf, `seed ${seed}, server frame ${i}`);
    // Any strict prefix of a frame is refused, never misread.
    if (enc.length > 1) {
      const cut = 1 + Math.floor(r() * (enc.length - 1));
      assert.throws(() => decodeServer(enc.subarray(0, cut)), FrameError, `seed ${seed}, prefix ${cut} of ${sf.type}`);
    }
  }
});

test('random bytes never crash the decoders: a frame or a FrameError', () => {
  const seed = Date.now() % 100000;
  const r = rng(seed);
  for (let i = 0; i < 5000; i++) {
    const b = Uint8Array.from({ length: Math.floor(r() * 24) }, () => Math.floor(r() * 256));
    if (b.length) b[0] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86][Math.floor(r() * 11)];
    for (const d of [decodeClient, decodeServer]) {
      try {
        const f = d(b);
        // A decoded frame re-encodes to a frame that decodes to the same thing.
        const enc = d == decodeClient ? encodeClient(f) : encodeServer(f);
        assert.deepEqual(d(enc), f, `seed ${seed}`);
      } catch (e) {
        assert.ok(e instanceof FrameError, `seed ${seed}: ${e}`);
      }
    }
  }
});

test('a worst-case full SUBSCRIBE fits the client frame limit', () => {
  const max = (1n << 64n) - 1n;
  const f = encodeClient({ type: 'subscribe', pairs: Array.from({ length: MAX_PAIRS_PER_CLIENT_FRAME }, () => [max, max]) });
  assert.ok(f.length <= MAX_CLIENT_FRAME, `${f.length}`);
  assert.equal(MAX_PAIRS_PER_CLIENT_FRAME, 204);
});
