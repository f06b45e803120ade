// Drives ComfyUI's real graph editor in headless Chromium with Playwright (playwright-core), as a user would, and
// prints one JSON report on stdout for tests/integration/test_editor.py to assert on.
//   node editor.cjs URL open WORKFLOW.json...   each workflow file, then each PFP template from the browser
//   node editor.cjs URL run WORKFLOW.json       Run, edit the storyboard and the seed, Run again, restore, Run
const { chromium } = require("playwright-core");
const fs = require("fs");
const path = require("path");

const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync"];
// The front end's own probes of a fresh user folder answer 404; they are not errors of the workflow.
const FRESH_USER_PROBES = /\/api\/userdata|\/user\.css|\/favicon\.ico/;

async function openEditor(url) {
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: FLAGS });
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  // Nothing leaves the machine: the missing-models dialog asks the model host for each file's size (HEAD), which
  // is answered here with an empty reply.
  await page.route((target) => !target.href.startsWith(url), (route) => route.fulfill({
    status: 200, headers: { "access-control-allow-origin": "*", "content-length": "0" }, body: "" }));
  const events = { alerts: [], errors: [] };
  page.on("dialog", (dialog) => { events.alerts.push(dialog.message()); dialog.dismiss(); });
  page.on("pageerror", (error) => events.errors.push(String(error)));
  page.on("console", (message) => {
    if (message.type() === "error" && !FRESH_USER_PROBES.test(message.location().url)) {
      events.errors.push(`${message.text()} (${message.location().url})`);
    }
  });
  await page.goto(url);
  await page.waitForFunction(() => window.app?.graph && window.LiteGraph?.registered_node_types.PFPStoryboardPrompt &&
    app.extensions.some((e) => e.name === "pfp.nodeReports"), null, { timeout: 120000 });
  return { browser, page, events };
}

// What a user sees after a workflow opened: node boxes, overlaps, zoom, error toasts, and the prompt it would queue.
function readGraph(page) {
  return page.evaluate(async () => {
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    const boxes = app.graph._nodes.map((n) => ({ id: n.id, type: n.type, x: n.pos[0], y: n.pos[1] - title,
      w: n.size[0], h: n.size[1] + title, minH: n.computeSize()[1] + title }));
    const overlaps = [];
    for (const a of boxes) for (const b of boxes) {
      if (a.id < b.id && a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h) overlaps.push([a.id, b.id]);
    }
    const toasts = [...document.querySelectorAll(".p-toast-message-error, .p-dialog .p-message-error")]
      .map((e) => e.textContent.trim());
    const prompt = (await app.graphToPrompt()).output;
    const timelines = Object.fromEntries(app.graph._nodes.filter((n) => n.type === "PFPStoryboardPrompt").map((n) =>
      [n.id, n.widgets.find((w) => w.name === "pfp_timeline")?.element?.querySelector(".pfp-timeline-summary")?.textContent]));
    const missingModels = [...document.querySelectorAll(".p-dialog")].filter((d) => d.textContent.includes("Missing Models"))
      .map((d) => d.textContent);
    return { nodes: boxes.length, overlaps, clipped: boxes.filter((b) => b.h + 1 < b.minH).map((b) => b.id),
      scale: app.canvas.ds.scale, toasts, prompt, timelines, missingModels };
  });
}

async function settle(page) {
  await page.waitForTimeout(1500);
}

// The missing-models dialog a Wan workflow opens is read by readGraph, then closed like a user would.
async function closeDialogs(page) {
  await page.keyboard.press("Escape");
  await page.waitForTimeout(300);
}

async function openFiles(page, files) {
  const results = {};
  for (const file of files) {
    const workflow = JSON.parse(fs.readFileSync(file));
    await page.evaluate(([data, name]) => app.loadGraphData(data, true, true, name), [workflow, path.basename(file)]);
    await settle(page);
    results[path.basename(file, ".json")] = await readGraph(page);
    await closeDialogs(page);
  }
  return results;
}

async function openTemplates(page) {
  const listed = await page.evaluate(() => fetch("/api/workflow_templates").then((r) => r.json()));
  const results = {};
  for (const name of listed.pfp ?? []) {
    await page.evaluate(() => app.graph.clear());
    await page.evaluate(() => app.extensionManager.command.execute("Comfy.BrowseTemplates"));
    await page.locator(".p-dialog").getByText("pfp", { exact: true }).first().click(); // the pack's category
    const card = page.locator(`[data-testid="template-workflow-${name}"]`);
    await card.scrollIntoViewIfNeeded({ timeout: 30000 });
    const thumbnail = await card.locator("img").first().evaluate((img) => new Promise((done) => {
      const check = () => (img.complete && img.naturalWidth ? done(img.naturalWidth) : setTimeout(check, 100));
      setTimeout(() => done(img.naturalWidth), 15000);
      check();
    }));
    await card.click();
    await page.waitForFunction(() => app.graph._nodes.length > 0, null, { timeout: 30000 }).catch(() => {});
    await settle(page);
    results[name] = { ...(await readGraph(page)), thumbnail };
    await closeDialogs(page);
  }
  return { listed, results };
}

// The sampler's report box after the next run, once it shows a summary different from `before`.
async function runAndReport(page, before) {
  await page.locator('[data-testid="queue-button"]').first().click();
  await page.waitForFunction((old) => {
    const sampler = app.graph._nodes.find((n) => n.type === "PFPAutoregressiveSampler");
    const text = sampler.pfpReport?.textContent ?? "";
    return !sampler.pfpReport?.classList.contains("empty") && text !== old ? text : null;
  }, before, { timeout: 300000 });
  return page.evaluate(() => app.graph._nodes.find((n) => n.type === "PFPAutoregressiveSampler").pfpReport.textContent);
}

async function setSeed(page, seed) {
  await page.evaluate((value) => {
    const sampler = app.graph._nodes.find((n) => n.type === "PFPAutoregressiveSampler");
    sampler.widgets.find((w) => w.name === "seed").value = value;
  }, seed);
}

async function editAndRun(page, file) {
  await openFiles(page, [file]);
  const reports = [await runAndReport(page, "")];
  const board = page.locator(".comfy-multiline-input").first(); // the storyboard's textarea, typed into
  await board.click();
  await board.press("End");
  await board.press("Control+End");
  await board.type("\n3s: the camera drifts left");
  await setSeed(page, 5);
  reports.push(await runAndReport(page, reports[0]));
  const encoderText = await page.evaluate(() => app.graph._nodes.find((n) => n.type === "PFPLoadMemoryEncoder").pfpReport.textContent);
  await openFiles(page, [file]); // back to the saved settings: the first run's folder resumes
  reports.push(await runAndReport(page, reports[1]));
  return { reports, encoderText };
}

(async () => {
  const [url, mode, ...files] = process.argv.slice(2);
  const { browser, page, events } = await openEditor(url);
  let report;
  try {
    report = mode === "run" ? await editAndRun(page, files[0])
      : { files: await openFiles(page, files), templates: await openTemplates(page) };
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify({ ...report, ...events }));
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
