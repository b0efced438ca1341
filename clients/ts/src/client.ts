/**
 * {@link HeraldClient}: one managed Herald session with the same contract as the Rust
 * `herald-client`. WebSocket first; HTTP long-poll (via `fetch`) when WebSocket cannot connect,
 * with WebSocket tried again every `wsRetryMs`. Reconnects with full-jitter backoff, honours
 * GOAWAY's `reconnect_after_ms` and long-poll's `backoff_s`/`Retry-After`, resubscribes every
 * namespace with its cursor after each reconnect, pings at WELCOME's `heartbeat_ms`, and asks the
 * token provider for a token before every connection and every poll.
 */
import { decodeServer, encodeClient, MAX_PAIRS_PER_CLIENT_FRAME, type ClientFrame, type Pair } from './codec.js';
import { parseReply, requestBody, u64 } from './longpoll.js';

/** Where the client is: `connected` (WebSocket session), `polling` (long-poll answering). */
export type State = 'connecting' | 'connected' | 'polling' | 'backoff' | 'closed';

/** Where the application keeps its cursors. */
export interface CursorStorage {
  /** The cursor for `ns` (0 or nothing: never synced). Used by `subscribe(ns)` without a cursor. */
  load(ns: bigint): bigint | null | undefined | Promise<bigint | null | undefined>;
  /** Called when a CHANGED moves the cursor of `ns` up to `sjid`. */
  save(ns: bigint, sjid: bigint): unknown;
}

/** Settings of a {@link HeraldClient}. */
export interface HeraldOptions {
  /**
   * The gateway: `https://host[:port][/prefix]` (or `http:`, `ws:`, `wss:`). A list is tried in
   * turn, moving on after each session or failed attempt; a function is called before each one.
   */
  url: string | string[] | (() => string);
  /** The JWT; called before every WebSocket connection and every long-poll request. */
  token: () => string | Promise<string>;
  /** Cursor storage; without it the application passes cursors to `subscribe`. */
  storage?: CursorStorage;
  /** Cap of the first reconnect delay, ms (default 500); doubles per failure. */
  backoffMs?: number;
  /** Largest reconnect delay cap, ms (default 30000). */
  backoffMaxMs?: number;
  /** `timeout_s` of each long-poll (30–480, default 30). */
  pollTimeoutS?: number;
  /** While long-polling, try WebSocket again after this long, ms (default 60000). */
  wsRetryMs?: number;
  /** Fall back to long-poll when WebSocket cannot connect (default true). */
  longPoll?: boolean;
  /** A WebSocket constructor; default the global one, else (Node 20) the `ws` package. */
  WebSocket?: unknown;
}

/** Event handlers, by event name. */
export interface HeraldEvents {
  /** Namespace `ns` changed at least up to `sjid`: pull it from the metaserver. */
  changed: (ns: bigint, sjid: bigint) => void;
  /** The cursor of `ns` cannot be vouched for: resync from scratch, then subscribe again. */
  reset: (ns: bigint) => void;
  /** The server refused `ns` (4 `forbidden_namespace`, 5 `too_many_subscriptions`). */
  denied: (ns: bigint, code: number) => void;
  /** The state changed; `detail` says why (a close code, an HTTP status, an error). */
  state: (state: State, detail?: string) => void;
}

type Handlers = { [K in keyof HeraldEvents]: Set<HeraldEvents[K]> };

/** Full jitter: uniform in `[0, min(max, initial * 2^attempt)]` ms. */
export const backoffDelay = (attempt: number, initial: number, max: number, rnd = Math.random()) =>
  rnd * Math.min(max, initial * 2 ** attempt);

/** A session that lived this long after WELCOME resets the backoff. */
const STABLE_MS = 10000;

/** A Herald client. Starts connecting at once; `close()` stops everything. */
export class HeraldClient {
  /** The current state. */
  state: State = 'connecting';
  private subs = new Map<bigint, bigint>();
  private h: Handlers = { changed: new Set(), reset: new Set(), denied: new Set(), state: new Set() };
  private closed = false;
  private timers = new Set<ReturnType<typeof setTimeout>>();
  /** Ends the current sleep early (close). */
  private wake?: () => void;
  /** Ends the running long-poll (subscriptions changed, close). */
  private kick?: () => void;
  /** Sends a frame on a live (welcomed) WebSocket. */
  private live?: (f: ClientFrame) => void;
  private ws?: any;
  private attempt = 0;
  private idx = 0;
  private poll = false;
  private wsRetryAt = 0;

  constructor(private o: HeraldOptions) {
    this.run();
  }

