// Drives Debian's chromium (headless, through playwright-core) against a running `labctl
// console` for tests/console.rs, which brought the lab up and decides what is right: this
// script only reads what the page shows, takes screenshots and prints one JSON document.
//
// node console.mjs '<json>' where json = { phase: "export", url, token, shots } runs the export
// from the jobs page's button and reads the drivers table; without a phase, json = { url, token,
// shots, topic_message: {partition, offset}, bad_partition, bad_offset, log_container,
// kill: ["docker", "kill", "<azurite container>"] } reads every page.
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const args = JSON.parse(process.argv[2]);
const out = {};
const shot = async (page, name) => page.screenshot({ path: join(args.shots, `${name}.png`), fullPage: true });

// The flags the machine's probe found necessary: no sandbox as root, and none of chromium's own
// network traffic, which this machine's closed network refuses.
const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'labctl-chromium-')), {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const page = browser.pages()[0] || await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));

  if (args.phase === 'export') {
    await page.goto(`${args.url}#token=${args.token}`);
    await page.waitForSelector('.hop[data-hop="lake"]', { timeout: 20000 });
    await page.goto(`${args.url}#/jobs`);
    await page.click('#actions button[data-action="export"]', { timeout: 20000 });
    await page.waitForFunction(() => /\(exit -?\d+|refused|failed/.test(document.querySelector('#action-output').textContent), null, { timeout: 600000 });
    out.action_output = await page.textContent('#action-output');
    // The export's figures reach the drivers table with the next refresh after it ended.
    await page.waitForSelector('#drivers tbody td[data-rows]', { timeout: 20000 });
    out.drivers = await page.$$eval('#drivers tbody tr', (rs) => rs.map((r) => ({ id: r.dataset.driver, cells: [...r.cells].map((c) => c.textContent),
      rows: r.querySelector('[data-rows]') && Number(r.querySelector('[data-rows]').dataset.rows),
      version: r.querySelector('[data-version]') && Number(r.querySelector('[data-version]').dataset.version) })));
    await shot(page, 'jobs-export');
  } else {

  // --- pipeline: every hop with its light and count -------------------------------------------
  await page.goto(`${args.url}#token=${args.token}`);
  await page.waitForSelector('.hop[data-hop="lake"]', { timeout: 20000 });
  out.token_left_address_bar = !page.url().includes('token=');
  out.hops = await page.$$eval('.hop', (hs) => hs.map((h) => ({ id: h.dataset.hop, health: h.dataset.health, count: h.dataset.count === undefined ? null : Number(h.dataset.count), text: h.innerText })));
  out.sparks = await page.$$eval('.spark', (s) => s.map((x) => x.dataset.series));
  await shot(page, 'pipeline');

  // --- topic browser: the test's message, then bad partitions and offsets in the URL ------------
  const m = args.topic_message;
  await page.goto(`${args.url}#/topic?partition=${m.partition}&before=${m.offset + 1}&limit=5`);
  await page.waitForSelector(`.msg[data-offset="${m.offset}"]`, { timeout: 20000 });
  out.message = await page.$eval(`.msg[data-offset="${m.offset}"]`, (e) => ({ key: e.querySelector('.key').textContent, value: e.querySelector('.value').textContent, head: e.querySelector('.head').innerText }));
  // A partition's rate needs two refreshes within its span.
  await page.waitForSelector('#partitions tbody td[data-rate]', { timeout: 20000 });
  out.partition_rows = await page.$$eval('#partitions tbody tr', (rs) => rs.map((r) => [...r.cells].map((c) => c.textContent)));
  await shot(page, 'topic');
  await page.goto(`${args.url}#/topic?partition=${args.bad_partition}`);
  await page.waitForFunction(() => document.querySelector('#browse-info').classList.contains('error'), null, { timeout: 20000 });
  out.bad_partition = await page.textContent('#browse-info');
  await page.goto(`${args.url}#/topic?partition=${m.partition}&before=${args.bad_offset}`);
  await page.waitForFunction((o) => document.querySelector('#browse-info').textContent.includes(String(o)), args.bad_offset, { timeout: 20000 });
  out.bad_offset = await page.textContent('#browse-info');

  // --- jobs: the lab job's facts and the rejected message ---------------------------------------
  await page.goto(`${args.url}#/jobs`);
  await page.waitForSelector('#job-facts', { timeout: 20000 });
  await page.waitForSelector('#rejects tbody tr td', { timeout: 20000 });
  out.job = await page.$$eval('#job-facts tr', (rs) => Object.fromEntries(rs.map((r) => [r.cells[0].textContent, r.cells[1].textContent])));
  out.rejects = await page.$$eval('#rejects tbody tr', (rs) => rs.map((r) => [...r.cells].map((c) => c.textContent)));
  out.drivers = await page.$$eval('#drivers tbody tr', (rs) => rs.map((r) => [...r.cells].map((c) => c.textContent)));
  out.actions = await page.$$eval('#actions button', (bs) => bs.map((b) => b.dataset.action));
  // An action without the token, from the page itself: refused.
  out.no_token = await page.evaluate(async () => {
    const r = await fetch('/api/actions/cancel-flink', { method: 'POST' });
    return { status: r.status, body: await r.json() };
  });
  await shot(page, 'jobs');

  // --- data: the chart with a hover, the lake's days --------------------------------------------
  await page.goto(`${args.url}#/data`);
  await page.waitForSelector('#chart svg polyline.avg', { timeout: 20000 });
  const box = await page.locator('#chart svg').boundingBox();
  await page.mouse.move(box.x + box.width * 0.6, box.y + box.height / 2);
  await page.waitForSelector('.tip:not([hidden])', { timeout: 5000 });
  out.tip = await page.textContent('.tip');
  out.lake_days = await page.$$eval('#lake-days tbody tr', (rs) => rs.map((r) => [...r.cells].map((c) => c.textContent)));
  await shot(page, 'data');

  // --- services: containers and a log tail ------------------------------------------------------
  await page.goto(`${args.url}#/services`);
  await page.waitForSelector('#services tbody tr[data-container]', { timeout: 20000 });
  out.services = await page.$$eval('#services tbody tr', (rs) => rs.map((r) => ({ name: r.dataset.container, cells: [...r.cells].map((c) => c.textContent) })));
  await page.click(`#services tbody tr[data-container="${args.log_container}"]`);
  await page.waitForFunction(() => !document.querySelector('#log').classList.contains('muted'), null, { timeout: 20000 });
  out.log_chars = (await page.textContent('#log')).length;
  await shot(page, 'services');

  // --- Azurite killed: the lake hop turns red ---------------------------------------------------
  await page.goto(`${args.url}#/pipeline`);
  await page.waitForSelector('.hop[data-hop="lake"]', { timeout: 20000 });
  out.lake_before = await page.getAttribute('.hop[data-hop="lake"]', 'data-health');
  execFileSync(args.kill[0], args.kill.slice(1));
  const t0 = Date.now();
  await page.waitForSelector('.hop[data-hop="lake"][data-health="red"]', { timeout: 30000 });
  out.lake_red_after_ms = Date.now() - t0;
  out.lake_reason = await page.textContent('.hop[data-hop="lake"] .reason');
  await shot(page, 'pipeline-azurite-killed');
  }
  out.page_errors = errors;
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
