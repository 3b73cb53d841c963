// End-to-end scenarios in Debian's Chromium (playwright-core, no downloaded browser) against a
// real EduAiQ stack. One scenario per run, so pytest reports each on its own:
//
//   E2E_BASE=http://127.0.0.1:PORT E2E_OUT=/tmp/shots E2E_PYTHON=python node e2e/scenarios.mjs <name>
//
// Prints one JSON line of findings and exits 0, or prints the failure and exits 1.
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const BASE = process.env.E2E_BASE ?? "http://127.0.0.1:8000";
const OUT = process.env.E2E_OUT ?? "test-output";
const PYTHON = process.env.E2E_PYTHON ?? "python3";
const CHROMIUM = process.env.E2E_CHROMIUM ?? "/usr/bin/chromium";
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync"];
const T = 30_000;

mkdirSync(OUT, { recursive: true });

function check(cond, message) {
  if (!cond) throw new Error(message);
}

async function browser() {
  return chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
}

async function signIn(b, user, institution, viewport = { width: 1366, height: 850 }) {
  const ctx = await b.newContext({ viewport, acceptDownloads: true });
  const page = await ctx.newPage();
  page.setDefaultTimeout(T);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const q = new URLSearchParams({ user, ...(institution ? { institution } : {}) });
  await page.goto(`${BASE}/auth/dev/login?${q}`);
  return { ctx, page, errors };
}

async function shot(page, name) {
  const file = path.join(OUT, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

async function chat(key, content = "Hello from the e2e test") {
  const res = await fetch(`${BASE}/v1/chat/completions`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: JSON.stringify({ model: "demo-chat", messages: [{ role: "user", content }], max_tokens: 64 }),
  });
  return { status: res.status, body: await res.json().catch(() => null) };
}

/** What a page's fetch with the session sees: used to put a unit back as it was. */
async function apiInPage(page, method, url, body) {
  return page.evaluate(
    async ([m, u, b]) => {
      const csrf = document.cookie.split("; ").find((c) => c.startsWith("eduaiq_csrf="))?.slice(12);
      const r = await fetch(u, { method: m, headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf ?? "" }, body: b ? JSON.stringify(b) : undefined });
      return { status: r.status, body: await r.json().catch(() => null) };
    },
    [method, url, body],
  );
}

