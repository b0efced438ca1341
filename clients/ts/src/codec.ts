/**
 * The Herald v1 frame codec (proto/PROTOCOL.md "Frames"): one type byte, then unsigned LEB128
 * varints, `bytes` and `str`. Every integer is a `bigint`, so SJIDs and namespaces up to 2^64-1
 * stay exact. Decoding takes exactly one whole frame and throws {@link FrameError} on bad input,
 * with the same error kinds as the Rust `herald-proto` codec (checked by proto/corpus/frames.json).
 */

/** Frame type bytes. */
export const HELLO = 0x01,
  SUBSCRIBE = 0x02,
  UNSUBSCRIBE = 0x03,
  PING = 0x04,
  PONG = 0x05,
  /** A fresh token for a live session (v1 extension C17 of proto/PROTOCOL.md). */
  REFRESH = 0x10,
  WELCOME = 0x81,
  CHANGED = 0x82,
  DENIED = 0x83,
  RESET = 0x84,
  GOAWAY = 0x85,
  ERROR = 0x86;

/** Largest client frame in bytes (type byte included). */
export const MAX_CLIENT_FRAME = 4096;
/** Largest server frame in bytes. */
export const MAX_SERVER_FRAME = 65536;
/** Most `(ns, cursor)` pairs one SUBSCRIBE can carry in the worst case (20 bytes a pair). */
export const MAX_PAIRS_PER_CLIENT_FRAME = ((MAX_CLIENT_FRAME - 11) / 20) | 0;

/** A `(namespace, sjid)` or `(namespace, cursor)` pair. */
export type Pair = [bigint, bigint];

/** A frame a client sends. */
export type ClientFrame =
  | { type: 'hello'; version: bigint; token: string }
  | { type: 'subscribe'; pairs: Pair[] }
  | { type: 'unsubscribe'; ns: bigint[] }
  | { type: 'ping' | 'pong'; nonce: bigint }
  | { type: 'refresh'; token: string };

/** A frame the server sends. */
export type ServerFrame =
  | { type: 'welcome'; version: bigint; heartbeatMs: bigint; maxSubscriptions: bigint; sessionId: Uint8Array }
  | { type: 'changed'; pairs: Pair[] }
  | { type: 'denied'; code: bigint; ns: bigint[] }
  | { type: 'reset'; ns: bigint[] }
  | { type: 'goaway'; code: bigint; reconnectAfterMs: bigint }
  | { type: 'error'; code: bigint; message: string }
  | { type: 'ping' | 'pong'; nonce: bigint };

/** Why bytes are not a valid frame; `kind` names the case as the conformance corpus does. */
export type FrameErrorKind =
  | 'empty'
  | 'unknown_type'
  | 'wrong_direction'
  | 'truncated_varint'
  | 'varint_overflow'
  | 'length_past_frame'
  | 'invalid_utf8'
  | 'trailing_bytes'
  | 'oversized';

/** A frame that could not be decoded. */
export class FrameError extends Error {
  constructor(readonly kind: FrameErrorKind) {
    super('bad frame: ' + kind);
  }
}

const fail = (k: FrameErrorKind): never => {
  throw new FrameError(k);
};

/** A read position over one frame. */
class Reader {
  p = 1;
  constructor(readonly b: Uint8Array) {}

  /** One varint: at most 10 bytes, the tenth carrying only bit 63; non-minimal forms accepted. */
  v(): bigint {
    let v = 0n;
    for (let i = 0; ; i++) {
      if (i == 10) fail('varint_overflow');
      if (this.p >= this.b.length) fail('truncated_varint');
      const c = this.b[this.p++];
      if (i == 9 && (c & 127) > 1) fail('varint_overflow');
      v |= BigInt(c & 127) << BigInt(7 * i);
      if (c < 128) return v;
    }
  }

  /** A count of items at least `min` bytes each, refused when the frame cannot hold them. */
  n(min: number): number {
    const n = this.v();
    if (n > BigInt(((this.b.length - this.p) / min) | 0)) fail('length_past_frame');
    return Number(n);
  }

  bytes(): Uint8Array {
    const n = this.v();
    if (n > BigInt(this.b.length - this.p)) fail('length_past_frame');
    return this.b.subarray(this.p, (this.p += Number(n)));
  }

  str(): string {
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(this.bytes());
    } catch (e) {
      throw e instanceof FrameError ? e : new FrameError('invalid_utf8');
    }
  }

  pairs(): Pair[] {
    const out: Pair[] = [];
    for (let n = this.n(2); n--; ) out.push([this.v(), this.v()]);
    return out;
  }

  list(): bigint[] {
    const out: bigint[] = [];
    for (let n = this.n(1); n--; ) out.push(this.v());
    return out;
  }

  end<T>(f: T): T {
    if (this.p < this.b.length) fail('trailing_bytes');
    return f;
  }
}

