#!/usr/bin/env node
// Writes frames.json and longpoll.json beside this script: the conformance corpus that the Rust
// codec (proto/tests/corpus.rs, client/tests/longpoll_corpus.rs) and the TypeScript client
// (clients/ts/test/unit/corpus.test.mjs) must all agree with. See README.md here for the format.
// The bytes are built by the tiny encoder below, written from PROTOCOL.md and independent of both
// codecs under test. Run: node proto/corpus/generate.mjs (the output is committed).
import { writeFileSync } from 'node:fs';

const U64_MAX = (1n << 64n) - 1n;

/** Minimal LEB128 of a bigint. */
function v(n) {
  n = BigInt(n);
  const out = [];
  for (; n > 127n; n >>= 7n) out.push(Number(n & 127n) | 128);
  out.push(Number(n));
  return out;
}
const hex = (bytes) => Buffer.from(bytes).toString('hex');
const str = (s) => [...v(Buffer.byteLength(s)), ...Buffer.from(s)];
const s = (n) => BigInt(n).toString();

const frames = [];
/** A valid frame: `bytes` must decode to `frame`, and (unless `encode` is false) encode back. */
function ok(name, dir, bytes, frame, extra = {}) {
  frames.push({ name, dir, hex: hex(bytes), ...extra, frame });
}
/** Bytes the `dir` decoder must refuse with `error`. */
function bad(name, dir, bytes, error, extra = {}) {
  frames.push({ name, dir, hex: hex(bytes), ...extra, error });
}

// --- every client frame type --------------------------------------------------------------
ok('hello v1 short token', 'client', [0x01, ...v(1), ...str('abc')], { type: 'hello', version: '1', token: 'abc' });
ok('hello empty token', 'client', [0x01, 1, 0], { type: 'hello', version: '1', token: '' });
ok('hello version 2', 'client', [0x01, 2, ...str('t')], { type: 'hello', version: '2', token: 't' });
ok('hello utf-8 token', 'client', [0x01, 1, ...str('héllo ✓ 𝄞')], { type: 'hello', version: '1', token: 'héllo ✓ 𝄞' });
ok('hello jwt-like token', 'client', [0x01, 1, ...str('eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1In0.c2ln')], {
  type: 'hello', version: '1', token: 'eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1In0.c2ln',
});
{
  const tok = 'a'.repeat(200);
  ok('hello 200-byte token (2-byte length)', 'client', [0x01, 1, ...str(tok)], { type: 'hello', version: '1', token: tok });
}
ok('subscribe empty', 'client', [0x02, 0], { type: 'subscribe', pairs: [] });
ok('subscribe one', 'client', [0x02, 1, 7, 0], { type: 'subscribe', pairs: [['7', '0']] });
ok('subscribe two', 'client', [0x02, 2, 7, 42, ...v(300), ...v(1 << 20)], {
  type: 'subscribe', pairs: [['7', '42'], ['300', s(1 << 20)]],
});
ok('subscribe repeated ns kept in order', 'client', [0x02, 3, 5, 1, 6, 2, 5, 3], {
  type: 'subscribe', pairs: [['5', '1'], ['6', '2'], ['5', '3']],
});
ok('subscribe u64 max', 'client', [0x02, 1, ...v(U64_MAX), ...v(U64_MAX)], {
  type: 'subscribe', pairs: [[s(U64_MAX), s(U64_MAX)]],
});
ok('subscribe 2^53+1 cursor', 'client', [0x02, 1, 1, ...v((1n << 53n) + 1n)], {
  type: 'subscribe', pairs: [['1', s((1n << 53n) + 1n)]],
});
{
  // 204 worst-case pairs (20 bytes each) is the most one SUBSCRIBE can carry: 1+2+4080 bytes.
  const pairs = Array.from({ length: 204 }, (_, i) => [U64_MAX - BigInt(i), U64_MAX]);
  const bytes = [0x02, ...v(204), ...pairs.flatMap(([a, b]) => [...v(a), ...v(b)])];
  ok('subscribe 204 worst-case pairs', 'client', bytes, { type: 'subscribe', pairs: pairs.map(([a, b]) => [s(a), s(b)]) });
}
ok('unsubscribe empty', 'client', [0x03, 0], { type: 'unsubscribe', ns: [] });
ok('unsubscribe two', 'client', [0x03, 2, 7, ...v(128)], { type: 'unsubscribe', ns: ['7', '128'] });
ok('unsubscribe u64 max', 'client', [0x03, 1, ...v(U64_MAX)], { type: 'unsubscribe', ns: [s(U64_MAX)] });
ok('client ping 0', 'client', [0x04, 0], { type: 'ping', nonce: '0' });
ok('client ping 127', 'client', [0x04, 127], { type: 'ping', nonce: '127' });
ok('client ping 128', 'client', [0x04, 0x80, 0x01], { type: 'ping', nonce: '128' });
ok('client pong u64 max', 'client', [0x05, ...v(U64_MAX)], { type: 'pong', nonce: s(U64_MAX) });
ok('client pong 2^63', 'client', [0x05, ...v(1n << 63n)], { type: 'pong', nonce: s(1n << 63n) });

