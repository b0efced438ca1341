/**
 * `@herald/client`: a Herald (protocol v1) client for browsers and Node 20+.
 * See README.md for the contract and examples.
 */
export { HeraldClient, backoffDelay } from './client.js';
export type { CursorStorage, HeraldEvents, HeraldOptions, State } from './client.js';
export * from './codec.js';
export { parseReply, requestBody } from './longpoll.js';
export type { PollReply } from './longpoll.js';
