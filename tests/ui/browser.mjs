// The `graft ui` page in headless Debian chromium, driven by playwright-core
// for tests/it/ui_browser.rs. The Rust test computes every expectation from
// the CLI's own output and passes it in GRAFT_UI_EXPECT (a JSON file); this
// script checks what the page shows against it, writes the compare view's
// screenshot, then waits on stdin for the test to start a training run and
// checks that the page follows it.

import { chromium } from 'playwright-core';
import { readFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const url = process.env.GRAFT_UI_URL;
const expect = JSON.parse(readFileSync(process.env.GRAFT_UI_EXPECT, 'utf8'));
const executablePath = process.env.GRAFT_CHROMIUM || '/usr/bin/chromium';

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}
const sameSet = (a, b) => a.length === b.length && [...a].sort().join() === [...b].sort().join();
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

// A fresh profile each run (playwright passes it as --user-data-dir).
const profile = mkdtempSync(join(tmpdir(), 'graft-ui-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(String(error)));

  // 1. The lineage graph: every run as a node, every fork as an edge
  //    labelled with its checkpoint's step.
  await page.goto(`${url}#/lineage`);
  await page.waitForSelector('#lineage-graph g.node');
  const nodes = await page.$$eval('#lineage-graph g.node', (all) => all.map((n) => n.dataset.runId));
  check(sameSet(nodes, expect.runs.map((r) => r.id)), `lineage nodes ${nodes} are the runs ${expect.runs.map((r) => r.id)}`);
  const edges = await page.$$eval('#lineage-graph path.edge[data-to]', (all) => all.map((e) => `${e.dataset.from}>${e.dataset.to}`));
  const forks = expect.runs.filter((r) => r.parent).map((r) => `${r.parent}>${r.id}`);
  check(sameSet(edges, forks), `fork edges ${edges} are ${forks}`);
  const labels = await page.$$eval('#lineage-graph .edge-label', (all) => all.map((e) => e.textContent));
  const steps = expect.runs.filter((r) => r.parent).map((r) => `@${r.start_step}`);
  check(sameSet(labels, steps), `edge labels ${labels} are ${steps}`);

  // 2. The runs table filtered with the --where language: the rows the CLI
  //    prints; a malformed filter points at its column.
  await page.goto(`${url}#/runs`);
  await page.waitForSelector('#runs-table tbody tr');
  await page.fill('#where', expect.filter.where);
  await page.press('#where', 'Enter');
  await page.waitForFunction((n) => document.querySelectorAll('#runs-table tbody tr').length === n, expect.filter.ids.length);
  const rows = await page.$$eval('#runs-table tbody tr', (all) => all.map((r) => r.dataset.runId));
  check(sameSet(rows, expect.filter.ids), `filtered rows ${rows} are ${expect.filter.ids}`);
  await page.fill('#where', expect.bad_filter.where);
  await page.press('#where', 'Enter');
  await page.waitForSelector('#where-error:not([hidden])');
  const column = await page.$eval('#where-error', (e) => Number(e.dataset.column));
  check(column === expect.bad_filter.column, `the error points at column ${column}, the CLI at ${expect.bad_filter.column}`);
  await page.fill('#where', '');
  await page.press('#where', 'Enter');
  await page.waitForFunction(() => document.getElementById('where-error').hidden);

  // 3. Compare: select two forks in the table; their curves start at the
  //    step of the parent they forked from.
  for (const label of expect.compare.labels) {
    await page.check(`#runs-table tr[data-label="${label}"] input[type=checkbox]`);
  }
  await page.click('#compare-selected');
  await page.waitForFunction(() => window.graftCharts && window.graftCharts.length > 0);
  for (const [series, firsts] of Object.entries(expect.compare.first_steps)) {
    const curves = await page.evaluate((name) => {
      const chart = window.graftCharts.find((c) => c.series === name);
      return chart ? chart.curves.filter((c) => !c.context) : [];
    }, series);
    check(curves.length === Object.keys(firsts).length, `${series}: ${curves.length} curves overlaid`);
    for (const curve of curves) {
      check(curve.first === firsts[curve.run], `${series} of ${curve.label} starts at step ${curve.first}, expected ${firsts[curve.run]}`);
    }
  }
  // The parent's curve is drawn faint up to the fork step.
  const context = await page.evaluate(() => window.graftCharts.find((c) => c.series === 'loss').curves.filter((c) => c.context));
  check(context.length === 1 && context[0].run === expect.compare.parent.id && context[0].last === expect.compare.parent.until,
    `the parent's curve runs to the fork step: ${JSON.stringify(context)}`);
  const diffKeys = await page.$$eval('#recipe-diff tr[data-key]', (all) => all.map((r) => r.dataset.key));
  check(sameSet(diffKeys, expect.compare.diff_keys), `recipe diff keys ${diffKeys} are graft diff's ${expect.compare.diff_keys}`);
  await page.screenshot({ path: expect.screenshot, fullPage: false });

  // The run page of the first fork: its lineage, the commands to continue
  // it, and its drift report.
  const fork = expect.runs.find((r) => r.parent);
  await page.goto(`${url}#/run/${fork.id}`);
  await page.waitForSelector('code[data-command="reproduce"]');
  const reproduce = await page.$eval('code[data-command="reproduce"]', (c) => c.textContent);
  check(reproduce.includes(' reproduce '), `a reproduce command: ${reproduce}`);
  const ancestry = await page.$$eval('#view a[href^="#/run/"]', (all) => all.map((a) => a.getAttribute('href')));
  check(ancestry.includes(`#/run/${fork.parent}`), `the page links the parent: ${ancestry}`);
  check(await page.$('#run-drift') !== null, 'the fork shows its drift report');
  const text = await page.$eval('#view', (v) => v.textContent);
  check(!text.includes('[object'), 'no element is printed as text');
  check(errors.length === 0, `no script errors: ${errors}`);
  console.log('phase 1 passed');

  // 4. Live: the test starts a training run now; it appears in the table
  //    without a reload, running, and its curve grows.
  await lines.next();
  // The page is still on the fork's run page, which the training's records keep
  // refreshing. A refresh in flight when the route changes must not draw over the
  // next view: hold the run page's answers back, and leave while one is held.
  let arrived;
  const held = new Promise((resolve) => { arrived = resolve; });
  const runPage = `**/api/runs/${fork.id}`;
  await page.route(runPage, async (route) => {
    arrived();
    await new Promise((resolve) => setTimeout(resolve, 3000));
    await route.continue().catch(() => {});
  });
  await Promise.race([held, new Promise((resolve) => setTimeout(resolve, 60000))]);
  // The new run is the row the store did not have (its tag comes at the end).
  await page.goto(`${url}#/runs`);
  await new Promise((resolve) => setTimeout(resolve, 3500));
  await page.unroute(runPage);
  const known = expect.runs.map((r) => r.id);
  await page.waitForFunction((ids) => [...document.querySelectorAll('#runs-table tbody tr')]
    .some((r) => !ids.includes(r.dataset.runId)), known, { timeout: 120000 });
  const liveId = await page.$$eval('#runs-table tbody tr', (all, ids) => all.map((r) => r.dataset.runId)
    .find((id) => !ids.includes(id)), known);
  const status = await page.$eval(`#runs-table tr[data-run-id="${liveId}"] td.status`, (td) => td.textContent);
  check(status === 'running', `the new run is shown running, not ${status}`);
  await page.goto(`${url}#/compare?runs=${liveId}`);
  const lastStep = () => page.evaluate((id) => {
    const chart = (window.graftCharts || []).find((c) => c.series === 'loss' && c.curves[0].run === id);
    return chart ? chart.curves[0].last : null;
  }, liveId);
  await page.waitForFunction((id) => (window.graftCharts || []).some((c) => c.series === 'loss' && c.curves[0].run === id), liveId, { timeout: 300000 });
  const first = await lastStep();
  await page.waitForFunction(([id, seen]) => {
    const chart = (window.graftCharts || []).find((c) => c.series === 'loss' && c.curves[0].run === id);
    return chart && chart.curves[0].last > seen;
  }, [liveId, first], { timeout: 300000 });
  const later = await lastStep();
  check(later > first, `the live curve grew from step ${first} to ${later}`);
  check(errors.length === 0, `no script errors: ${errors}`);
  console.log(`phase 2 passed: the live curve grew from step ${first} to ${later} without a reload`);
} finally {
  await browser.close();
}
process.exit(0);