// --- every server frame type --------------------------------------------------------------
ok('welcome 8-byte session id', 'server', [0x81, 1, ...v(60000), ...v(10000), 8, 1, 2, 3, 4, 5, 6, 7, 8], {
  type: 'welcome', version: '1', heartbeat_ms: '60000', max_subscriptions: '10000', session_id: '0102030405060708',
});
ok('welcome empty session id', 'server', [0x81, 1, ...v(15000), 0, 0], {
  type: 'welcome', version: '1', heartbeat_ms: '15000', max_subscriptions: '0', session_id: '',
});
ok('welcome 15 min heartbeat, long session id', 'server', [0x81, 1, ...v(900000), ...v(U64_MAX), 16, ...Array(16).fill(0xab)], {
  type: 'welcome', version: '1', heartbeat_ms: '900000', max_subscriptions: s(U64_MAX), session_id: 'ab'.repeat(16),
});
ok('changed empty', 'server', [0x82, 0], { type: 'changed', pairs: [] });
ok('changed one', 'server', [0x82, 1, 7, 42], { type: 'changed', pairs: [['7', '42']] });
ok('changed three', 'server', [0x82, 3, 1, 1, 2, ...v(16384), 3, ...v(2097151)], {
  type: 'changed', pairs: [['1', '1'], ['2', '16384'], ['3', '2097151']],
});
ok('changed big sjid above 2^53', 'server', [0x82, 1, 9, ...v((1n << 53n) + 1n)], {
  type: 'changed', pairs: [['9', s((1n << 53n) + 1n)]],
});
ok('changed u64 max', 'server', [0x82, 1, ...v(U64_MAX), ...v(U64_MAX)], { type: 'changed', pairs: [[s(U64_MAX), s(U64_MAX)]] });
ok('denied forbidden_namespace', 'server', [0x83, 4, 2, 7, 8], { type: 'denied', code: '4', ns: ['7', '8'] });
ok('denied too_many_subscriptions', 'server', [0x83, 5, 1, ...v(1000)], { type: 'denied', code: '5', ns: ['1000'] });
ok('denied unknown code', 'server', [0x83, ...v(999), 0], { type: 'denied', code: '999', ns: [] });
ok('reset one', 'server', [0x84, 1, 7], { type: 'reset', ns: ['7'] });
ok('reset empty', 'server', [0x84, 0], { type: 'reset', ns: [] });
ok('reset u64 max', 'server', [0x84, 2, 0, ...v(U64_MAX)], { type: 'reset', ns: ['0', s(U64_MAX)] });
ok('goaway draining', 'server', [0x85, 100, ...v(1500)], { type: 'goaway', code: '100', reconnect_after_ms: '1500' });
ok('goaway overloaded 0 ms', 'server', [0x85, 101, 0], { type: 'goaway', code: '101', reconnect_after_ms: '0' });
ok('goaway slow_consumer', 'server', [0x85, 102, ...v(4999)], { type: 'goaway', code: '102', reconnect_after_ms: '4999' });
ok('goaway token_expired', 'server', [0x85, 103, ...v(1)], { type: 'goaway', code: '103', reconnect_after_ms: '1' });
ok('error bad_frame', 'server', [0x86, 1, ...str('bad frame')], { type: 'error', code: '1', message: 'bad frame' });
ok('error unauthorized empty message', 'server', [0x86, 3, 0], { type: 'error', code: '3', message: '' });
ok('error utf-8 message', 'server', [0x86, 2, ...str('versión ✗')], { type: 'error', code: '2', message: 'versión ✗' });
ok('server ping', 'server', [0x04, ...v(99)], { type: 'ping', nonce: '99' });
// REFRESH (0x10, extension C17): a client frame; the server decoder refuses it like HELLO.
ok('refresh', 'client', [0x10, ...str('eyJ.a.b')], { type: 'refresh', token: 'eyJ.a.b' });
ok('refresh empty token', 'client', [0x10, 0], { type: 'refresh', token: '' });
bad('refresh without token', 'client', [0x10], 'truncated_varint');
bad('refresh sent by a server', 'server', [0x10, 0], 'wrong_direction');
ok('server pong u64 max', 'server', [0x05, ...v(U64_MAX)], { type: 'pong', nonce: s(U64_MAX) });

