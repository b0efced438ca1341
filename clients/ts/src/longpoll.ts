/**
 * The JSON of HTTP long-poll (proto/PROTOCOL.md "Transports", C16): the request body and the
 * 200 reply. Numbers above 2^53 travel as decimal strings both ways; here they are `bigint`.
 * Checked against proto/corpus/longpoll.json, like the Rust client's `longpoll` module.
 */
import type { Pair } from './codec.js';

/** The answer to one poll. */
export interface PollReply {
  /** `(ns, sjid)`: namespaces whose latest SJID is above the cursor sent. */
  changes: Pair[];
  /** Namespaces whose cursor the server cannot vouch for. */
  reset: bigint[];
  /** Seconds to wait before the next poll, when the server asks for it. */
  backoffS: number | null;
}

const MAX_JSON_INT = 2n ** 53n;
const U64_MAX = 2n ** 64n - 1n;

/** A JSON number up to 2^53, or a decimal string for anything larger. */
const num = (n: bigint) => (n > MAX_JSON_INT ? `"${n}"` : `${n}`);

/** The request body `{"token","cursors","timeout_s"}`. */
export function requestBody(token: string, cursors: Iterable<Pair>, timeoutS: number): string {
  const c: string[] = [];
  for (const [ns, s] of cursors) c.push(`"${ns}":${num(s)}`);
  return `{"token":${JSON.stringify(token)},"cursors":{${c.join()}},"timeout_s":${timeoutS}}`;
}

/** A u64 given as a JSON integer or a decimal string; throws otherwise. */
export function u64(v: unknown): bigint {
  let n: bigint | undefined;
  if (typeof v == 'number' && Number.isSafeInteger(v) && v >= 0) n = BigInt(v);
  else if (typeof v == 'string' && /^\+?\d+$/.test(v)) n = BigInt(v);
  if (n === undefined || n > U64_MAX) throw new TypeError('long-poll reply: bad number ' + JSON.stringify(v));
  return n;
}

/** Parses a 200 reply body; throws `TypeError` on a malformed one. */
export function parseReply(text: string): PollReply {
  const v = JSON.parse(text),
    arr = (k: string): unknown[] => {
      if (!Array.isArray(v?.[k])) throw new TypeError('long-poll reply: no ' + k + ' array');
      return v[k];
    },
    b = v.backoff_s;
  return {
    changes: arr('changes').map((c: any) => [u64(c?.ns), u64(c?.sjid)]),
    reset: arr('reset').map(u64),
    backoffS: Number.isSafeInteger(b) && b >= 0 ? b : null,
  };
}
