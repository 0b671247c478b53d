// Screenshots of the Dagster UI in headless Chromium, driven by playwright-core.
// Run by scripts/screenshot_ui.py, which starts the webserver and passes one JSON argument:
//   {playwright, chromium, flags, userDataDir, url, width, height, timeoutMs,
//    graph: {out, assets}, asset: {out, path, metadataKeys}, plot: {out, key} | null}
// Every page is waited for until what it should show is on screen (not for a fixed time).
'use strict';

const config = JSON.parse(process.argv[2]);
const { chromium } = require(config.playwright);

const log = (message) => process.stderr.write(`screenshot_ui: ${message}\n`);

async function settle(page) {
  await page.waitForLoadState('networkidle', { timeout: config.timeoutMs }).catch(() => {});
  await page.evaluate(() => document.fonts.ready);
  await page.waitForTimeout(500); // the last layout pass and transitions
}

async function dismissCommunityDialog(page) {
  const skip = page.getByRole('dialog').getByRole('button', { name: 'Skip' });
  if (await skip.count()) await skip.click();
}

async function assetGraph(page, { out, assets }) {
  await page.goto(`${config.url}/asset-groups`);
  await page.getByText('Global asset lineage').first().waitFor({ timeout: config.timeoutMs });
  await settle(page);
  await dismissCommunityDialog(page);
  // groups start collapsed: "Expand all groups" (⌥E, the graph's menu), then load the page again so
  // that the graph is laid out and fitted with every asset in view
  const canvas = page.locator('svg[class*="svgContainer"]').first();
  await canvas.waitFor({ timeout: config.timeoutMs });
  // focus the graph's viewport (a click on its empty bottom-left corner) for the shortcut
  const box = await canvas.evaluate((svg) => {
    const r = svg.parentElement.parentElement.getBoundingClientRect();
    return { x: r.x, y: r.y, width: r.width, height: r.height };
  });
  await page.mouse.click(box.x + 10, box.y + box.height - 10);
  await page.keyboard.press('Alt+KeyE');
  await page.waitForURL(/expanded=/, { timeout: config.timeoutMs });
  await page.reload();
  await settle(page);
  for (const name of assets) {
    await page.locator('svg').getByText(name, { exact: true }).first().waitFor({ timeout: config.timeoutMs });
  }
  // fitted to the width, the graph's right edge runs under the zoom buttons: one step out
  await page.getByRole('button').filter({ has: page.getByRole('img', { name: 'zoom_out' }) }).click();
  await settle(page);
  await page.screenshot({ path: out });
  log(`asset graph (${assets.length} assets) -> ${out}`);
}

async function assetPage(page, { out, path, metadataKeys }) {
  await page.goto(`${config.url}/assets/${path.map(encodeURIComponent).join('/')}`);
  await page.getByText('Metadata', { exact: true }).first().waitFor({ timeout: config.timeoutMs });
  for (const key of metadataKeys.slice(0, 3)) {
    await page.getByRole('cell', { name: key, exact: true }).first().waitFor({ timeout: config.timeoutMs });
  }
  await settle(page);
  await dismissCommunityDialog(page);
  await page.screenshot({ path: out });
  log(`asset ${path.join('/')} -> ${out}`);
}

async function metadataPlot(page, { out, key }) {
  const row = page.getByRole('row').filter({ has: page.getByRole('cell', { name: key, exact: true }) }).first();
  await row.scrollIntoViewIfNeeded();
  await row.getByText('[Show Markdown]').click();
  const dialog = page.getByRole('dialog');
  await dialog.getByText(key).first().waitFor({ timeout: config.timeoutMs });
  await page.waitForFunction(() => {
    const images = [...document.querySelectorAll('[role="dialog"] img')];
    return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
  }, null, { timeout: config.timeoutMs });
  await settle(page);
  await page.screenshot({ path: out });
  log(`metadata ${key} -> ${out}`);
}

(async () => {
  const context = await chromium.launchPersistentContext(config.userDataDir, {
    executablePath: config.chromium,
    headless: true,
    args: config.flags,
    viewport: { width: config.width, height: config.height },
    deviceScaleFactor: 1,
  });
  // what the UI stores once its community dialog was answered ("Skip"), and its navigation collapsed
  await context.addInitScript(() => {
    localStorage.setItem('communityNux', '"1"');
    localStorage.setItem('dagster-nav-collapsed', 'true');
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(config.timeoutMs);
    await assetGraph(page, config.graph);
    await assetPage(page, config.asset);
    if (config.plot) await metadataPlot(page, config.plot);
  } finally {
    await context.close();
  }
})().catch((error) => {
  log(`failed: ${error.stack || error}`);
  process.exit(1);
});