// --- varint edges -------------------------------------------------------------------------
for (const n of [0n, 1n, 127n, 128n, 255n, 16383n, 16384n, 2097151n, 2097152n, (1n << 32n) - 1n, 1n << 32n, (1n << 53n) - 1n, 1n << 53n, (1n << 56n), (1n << 63n) - 1n, 1n << 63n, U64_MAX]) {
  ok(`varint ${n} (${v(n).length} bytes)`, 'server', [0x04, ...v(n)], { type: 'ping', nonce: s(n) });
}
ok('non-minimal varint 1 in 4 bytes (decode only)', 'server', [0x04, 0x81, 0x80, 0x80, 0x00], { type: 'ping', nonce: '1' }, { encode: false });
ok('non-minimal zero in 10 bytes (decode only)', 'client', [0x04, ...Array(9).fill(0x80), 0x00], { type: 'ping', nonce: '0' }, { encode: false });
ok('non-minimal count (decode only)', 'server', [0x84, 0x81, 0x00, 7], { type: 'reset', ns: ['7'] }, { encode: false });
ok('non-minimal string length (decode only)', 'client', [0x01, 1, 0x82, 0x00, 0x68, 0x69], { type: 'hello', version: '1', token: 'hi' }, { encode: false });
bad('varint 10th byte 0x02 (past 2^64)', 'server', [0x04, ...Array(9).fill(0xff), 0x02], 'varint_overflow');
bad('varint 10th byte 0x7f', 'client', [0x04, ...Array(9).fill(0xff), 0x7f], 'varint_overflow');
bad('varint 11 bytes', 'server', [0x04, ...Array(10).fill(0x80), 0x00], 'varint_overflow');
bad('varint 10 continuation bytes, then end', 'client', [0x04, ...Array(10).fill(0x80)], 'varint_overflow');
bad('varint truncated (1 continuation byte)', 'server', [0x04, 0x80], 'truncated_varint');
bad('varint truncated (9 continuation bytes)', 'client', [0x04, ...Array(9).fill(0xff)], 'truncated_varint');
bad('ping without nonce', 'server', [0x04], 'truncated_varint');
bad('hello without version', 'client', [0x01], 'truncated_varint');
bad('changed pair missing its sjid', 'server', [0x82, 1, 7, 0x80], 'truncated_varint');

// --- frame limits -------------------------------------------------------------------------
{
  const tok = 'a'.repeat(4092); // 1 type + 1 version + 2 length + 4092 = 4096
  ok('hello of exactly 4096 bytes', 'client', [0x01, 1, ...v(4092)], { type: 'hello', version: '1', token: tok }, { fill: { byte: '61', count: 4092 } });
  bad('hello of 4097 bytes', 'client', [0x01, 1, ...v(4093)], 'oversized', { fill: { byte: '61', count: 4093 } });
  bad('4097 bytes of junk: size checked first', 'client', [0xff], 'oversized', { fill: { byte: 'ff', count: 4096 } });
  // 1 type + 1 code + 3 length + 65531 = 65536
  ok('error of exactly 65536 bytes', 'server', [0x86, 1, ...v(65531)], { type: 'error', code: '1', message: 'a'.repeat(65531) }, { fill: { byte: '61', count: 65531 } });
  bad('error of 65537 bytes', 'server', [0x86, 1, ...v(65532)], 'oversized', { fill: { byte: '61', count: 65532 } });
  ok('server decoder takes a 5000-byte frame a client may not send', 'server', [0x86, 1, ...v(4995)], { type: 'error', code: '1', message: 'a'.repeat(4995) }, { fill: { byte: '61', count: 4995 } });
}