const scenarios = {
  /** cs-admin: cs101 from a fixed cap to a tiny percent, preview, save; alice's next request refused. */
  async "department-admin-percent-cap"() {
    const b = await browser();
    try {
      const before = await chat("sk-eduaiq-demo-alice-cs101", "before the change");
      check(before.status === 200, `alice's request before the change answered ${before.status}: ${JSON.stringify(before.body)}`);
      const { page, errors } = await signIn(b, "cs-admin");
      await page.waitForURL(`${BASE}/units`);
      await page.getByRole("treeitem").first().waitFor();
      await page.getByRole("searchbox", { name: "Search units" }).fill("cs101");
      await page.getByRole("treeitem", { name: /CS101/ }).waitFor();
      await shot(page, "01-cs-admin-tree");
      await page.getByRole("link", { name: /CS101 Introduction/ }).click();
      await page.getByRole("tab", { name: "Allocation" }).click();
      const original = await apiInPage(page, "GET", "/api/v1/units/cs101/budget");
      const cost = page.getByRole("group", { name: /^Cost/ });
      await cost.getByLabel("Mode").selectOption("percent");
      await cost.getByRole("textbox", { name: "Percent", exact: true }).fill("0.000001");
      const preview = page.getByTestId("budget-preview");
      await preview.waitFor();
      const row = preview.getByRole("row", { name: /cs101/ });
      await row.getByText("becomes", { exact: false }).or(row.locator("s")).first().waitFor();
      const previewText = await preview.innerText();
      await shot(page, "02-cs-admin-preview");
      const unsaved = await apiInPage(page, "GET", "/api/v1/units/cs101/budget");
      check(unsaved.body.budget.cost.mode === "fixed", "the preview must not save anything");
      await page.getByRole("button", { name: "Save budget" }).click();
      await page.getByText(/Budget of .* saved/).waitFor();
      const saved = await apiInPage(page, "GET", "/api/v1/units/cs101/budget");
      check(saved.body.budget.cost.mode === "percent", `saved budget is ${JSON.stringify(saved.body.budget.cost)}`);
      await page.getByRole("tab", { name: "Overview" }).click();
      await page.getByRole("meter", { name: "Cost" }).waitFor();
      await shot(page, "03-cs-admin-saved");
      let refused;
      for (let i = 0; i < 20; i++) {
        refused = await chat("sk-eduaiq-demo-alice-cs101", "after the change");
        if (refused.status !== 200) break;
        await new Promise((r) => setTimeout(r, 500));
      }
      check(refused.status === 429 || refused.status === 402 || refused.status === 403, `alice's request after the change answered ${refused.status}: ${JSON.stringify(refused.body)}`);
      const restored = await apiInPage(page, "PUT", "/api/v1/units/cs101/budget", original.body.budget);
      check(restored.status === 200, `could not restore cs101: ${JSON.stringify(restored.body)}`);
      check(errors.length === 0, `page errors: ${errors.join("; ")}`);
      return { cap_after: saved.body.numbers.metrics.cost.cap, refused_status: refused.status, refused_error: refused.body?.error, preview: previewText.slice(0, 400) };
    } finally {
      await b.close();
    }
  },

  /** cs-admin: a member limit on cs101 from the Limits card; the API returns it, live use shows alice's request. */
  async "department-admin-member-limit"() {
    const b = await browser();
    try {
      // Named: once another institution is imported (the first-screen test), the dev login needs it.
      const { page, errors } = await signIn(b, "cs-admin", "demo-u");
      await page.waitForURL(`${BASE}/units`);
      const original = await apiInPage(page, "GET", "/api/v1/units/cs101/limits");
      check(original.status === 200, `GET limits answered ${original.status}: ${JSON.stringify(original.body)}`);
      await page.goto(`${BASE}/units/cs101/allocation`);
      const each = page.getByRole("group", { name: "Each member" });
      await each.waitFor();
      const rpm = each.getByRole("textbox", { name: "Requests / min" });
      await rpm.fill("0");
      await each.getByText(/a whole number of at least 1/).waitFor();
      await rpm.fill("7");
      await each.getByRole("textbox", { name: "Concurrent" }).fill("3");
      await page.getByRole("button", { name: "Save limits" }).click();
      await page.getByText(/Limits of .* saved/).waitFor();
      const saved = await apiInPage(page, "GET", "/api/v1/units/cs101/limits");
      const used = await chat("sk-eduaiq-demo-alice-cs101", "under a member limit");
      check(used.status === 200, `alice's request under the limit answered ${used.status}: ${JSON.stringify(used.body)}`);
      await page.getByRole("textbox", { name: /Member/ }).fill("alice");
      const meter = page.getByRole("meter", { name: "Requests per minute of cs101:alice" });
      await meter.waitFor();
      let now = Number(await meter.getAttribute("aria-valuenow"));
      for (let i = 0; i < 10 && now < 1; i++) {
        await page.waitForTimeout(1000); // the card polls every 3 s
        now = Number(await meter.getAttribute("aria-valuenow"));
      }
      const file = await shot(page, "09-cs-admin-member-limit");
      const restored = await apiInPage(page, "PUT", "/api/v1/units/cs101/limits", { limits: original.body.limits, member_limits: original.body.member_limits });
      check(restored.status === 200, `could not restore cs101's limits: ${JSON.stringify(restored.body)}`);
      check(errors.length === 0, `page errors: ${errors.join("; ")}`);
      return { saved: saved.body, live_requests: now, live_max: Number(await meter.getAttribute("aria-valuemax")), screenshot: file };
    } finally {
      await b.close();
    }
  },

  /** alice: create a key, use it with the openai SDK, see the usage appear without a reload. */
  async "student-key-and-usage"() {
    const b = await browser();
    try {
      const { page, errors } = await signIn(b, "alice");
      await page.waitForURL(`${BASE}/keys`);
      const section = page.getByTestId("keys-cs101");
      await section.getByTestId("path-budget").waitFor();
      const usageTable = page.getByTestId("my-usage");
      await usageTable.waitFor();
      const requestsBefore = await countRequests(page);
      await section.getByLabel(/Key name/).fill(`e2e ${Date.now()}`);
      await section.getByRole("button", { name: "Create key" }).click();
      const key = (await page.getByTestId("new-key").innerText()).trim();
      check(key.startsWith("sk-"), `new key looks wrong: ${key}`);
      await shot(page, "04-student-new-key");
      const model = "demo-chat";
      const script = [
        "import sys, openai",
        "c = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2])",
        "r = c.chat.completions.create(model=sys.argv[3], messages=[{'role': 'user', 'content': 'Hello from GPT4All-like client'}], max_tokens=32)",
        "print(r.usage.total_tokens)",
      ].join("\n");
      const tokens = execFileSync(PYTHON, ["-c", script, `${BASE}/v1`, key, model], { encoding: "utf8" }).trim();
      // No reload: the page polls usage every few seconds; the ledger consumer may take a moment.
      const deadline = Date.now() + 60_000;
      let after = requestsBefore;
      while (Date.now() < deadline) {
        after = await countRequests(page);
        if (after > requestsBefore) break;
        await page.waitForTimeout(1000);
      }
      check(after > requestsBefore, `usage did not appear on the page (requests ${requestsBefore} -> ${after})`);
      await shot(page, "05-student-usage");
      const mobile = await b.newContext({ viewport: { width: 390, height: 844 }, storageState: await page.context().storageState() });
      const phone = await mobile.newPage();
      await phone.goto(`${BASE}/keys`);
      await phone.getByTestId("path-budget").first().waitFor();
      await shot(phone, "06-student-phone");
      check(errors.length === 0, `page errors: ${errors.join("; ")}`);
      return { key_prefix: key.slice(0, 16), sdk_total_tokens: Number(tokens), requests_before: requestsBefore, requests_after: after };
    } finally {
      await b.close();
    }
  },

  /** bursar (finance at the root): download this month's FOCUS export. */
  async "finance-focus-export"() {
    const b = await browser();
    try {
      const { page, errors } = await signIn(b, "bursar");
      await page.goto(`${BASE}/finance`);
      const form = page.getByRole("form", { name: "Export" }).or(page.locator("form[aria-labelledby=export-title]"));
      await form.first().waitFor();
      await page.getByRole("radio", { name: /FOCUS/ }).check();
      await page.getByRole("heading", { name: /Chargeback totals/ }).waitFor();
      const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Download export" }).click()]);
      const file = path.join(OUT, download.suggestedFilename());
      await download.saveAs(file);
      const text = readFileSync(file, "utf8");
      const [header, ...rows] = text.trim().split("\n");
      check(header.split(",").includes("BilledCost") && header.split(",").includes("ChargePeriodStart"), `not a FOCUS header: ${header}`);
      await page.getByText(/downloaded/).waitFor();
      await shot(page, "07-finance-export");
      check(errors.length === 0, `page errors: ${errors.join("; ")}`);
      return { file: path.basename(file), columns: header.split(",").length, rows: rows.length, mentions_cs101: text.includes("cs101") };
    } finally {
      await b.close();
    }
  },

  /** it-admin: the Leavers page lists the key seeded as used after its membership ended; the People tab shows provenance. */
  async "admin-leavers-and-provenance"() {
    const keyId = process.env.E2E_LEAVER_KEY ?? "";
    const leaver = process.env.E2E_LEAVER_USER ?? "";
    const b = await browser();
    try {
      const { page, errors } = await signIn(b, "it-admin", "demo-u");
      await page.waitForURL(`${BASE}/units`);
      await page.getByRole("link", { name: "Leavers" }).click();
      await page.waitForURL(`${BASE}/leavers`);
      const row = page.getByTestId(`leaver-${keyId}`);
      await row.waitFor();
      const rowText = await row.innerText();
      const rows = await page.getByRole("table", { name: "Keys used after their membership ended" }).locator("tbody tr").count();
      const leaversShot = await shot(page, "10-admin-leavers");
      await page.goto(`${BASE}/units/cs101/people`);
      const alice = page.getByTestId("person-alice");
      await alice.waitFor();
      const aliceSource = (await alice.getByTestId("person-source").innerText()).trim();
      const gone = page.getByTestId(`person-${leaver}`);
      await gone.waitFor();
      const leaverSource = (await gone.getByTestId("person-source").innerText()).trim();
      const leaverText = await gone.innerText();
      const peopleShot = await shot(page, "11-admin-people-provenance");
      check(errors.length === 0, `page errors: ${errors.join("; ")}`);
      return { leaver_rows: rows, leaver_row: rowText, alice_source: aliceSource, leaver_source: leaverSource, leaver_ended: /ended /.test(leaverText), leaver_text: leaverText, screenshots: [leaversShot, peopleShot] };
    } finally {
      await b.close();
    }
  },

  /** First screen (navigation start to the unit tree on screen) for a big institution's admin. */
  async "first-screen-load"() {
    const user = process.env.E2E_USER ?? "inst-admin";
    const institution = process.env.E2E_INSTITUTION ?? "bigu";
    const runs = Number(process.env.E2E_RUNS ?? 5);
    const b = await browser();
    try {
      const { page, ctx } = await signIn(b, user, institution);
      await page.waitForURL(`${BASE}/units`);
      await page.getByRole("treeitem").first().waitFor();
      const units = await page.getByRole("searchbox").getAttribute("placeholder");
      await shot(page, "08-big-institution-tree");
      await ctx.close();
      const timings = [];
      for (let i = 0; i < runs; i++) {
        // A fresh context each time: no cached assets, no cached API answers (a cold first visit).
        const c = await b.newContext({ viewport: { width: 1366, height: 850 }, storageState: undefined });
        const p = await c.newPage();
        await p.goto(`${BASE}/auth/dev/login?${new URLSearchParams({ user, institution, return_to: "/units" })}`);
        await p.getByRole("treeitem").first().waitFor({ timeout: 60_000 });
        const t = await p.evaluate(() => {
          const mark = performance.getEntriesByName("eduaiq:tree-rendered")[0];
          const nav = performance.getEntriesByType("navigation")[0];
          const api = performance.getEntriesByType("resource").find((r) => r.name.includes("/api/v1/units/tree"));
          return { tree_rendered_ms: mark?.startTime ?? null, dom_content_loaded_ms: nav?.domContentLoadedEventEnd ?? null, tree_api_ms: api ? api.responseEnd - api.requestStart : null, tree_api_bytes: api?.encodedBodySize ?? null };
        });
        timings.push(t);
        await c.close();
      }
      const sorted = timings.map((t) => t.tree_rendered_ms).sort((a, b) => a - b);
      return { placeholder: units, runs: timings, median_ms: sorted[Math.floor(sorted.length / 2)], worst_ms: sorted[sorted.length - 1] };
    } finally {
      await b.close();
    }
  },
};

async function countRequests(page) {
  const cells = await page.getByTestId("my-requests").allInnerTexts();
  return cells.reduce((a, t) => a + Number(t.replace(/[^\d]/g, "") || 0), 0);
}

const name = process.argv[2];
if (!scenarios[name]) {
  console.error(`unknown scenario ${name}; one of ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
try {
  const out = await scenarios[name]();
  console.log(JSON.stringify({ scenario: name, ok: true, ...out }));
} catch (e) {
  console.error(`scenario ${name} failed: ${e?.stack ?? e}`);
  process.exit(1);
}
