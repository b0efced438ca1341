// The end-to-end scenarios, run once with the client in Node (node.test.mjs) and once in headless
// Chromium (browser.test.mjs) against real herald-gateway processes. A "driver" hides where the
// client runs: start(opts), subscribe(ns, cursor), snapshot(), close().
import test, { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Front, Gateway, Keys, tempDir, until, sleep, bundle } from './harness.mjs';

/** The page the browser driver loads from the front: the built bundle, driven by the test. */
export const PAGE = `<!doctype html><meta charset="utf-8"><title>herald e2e</title>
<script type="module">
import { HeraldClient } from '/herald.min.js';
const log = (window.log = { changed: [], reset: [], denied: [], states: [] });
window.start = (o) => {
  const c = (window.client = new HeraldClient({ ...o, token: () => window.heraldToken() }));
  c.on('changed', (n, s) => log.changed.push([String(n), String(s)]));
  c.on('reset', (n) => log.reset.push(String(n)));
  c.on('denied', (n, code) => log.denied.push([String(n), code]));
  c.on('state', (s, d) => log.states.push(d ? s + ':' + d : s));
};
window.snapshot = () => ({ ...log, state: window.client.state,
  cursors: Object.fromEntries([...window.client.cursors()].map(([n, s]) => [String(n), String(s)])) });
window.ready = true;
</script>`;

/** The pages the front serves. */
export const pages = () => ({ '/': ['text/html', PAGE], '/herald.min.js': ['text/javascript', bundle()] });

/**
 * Registers every scenario under `label`. `makeDriver(front, tokenFn)` returns a driver whose
 * client gets its tokens from `tokenFn` (counted here); `direct` says whether the client may
 * reach a gateway without the front (Node can; the page must stay on the front's origin).
 */