// --- other error cases --------------------------------------------------------------------
bad('empty client frame', 'client', [], 'empty');
bad('empty server frame', 'server', [], 'empty');
for (const t of [0x00, 0x06, 0x7f, 0x80, 0x87, 0xff]) {
  bad(`client unknown type 0x${t.toString(16)}`, 'client', [t, 0], 'unknown_type');
  bad(`server unknown type 0x${t.toString(16)}`, 'server', [t, 0], 'unknown_type');
}
for (const t of [0x81, 0x82, 0x83, 0x84, 0x85, 0x86]) bad(`server type 0x${t.toString(16)} from a client`, 'client', [t, 0], 'wrong_direction');
for (const t of [0x01, 0x02, 0x03]) bad(`client type 0x0${t} from a server`, 'server', [t, 0], 'wrong_direction');
bad('hello token length past frame', 'client', [0x01, 1, 5, 0x61, 0x62], 'length_past_frame');
bad('welcome session id length past frame', 'server', [0x81, 1, 1, 1, 9, 1, 2], 'length_past_frame');
bad('error message length past frame', 'server', [0x86, 1, ...v(1n << 40n), 0x61], 'length_past_frame');
bad('subscribe count past frame', 'client', [0x02, 3, 1, 1, 2, 2], 'length_past_frame');
bad('subscribe huge count', 'client', [0x02, ...v(U64_MAX)], 'length_past_frame');
bad('unsubscribe count past frame', 'client', [0x03, 2, 7], 'length_past_frame');
bad('changed count past frame', 'server', [0x82, 2, 1, 1], 'length_past_frame');
bad('reset count past frame', 'server', [0x84, 5, 1, 2], 'length_past_frame');
bad('denied count past frame', 'server', [0x83, 4, 2, 7], 'length_past_frame');
bad('hello token invalid utf-8', 'client', [0x01, 1, 2, 0xc3, 0x28], 'invalid_utf8');
bad('hello token lone continuation byte', 'client', [0x01, 1, 1, 0x80], 'invalid_utf8');
bad('hello token utf-16 surrogate', 'client', [0x01, 1, 3, 0xed, 0xa0, 0x80], 'invalid_utf8');
bad('error message invalid utf-8', 'server', [0x86, 1, 1, 0xff], 'invalid_utf8');
bad('hello trailing byte', 'client', [0x01, 1, 0, 0], 'trailing_bytes');
bad('ping trailing byte', 'client', [0x04, 1, 2], 'trailing_bytes');
bad('subscribe trailing byte', 'client', [0x02, 1, 1, 1, 9], 'trailing_bytes');
bad('unsubscribe trailing byte', 'client', [0x03, 0, 0], 'trailing_bytes');
bad('welcome trailing byte', 'server', [0x81, 1, 1, 1, 0, 0], 'trailing_bytes');
bad('changed trailing byte', 'server', [0x82, 1, 1, 1, 1], 'trailing_bytes');
bad('goaway trailing byte', 'server', [0x85, 100, 5, 5], 'trailing_bytes');
bad('pong trailing byte', 'server', [0x05, 1, 1], 'trailing_bytes');