function open(b: Uint8Array, max: number): Reader {
  if (b.length > max) fail('oversized');
  if (!b.length) fail('empty');
  return new Reader(b);
}

/** Decodes one whole server frame (at most 65536 bytes). */
export function decodeServer(b: Uint8Array): ServerFrame {
  const r = open(b, MAX_SERVER_FRAME),
    t = b[0];
  switch (t) {
    case WELCOME:
      return r.end({ type: 'welcome', version: r.v(), heartbeatMs: r.v(), maxSubscriptions: r.v(), sessionId: r.bytes().slice() });
    case CHANGED:
      return r.end({ type: 'changed', pairs: r.pairs() });
    case DENIED:
      return r.end({ type: 'denied', code: r.v(), ns: r.list() });
    case RESET:
      return r.end({ type: 'reset', ns: r.list() });
    case GOAWAY:
      return r.end({ type: 'goaway', code: r.v(), reconnectAfterMs: r.v() });
    case ERROR:
      return r.end({ type: 'error', code: r.v(), message: r.str() });
    case PING:
    case PONG:
      return r.end({ type: t == PING ? 'ping' : 'pong', nonce: r.v() });
  }
  return fail((t && t <= UNSUBSCRIBE) || t == REFRESH ? 'wrong_direction' : 'unknown_type');
}

/** Decodes one whole client frame (at most 4096 bytes); the gateway's side, for tests and tools. */
export function decodeClient(b: Uint8Array): ClientFrame {
  const r = open(b, MAX_CLIENT_FRAME),
    t = b[0];
  switch (t) {
    case HELLO:
      return r.end({ type: 'hello', version: r.v(), token: r.str() });
    case SUBSCRIBE:
      return r.end({ type: 'subscribe', pairs: r.pairs() });
    case UNSUBSCRIBE:
      return r.end({ type: 'unsubscribe', ns: r.list() });
    case REFRESH:
      return r.end({ type: 'refresh', token: r.str() });
    case PING:
    case PONG:
      return r.end({ type: t == PING ? 'ping' : 'pong', nonce: r.v() });
  }
  return fail(t >= WELCOME && t <= ERROR ? 'wrong_direction' : 'unknown_type');
}

/** A growing byte buffer. */
class Writer {
  o: number[] = [];
  constructor(t: number) {
    this.o.push(t);
  }
  v(v: bigint | number): this {
    v = BigInt(v);
    for (; v > 127n; v >>= 7n) this.o.push(Number(v & 127n) | 128);
    this.o.push(Number(v));
    return this;
  }
  bytes(b: Uint8Array): this {
    this.v(b.length).o.push(...b);
    return this;
  }
  pairs(p: Pair[]): this {
    this.v(p.length);
    for (const [a, b] of p) this.v(a).v(b);
    return this;
  }
  list(l: bigint[]): this {
    this.v(l.length);
    for (const a of l) this.v(a);
    return this;
  }
  done(): Uint8Array {
    return new Uint8Array(this.o);
  }
}

const utf8 = (s: string) => new TextEncoder().encode(s);

/** Encodes a client frame. Callers keep SUBSCRIBE within {@link MAX_PAIRS_PER_CLIENT_FRAME}. */
export function encodeClient(f: ClientFrame): Uint8Array {
  switch (f.type) {
    case 'hello':
      return new Writer(HELLO).v(f.version).bytes(utf8(f.token)).done();
    case 'subscribe':
      return new Writer(SUBSCRIBE).pairs(f.pairs).done();
    case 'unsubscribe':
      return new Writer(UNSUBSCRIBE).list(f.ns).done();
    case 'refresh':
      return new Writer(REFRESH).bytes(utf8(f.token)).done();
    default:
      return new Writer(f.type == 'ping' ? PING : PONG).v(f.nonce).done();
  }
}

/** Encodes a server frame (for tests and tools; the client never sends these). */
export function encodeServer(f: ServerFrame): Uint8Array {
  switch (f.type) {
    case 'welcome':
      return new Writer(WELCOME).v(f.version).v(f.heartbeatMs).v(f.maxSubscriptions).bytes(f.sessionId).done();
    case 'changed':
      return new Writer(CHANGED).pairs(f.pairs).done();
    case 'denied':
      return new Writer(DENIED).v(f.code).list(f.ns).done();
    case 'reset':
      return new Writer(RESET).list(f.ns).done();
    case 'goaway':
      return new Writer(GOAWAY).v(f.code).v(f.reconnectAfterMs).done();
    case 'error':
      return new Writer(ERROR).v(f.code).bytes(utf8(f.message)).done();
    default:
      return new Writer(f.type == 'ping' ? PING : PONG).v(f.nonce).done();
  }
}