  /** Adds a handler; returns a function that removes it. */
  on<K extends keyof HeraldEvents>(event: K, fn: HeraldEvents[K]): () => void {
    const s = this.h[event] as Set<HeraldEvents[K]>;
    s.add(fn);
    return () => s.delete(fn);
  }

  /**
   * Subscribes to `ns` from `cursor` (default: the storage's cursor, else 0). Subscribing again
   * replaces the cursor and asks the server for a fresh CHANGED if the cursor is behind.
   */
  async subscribe(ns: bigint | number, cursor?: bigint | number): Promise<void> {
    const n = BigInt(ns),
      c = BigInt(cursor ?? (await this.o.storage?.load(n)) ?? 0);
    this.subs.set(n, c);
    this.send([[n, c]]);
    this.kick?.();
  }

  /** Stops following `ns`. */
  unsubscribe(ns: bigint | number): void {
    const n = BigInt(ns);
    this.subs.delete(n);
    this.live?.({ type: 'unsubscribe', ns: [n] });
    this.kick?.();
  }

  /**
   * Sends a fresh token from the provider on the live WebSocket session (REFRESH, extension C17
   * of proto/PROTOCOL.md), so the session outlives the old token's `exp` without reconnecting.
   * Call it before the token expires (jittered, so clients do not refresh together). While
   * long-polling or offline it does nothing: every poll and connection takes a fresh token.
   */
  async refresh(): Promise<void> {
    const tx = this.live;
    if (tx) {
      const token = await this.o.token();
      if (this.live == tx) tx({ type: 'refresh', token });
    }
  }

  /** The cursors of live subscriptions (the highest SJID notified, or the cursor given). */
  cursors(): Map<bigint, bigint> {
    return new Map(this.subs);
  }