// --- long-poll JSON -----------------------------------------------------------------------
const requests = [
  { name: 'small numbers', token: 't', cursors: [['7', '42']], timeout_s: 30, json: { token: 't', cursors: { 7: 42 }, timeout_s: 30 } },
  { name: 'zero cursor and several namespaces', token: 'abc.def.ghi', cursors: [['1', '0'], ['2', '5']], timeout_s: 480, json: { token: 'abc.def.ghi', cursors: { 1: 0, 2: 5 }, timeout_s: 480 } },
  { name: '2^53 stays a number', token: 't', cursors: [['1', s(1n << 53n)]], timeout_s: 30, json: { token: 't', cursors: { 1: 9007199254740992 }, timeout_s: 30 } },
  { name: '2^53+1 is a decimal string', token: 't', cursors: [['1', s((1n << 53n) + 1n)]], timeout_s: 30, json: { token: 't', cursors: { 1: '9007199254740993' }, timeout_s: 30 } },
  { name: 'u64 max namespace and cursor', token: 't', cursors: [[s(U64_MAX), s(U64_MAX)]], timeout_s: 60, json: { token: 't', cursors: { [s(U64_MAX)]: s(U64_MAX) }, timeout_s: 60 } },
  { name: 'token needing JSON escapes', token: 'a"b\\c\n', cursors: [['3', '3']], timeout_s: 30, json: { token: 'a"b\\c\n', cursors: { 3: 3 }, timeout_s: 30 } },
];
const replies = [
  { name: 'empty reply (timeout)', body: '{"changes": [], "reset": [], "backoff_s": null}', reply: { changes: [], reset: [], backoff_s: null } },
  { name: 'one change', body: '{"changes":[{"ns":7,"sjid":42}],"reset":[],"backoff_s":null}', reply: { changes: [['7', '42']], reset: [], backoff_s: null } },
  { name: 'changes, reset and backoff', body: '{"changes":[{"ns":1,"sjid":2},{"ns":3,"sjid":4}],"reset":[5,6],"backoff_s":7}', reply: { changes: [['1', '2'], ['3', '4']], reset: ['5', '6'], backoff_s: 7 } },
  { name: 'big numbers as decimal strings', body: '{"changes":[{"ns":"18446744073709551615","sjid":"9007199254740993"}],"reset":["18446744073709551614"],"backoff_s":null}', reply: { changes: [[s(U64_MAX), '9007199254740993']], reset: [s(U64_MAX - 1n)], backoff_s: null } },
  { name: 'small numbers as strings too', body: '{"changes":[{"ns":"7","sjid":"8"}],"reset":[],"backoff_s":null}', reply: { changes: [['7', '8']], reset: [], backoff_s: null } },
  { name: 'unknown fields ignored', body: '{"changes":[{"ns":1,"sjid":1,"x":true}],"reset":[],"backoff_s":2,"extra":{"a":1}}', reply: { changes: [['1', '1']], reset: [], backoff_s: 2 } },
  { name: 'missing backoff_s means none', body: '{"changes":[],"reset":[]}', reply: { changes: [], reset: [], backoff_s: null } },
  { name: 'backoff_s not an integer means none', body: '{"changes":[],"reset":[],"backoff_s":"5"}', reply: { changes: [], reset: [], backoff_s: null } },
  { name: 'negative backoff_s means none', body: '{"changes":[],"reset":[],"backoff_s":-1}', reply: { changes: [], reset: [], backoff_s: null } },
  { name: 'no changes array', body: '{"reset":[],"backoff_s":null}', error: true },
  { name: 'no reset array', body: '{"changes":[],"backoff_s":null}', error: true },
  { name: 'changes not an array', body: '{"changes":{},"reset":[],"backoff_s":null}', error: true },
  { name: 'change without sjid', body: '{"changes":[{"ns":1}],"reset":[],"backoff_s":null}', error: true },
  { name: 'negative sjid', body: '{"changes":[{"ns":1,"sjid":-1}],"reset":[],"backoff_s":null}', error: true },
  { name: 'fractional ns', body: '{"changes":[{"ns":1.5,"sjid":1}],"reset":[],"backoff_s":null}', error: true },
  { name: 'string past 2^64', body: '{"changes":[{"ns":"18446744073709551616","sjid":1}],"reset":[],"backoff_s":null}', error: true },
  { name: 'non-digit string', body: '{"changes":[{"ns":"7a","sjid":1}],"reset":[],"backoff_s":null}', error: true },
  { name: 'reset entry not a number', body: '{"changes":[],"reset":[null],"backoff_s":null}', error: true },
  { name: 'not JSON', body: 'changes', error: true },
  { name: 'truncated JSON', body: '{"changes":[', error: true },
];

const here = new URL('.', import.meta.url);
writeFileSync(new URL('frames.json', here), JSON.stringify({ version: 1, cases: frames }, null, 1) + '\n');
writeFileSync(new URL('longpoll.json', here), JSON.stringify({ version: 1, requests, replies }, null, 1) + '\n');
console.log(`wrote ${frames.length} frame cases, ${requests.length} request and ${replies.length} reply cases`);
