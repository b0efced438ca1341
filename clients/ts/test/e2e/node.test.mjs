// The end-to-end scenarios with the client running in this Node process (Node 20 has no global
// WebSocket, so the client loads the `ws` package) against real herald-gateway processes.
import { HeraldClient } from '../../dist/index.js';
import { scenarios } from './scenarios.mjs';

const str = (m) => Object.fromEntries([...m].map(([n, s]) => [String(n), String(s)]));

scenarios(
  'node',
  async (front, tokenFn) => {
    let c;
    const log = { changed: [], reset: [], denied: [], states: [] };
    return {
      start: async (o) => {
        c = new HeraldClient({ ...o, token: async () => tokenFn() });
        c.on('changed', (n, s) => log.changed.push([String(n), String(s)]));
        c.on('reset', (n) => log.reset.push(String(n)));
        c.on('denied', (n, code) => log.denied.push([String(n), code]));
        c.on('state', (s, d) => log.states.push(d ? `${s}:${d}` : s));
      },
      subscribe: (ns, cursor) => c.subscribe(BigInt(ns), BigInt(cursor)),
      snapshot: async () => ({ ...structuredClone(log), state: c.state, cursors: str(c.cursors()) }),
      close: async () => c?.close(),
    };
  },
  { direct: true },
);