export function scenarios(label, makeDriver, { direct }) {
  let tmp, keys;
  before(() => {
    tmp = tempDir();
    keys = new Keys(tmp.dir);
  });
  after(() => tmp.cleanup());

  /** Starts gateways named `names`, a front over them and a driver; stops everything after. */
  async function setup(t, names, gwArgs = {}) {
    const gws = [];
    for (const n of names) gws.push(await new Gateway(tmp.dir, `${label}-${n}`, keys, gwArgs[n]).start());
    const front = await new Front(gws, pages()).start();
    const tokens = { calls: 0, next: () => keys.token() };
    const d = await makeDriver(front, () => (tokens.calls++, tokens.next()));
    t.after(async () => {
      await d.close();
      await front.stop();
      for (const g of gws) await g.kill();
    });
    const url = (i, viaFront) => (viaFront || !direct ? front.url(i) : gws[i].url);
    return { gws, front, d, tokens, url };
  }

  /** Waits until the client's cursors include `want` ({ns: sjid} as strings). */
  const cursorsReach = (d, want, ms, what) =>
    until(async () => {
      const s = await d.snapshot();
      return Object.entries(want).every(([ns, v]) => s.cursors[ns] === v) && s;
    }, ms, `${what}: cursors ${JSON.stringify(want)}`);

  test(`${label}: subscribe, CHANGED, RESET, big SJIDs exact`, async (t) => {
    const { gws, d, url } = await setup(t, ['a']);
    await gws[0].publish([[1, 5]]);
    await d.start({ url: [url(0)] });
    await d.subscribe('1', '0');
    await d.subscribe('2', '0');
    await d.subscribe('4', '10'); // never published: latest 0 < 10, so RESET
    await cursorsReach(d, { 1: '5' }, 5000, 'CHANGED for a cursor behind');
    const big = (1n << 53n) + 5n;
    await gws[0].publish([[1, 6], [2, big]]);
    const s = await cursorsReach(d, { 1: '6', 2: String(big) }, 3000, 'live CHANGED');
    assert.deepEqual(s.changed, [['1', '5'], ['1', '6'], ['2', String(big)]]);
    assert.deepEqual(s.reset, ['4']);
    assert.equal(s.cursors['4'], undefined, 'RESET ended the subscription');
    assert.equal(s.state, 'connected');
  });

  test(`${label}: gateway restart, changes published while the client is cut off`, async (t) => {
    const { gws, front, d, tokens, url } = await setup(t, ['a']);
    await d.start({ url: [url(0, true)], backoffMs: 100, backoffMaxMs: 800 });
    for (const ns of ['10', '11', '12']) await d.subscribe(ns, '0');
    await gws[0].publish([[10, 1]]);
    await cursorsReach(d, { 10: '1' }, 5000, 'first CHANGED');
    const tokensBefore = tokens.calls;
    front.down = true;
    front.cut();
    await gws[0].publish([[12, 4]]); // only in the journal when the gateway dies
    await gws[0].kill(); // SIGKILL
    await gws[0].start(); // same data dir and ports
    await gws[0].publish([[10, 2], [10, 3], [11, 7]]);
    await sleep(300);
    front.down = false;
    const s = await cursorsReach(d, { 10: '3', 11: '7', 12: '4' }, 10000, 'catch-up after the restart');
    assert.ok(tokens.calls > tokensBefore, 'a fresh token for the new connection');
    assert.deepEqual(s.changed.filter(([ns]) => ns == '10').at(-1), ['10', '3']);
    assert.ok(s.states.filter((x) => x == 'connected').length >= 2, s.states.join());
    await gws[0].publish([[11, 8]]);
    await cursorsReach(d, { 11: '8' }, 3000, 'live again');
  });

  test(`${label}: GOAWAY on drain moves the client to a second gateway`, async (t) => {
    const { gws, d, url } = await setup(t, ['a', 'b'], { a: ['--drain-s', '1'] });
    await d.start({ url: [url(0), url(1)], backoffMs: 100, backoffMaxMs: 800 });
    await d.subscribe('20', '0');
    for (const g of gws) await g.publish([[20, 1]]); // both journals, as a shared upstream would
    await cursorsReach(d, { 20: '1' }, 5000, 'CHANGED on the first gateway');
    const t0 = Date.now();
    gws[0].sigterm();
    const exit = await Promise.race([gws[0].exited, sleep(10000).then(() => 'still running')]);
    assert.deepEqual(exit, { code: 0, sig: null }, 'drained gateway exits cleanly');
    await gws[1].publish([[20, 2]]);
    const s = await cursorsReach(d, { 20: '2' }, 6000, 'CHANGED on the second gateway');
    // Drain 1 s + reconnect_after_ms (100-1000 ms) + margin for this noisy 2-core machine.
    assert.ok(Date.now() - t0 < 7000, `${Date.now() - t0} ms`);
    assert.ok(s.states.includes('backoff:close 4100'), `closed with 4000+draining: ${s.states.join()}`);
  });

  test(`${label}: WebSocket blocked, long-poll takes over, WebSocket comes back`, async (t) => {
    const { gws, front, d, tokens, url } = await setup(t, ['a']);
    front.blockWs = true;
    await d.start({ url: [url(0, true)], backoffMs: 100, backoffMaxMs: 800, wsRetryMs: 4000 });
    await d.subscribe('30', '0');
    await gws[0].publish([[30, 1]]);
    await cursorsReach(d, { 30: '1' }, 5000, 'CHANGED by long-poll');
    await sleep(200); // the next poll is now waiting at the gateway
    const t0 = Date.now();
    await gws[0].publish([[30, 2]]);
    await cursorsReach(d, { 30: '2' }, 3000, 'a waiting poll answered');
    assert.ok(Date.now() - t0 < 2000, `poll answered after ${Date.now() - t0} ms`);
    let s = await d.snapshot();
    assert.ok(s.states.includes('polling') && !s.states.includes('connected'), s.states.join());
    assert.ok(tokens.calls >= 3, `token provider called per poll (${tokens.calls})`);
    front.blockWs = false;
    await until(async () => (await d.snapshot()).state == 'connected', 10000, 'back on WebSocket');
    await gws[0].publish([[30, 3]]);
    s = await cursorsReach(d, { 30: '3' }, 3000, 'CHANGED over WebSocket');
    assert.deepEqual(s.changed.map(([, v]) => v), ['1', '2', '3']);
  });

  test(`${label}: token refresh, the provider's fresh token replaces a refused or expiring one`, async (t) => {
    const { gws, d, tokens, url } = await setup(t, ['a']);
    let n = 0;
    // 1st token: expired past the 30 s leeway, refused at HELLO (ERROR unauthorized, close 4003).
    // 2nd: expired 27 s ago, so accepted within the leeway, and the gateway sends
    // GOAWAY(token_expired) (close 4103) about 3 s later. 3rd and later: valid for an hour. Each
    // time the client must ask the provider again and use what it gets.
    tokens.next = () => keys.token({ ttlS: [-120, -27][n++] ?? 3600 });
    await d.start({ url: [url(0)], backoffMs: 100, backoffMaxMs: 800 });
    await d.subscribe('40', '0');
    await gws[0].publish([[40, 1]]);
    await cursorsReach(d, { 40: '1' }, 8000, 'CHANGED with the second token');
    await until(async () => (await d.snapshot()).states.includes('backoff:close 4103'), 10000, 'GOAWAY token_expired');
    await until(async () => (await d.snapshot()).state == 'connected', 5000, 'reconnected with a fresh token');
    await gws[0].publish([[40, 2]]);
    const s = await cursorsReach(d, { 40: '2' }, 3000, 'CHANGED with the third token');
    assert.equal(tokens.calls, 3, `token calls: ${s.states.join()}`);
    assert.ok(s.states.indexOf('backoff:close 4003') < s.states.indexOf('backoff:close 4103'), s.states.join());
  });
}