  /** Closes the connection and stops every timer; the client cannot be used again. */
  close(reason?: string): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.ws?.close(1000);
    } catch {}
    this.kick?.();
    this.wake?.();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.set('closed', reason);
  }

  private emit<K extends keyof HeraldEvents>(k: K, ...a: Parameters<HeraldEvents[K]>) {
    // A throwing handler must not break the session: its error is rethrown on its own.
    for (const f of this.h[k])
      try {
        (f as (...x: unknown[]) => void)(...a);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
  }

  private set(s: State, detail?: string) {
    if (s != this.state || detail) this.emit('state', (this.state = s), detail);
  }

  private timer(ms: number, f: () => void, repeat?: boolean) {
    const t = (repeat ? setInterval : setTimeout)(() => {
      if (!repeat) this.timers.delete(t);
      f();
    }, ms);
    this.timers.add(t);
    return () => {
      clearTimeout(t);
      this.timers.delete(t);
    };
  }

  private sleep(ms: number) {
    return new Promise<void>((r) => {
      const stop = this.timer(ms, (this.wake = () => (stop(), r())));
    });
  }

  private base(): string {
    const u = this.o.url;
    return (typeof u == 'function' ? u() : Array.isArray(u) ? u[this.idx % u.length] : u).replace(/\/$/, '');
  }

  private send(pairs: Pair[]) {
    for (let i = 0; i < pairs.length; i += MAX_PAIRS_PER_CLIENT_FRAME)
      this.live?.({ type: 'subscribe', pairs: pairs.slice(i, i + MAX_PAIRS_PER_CLIENT_FRAME) });
  }

  private changed(pairs: Pair[]) {
    for (const [ns, s] of pairs) {
      const c = this.subs.get(ns);
      if (c !== undefined && s > c) {
        this.subs.set(ns, s);
        this.o.storage?.save(ns, s);
        this.emit('changed', ns, s);
      }
    }
  }

  private drop(ns: bigint[], code?: number) {
    for (const n of ns)
      if (this.subs.delete(n)) code ? this.emit('denied', n, code) : this.emit('reset', n);
  }

  /** The connect loop: one session or poll per turn, then the delay it asked for or a backoff. */
  private async run() {
    await 0;
    while (!this.closed) {
      let delay: number | undefined, why: string | undefined;
      try {
        delay = await (this.poll && Date.now() < this.wsRetryAt ? this.pollOnce() : this.session());
      } catch (e) {
        why = String(e);
      }
      if (this.closed) return;
      if (delay === undefined) delay = backoffDelay(this.attempt++, this.o.backoffMs ?? 500, this.o.backoffMaxMs ?? 30000);
      if (delay > 0) {
        this.set('backoff', why);
        await this.sleep(delay);
      }
    }
  }

  /**
   * One WebSocket session, until it closes. Resolves with the delay before the next attempt
   * (GOAWAY's, or 0 to long-poll at once), or undefined for a backoff.
   */
  private async session(): Promise<number | undefined> {
    this.set('connecting');
    const token = await this.o.token(),
      WS: any = this.o.WebSocket ?? globalThis.WebSocket ?? (await import('ws')).default;
    if (this.closed) return;
    const ws = (this.ws = new WS(this.base().replace(/^http/, 'ws') + '/v1/connect', 'herald.v1')),
      tx = (f: ClientFrame) => ws.send(encodeClient(f));
    ws.binaryType = 'arraybuffer';
    let opened = false,
      welcomed = 0,
      after: number | undefined,
      fatal: string | undefined,
      rx = 0,
      nonce = 0n,
      stopHb = () => {};
    return new Promise((done) => {
      ws.onopen = () => {
        opened = true;
        tx({ type: 'hello', version: 1n, token });
      };
      ws.onerror = () => {};
      ws.onmessage = (e: { data: ArrayBuffer }) => {
        rx = Date.now();
        let f;
        try {
          f = decodeServer(new Uint8Array(e.data));
        } catch {
          return ws.close();
        }
        switch (f.type) {
          case 'welcome': {
            const ms = Number(f.heartbeatMs);
            welcomed = rx;
            this.poll = false;
            stopHb = this.timer(
              ms,
              () => (Date.now() - rx > 2 * ms ? (ws.terminate ?? ws.close).call(ws) : tx({ type: 'ping', nonce: ++nonce })),
              true,
            );
            this.live = tx;
            this.set('connected');
            this.send([...this.subs]);
            break;
          }
          case 'changed':
            this.changed(f.pairs);
            break;
          case 'reset':
            this.drop(f.ns);
            break;
          case 'denied':
            this.drop(f.ns, Number(f.code));
            break;
          case 'goaway':
            after = Number(f.reconnectAfterMs);
            break;
          case 'error':
            if (f.code < 3n) fatal = `error ${f.code}: ${f.message}`;
            break;
          case 'ping':
            tx({ type: 'pong', nonce: f.nonce });
        }
      };
      ws.onclose = (e: { code: number }) => {
        stopHb();
        this.live = this.ws = undefined;
        this.idx++;
        if (welcomed && Date.now() - welcomed > STABLE_MS) this.attempt = 0;
        const c = e.code;
        if (this.closed) return done(0);
        if (fatal || (c >= 4000 && c < 4100 && c != 4003)) {
          this.close(fatal ?? `close ${c}`);
          return done(0);
        }
        if (!opened && this.o.longPoll !== false) {
          this.poll = true;
          this.wsRetryAt = Date.now() + (this.o.wsRetryMs ?? 60000);
          return done(0);
        }
        this.set('backoff', `close ${c}`);
        done(after);
      };
    });
  }

  /** One long-poll request. Resolves with the delay before the next one, or undefined for a backoff. */
  private async pollOnce(): Promise<number | undefined> {
    const ctl = new AbortController(),
      timeout = this.o.pollTimeoutS ?? 30;
    let timedOut = false;
    this.kick = () => ctl.abort();
    const stop = this.timer(timeout * 1100 + 10000, () => ((timedOut = true), ctl.abort())),
      // Time to try WebSocket again: give up this poll (the gateway forgets a cancelled one).
      stopRetry = this.timer(this.wsRetryAt - Date.now(), () => ctl.abort());
    try {
      // Nothing to poll for: wait for a subscription (kick) or the next WebSocket try.
      if (!this.subs.size) return await new Promise((r) => (ctl.signal.onabort = () => r(0)));
      const token = await this.o.token(),
        res = await fetch(this.base().replace(/^ws/, 'http') + '/v1/longpoll', {
          method: 'POST',
          body: requestBody(token, this.subs, timeout),
          signal: ctl.signal,
        }),
        text = await res.text();
      if (res.ok) {
        const r = parseReply(text);
        this.attempt = 0;
        this.set('polling');
        this.changed(r.changes);
        this.drop(r.reset);
        return (r.backoffS ?? 0) * 1000;
      }
      const retry = +(res.headers.get('retry-after') ?? 0);
      if (res.status == 403) this.drop(JSON.parse(text).namespaces.map(u64), 4);
      this.set('backoff', `HTTP ${res.status} ${text}`);
      return res.status == 403 ? 0 : retry ? retry * 1000 : undefined;
    } catch (e) {
      if (ctl.signal.aborted && !timedOut) return 0;
      // No answer at all: the gateway is down or unreachable, not just WebSocket. Try WebSocket next.
      this.poll = false;
      this.idx++;
      throw e;
    } finally {
      stop();
      stopRetry();
      this.kick = undefined;
    }
  }
}
