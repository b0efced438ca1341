// The end-to-end scenarios with the client running in headless Debian Chromium (driven by
// playwright-core, no browser download), loading the built bundle from the front's origin, against
// real herald-gateway processes. Chromium: $CHROMIUM, else /usr/bin/chromium.
import { before, after } from 'node:test';
import { chromium } from 'playwright-core';
import { scenarios } from './scenarios.mjs';

let browser;
before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    // --no-sandbox: CI runs as root. LocalNetworkAccessChecks: every address here is loopback.
    args: ['--no-sandbox', '--disable-features=LocalNetworkAccessChecks'],
  });
});
after(() => browser?.close());

scenarios(
  'chromium',
  async (front, tokenFn) => {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.exposeFunction('heraldToken', () => tokenFn());
    await page.goto(front.origin + '/');
    await page.waitForFunction(() => window.ready, null, { timeout: 10000 });
    return {
      start: (o) => page.evaluate((o) => window.start(o), o),
      subscribe: (ns, cursor) => page.evaluate(([n, c]) => window.client.subscribe(BigInt(n), BigInt(c)), [ns, cursor]),
      snapshot: async () => {
        if (errors.length) throw new Error('page errors: ' + errors.join('; '));
        return page.evaluate(() => window.snapshot());
      },
      close: async () => {
        await page.evaluate(() => window.client?.close()).catch(() => {});
        await page.close();
      },
    };
  },
  { direct: false },
);
