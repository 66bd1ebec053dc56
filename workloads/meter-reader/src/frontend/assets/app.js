// The device frontend: everything comes from this device's /api, which asks the Data API
// with the device certificate. Data is only ever put into the page as text.

const IMPORT_ENERGY = "0100010800ff";
const EXPORT_ENERGY = "0100020800ff";
const IMPORT_POWER = "0100010700ff";
const EXPORT_POWER = "0100020700ff";
const SUM_POWER = "0100100700ff";
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#0b6e4f", "#d1495b", "#1a5fb4", "#e0a100", "#6a3d9a", "#3a8a9c"];
const DASHES = ["", "6 4", "2 3", "10 3 2 3"];

const params = new URLSearchParams(location.search);
// Seconds between refreshes; the page follows the device without reloading.
const refreshSeconds = Math.max(1, Number(params.get("refresh")) || 10);

const $ = (id) => document.getElementById(id);

let overview = null;
let meterLabels = new Map();
let refreshTimer = null;
let busy = false;
let again = false;
let lastMeasurements = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

function facts(pairs) {
  const list = el("dl", { class: "facts" });
  for (const [term, value] of pairs) {
    if (value === undefined) continue;
    list.append(el("dt", {}, term), el("dd", {}, value === null || value === "" ? "—" : value));
  }
  return list;
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
function when(iso) {
  if (!iso) return "—";
  const t = new Date(iso);
  return Number.isNaN(t.getTime()) ? String(iso) : dateTime.format(t);
}

function number(value, digits = 4) {
  return typeof value === "number" && Number.isFinite(value)
    ? value.toLocaleString(undefined, { maximumFractionDigits: digits })
    : "—";
}

const yesNo = (value) => (value === true ? "yes" : value === false ? "no" : "—");

function showNotice(text, kind = "info") {
  const notice = $("notice");
  notice.textContent = text;
  notice.dataset.kind = kind;
  notice.hidden = !text;
}

async function request(method, path) {
  const init = { method, headers: { accept: "application/json" } };
  // Consent changes carry this header; other sites' pages cannot send it.
  if (method !== "GET") init.headers["x-device-frontend"] = "1";
  try {
    const response = await fetch(path, init);
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    return { ok: response.ok, status: response.status, body };
  } catch (error) {
    return { ok: false, status: 0, body: { error: "device_unreachable", message: `This device did not answer (${error.message}).` } };
  }
}

function message(part) {
  return part?.body?.message || `the server answered ${part?.status ?? "nothing"}`;
}

// ---------------------------------------------------------------- consent (FR-01..03)

const CONSENT_TEXT = {
  NOT_GRANTED:
    "This device measures nothing until you grant consent. With your consent it reads your meters every 15 minutes and sends the measurements to the EnergieBroker survey.",
  GRANTED:
    "This device reads your meters and sends the measurements to the survey. You can revoke your consent at any time; revoking is final and anonymizes your household.",
  REVOKED:
    "Consent has been revoked. Your household is anonymized: contact details and address were deleted and the location was displaced. This device has stopped measuring for good — please return it to the research group.",
};
const CONSENT_NAME = { NOT_GRANTED: "not granted", GRANTED: "granted", REVOKED: "revoked" };

function renderConsent(consent) {
  const state = consent?.state ?? overview?.reader?.consent ?? "";
  const badge = $("consent-state");
  badge.dataset.state = state;
  badge.textContent = CONSENT_NAME[state] ?? "unknown";
  $("consent-explanation").textContent = CONSENT_TEXT[state] ?? "The consent state is not known yet.";
  const times = $("consent-times");
  times.replaceChildren(
    ...facts([
      ["Granted", consent?.granted_at ? when(consent.granted_at) : undefined],
      ["Revoked", consent?.revoked_at ? when(consent.revoked_at) : undefined],
    ]).childNodes,
  );
  $("grant").hidden = state !== "NOT_GRANTED";
  $("revoke").hidden = state !== "GRANTED";
  document.body.dataset.consent = state;
}

async function grant() {
  const button = $("grant");
  button.disabled = true;
  const answer = await request("POST", "/api/consent");
  button.disabled = false;
  if (answer.ok) {
    showNotice("Thank you — consent granted. This device measures from now on; the first measurements appear here within a measurement cycle.");
  } else {
    showNotice(`Consent was not granted: ${message(answer)}`, "error");
  }
  await refresh();
}

function openRevokeDialog() {
  const dialog = $("revoke-dialog");
  $("revoke-understood").checked = false;
  $("revoke-confirm").disabled = true;
  dialog.showModal();
  $("revoke-understood").focus();
}

function closeRevokeDialog() {
  $("revoke-dialog").close();
}

async function revoke() {
  const confirm = $("revoke-confirm");
  if (!$("revoke-understood").checked) return;
  confirm.disabled = true;
  const answer = await request("DELETE", "/api/consent");
  closeRevokeDialog();
  if (answer.ok) {
    showNotice("Consent revoked. Your household has been anonymized and this device has stopped measuring for good. Please return it to the research group.");
  } else {
    showNotice(`Consent was not revoked: ${message(answer)}`, "error");
  }
  await refresh();
  // The dialog's button is gone: put the focus on the outcome.
  $("consent-title").focus();
}

// ------------------------------------------------------- registration, devices (FR-04)

function meterName(meter) {
  const kind = meter.type === "PV-GENERATION" ? "PV generation meter" : "Electricity meter";
  return `${kind} ${meter.model ?? ""}`.trim();
}

function renderRegistration(account, household) {
  const box = $("registration-details");
  const h = household.ok ? household.body : null;
  const parts = [];
  let contact = [];
  if (account.ok) {
    contact = [["Name", account.body.name], ["Email", account.body.email]];
  } else if (account.body?.error === "account_deleted") {
    parts.push(el("p", { class: "muted" }, "Contact details were deleted when consent was revoked."));
  } else {
    parts.push(el("p", { class: "bad" }, `Contact details not available: ${message(account)}`));
  }
  if (h) {
    const a = h.address;
    const m = h.metadata ?? {};
    parts.push(
      facts([
        ...contact,
        ["Address", a ? `${a.street} ${a.house_number}, ${a.postal_code} ${a.city}, ${a.country}` : h.anonymized ? "deleted (anonymized)" : null],
        [
          h.anonymized ? "Location (displaced)" : "Location",
          h.location ? `${number(h.location.latitude, 5)}, ${number(h.location.longitude, 5)}` : null,
        ],
        ["Children", m.children],
        ["Adults", m.adults],
        ["Employed adults", m.employed_adults],
        ["EV charger", yesNo(m.ev_charger)],
        ["Heat pump", yesNo(m.heat_pump)],
        ["Home battery", yesNo(m.home_battery)],
        ["Household", h.id],
      ]),
    );
  } else {
    if (contact.length > 0) parts.push(facts(contact));
    parts.push(el("p", { class: "bad" }, `Household details not available: ${message(household)}`));
  }
  box.replaceChildren(...parts);
}

function renderDevices(devices, meters, pvSystems, reader) {
  const deviceNames = new Map();
  const deviceList = $("device-list");
  if (devices.ok) {
    const items = devices.body.measurement_devices.map((d, i) => {
      const name = d.name || `Measurement device ${i + 1}`;
      deviceNames.set(d.uuid, name);
      const versions = Object.entries(d.component_versions ?? {})
        .map(([k, v]) => `${k} ${v}`)
        .join(", ");
      return el(
        "article",
        { class: "item" },
        el("h4", {}, name),
        facts([
          ["Device", d.uuid],
          ["Software", versions || null],
          ["Last contact", when(d.last_activity)],
          ["Permissions", (d.scopes ?? []).join(", ")],
        ]),
      );
    });
    deviceList.replaceChildren(...items);
  } else {
    deviceList.replaceChildren(el("p", { class: "bad" }, `Devices not available: ${message(devices)}`));
  }

  const probes = new Map((reader?.meters ?? []).map((m) => [m.meter, m]));
  meterLabels = new Map();
  const meterList = $("meter-list");
  if (meters.ok) {
    const all = meters.body.meters;
    const items = all.map((m) => {
      const sameKind = all.filter((o) => meterName(o) === meterName(m)).length > 1;
      const label = sameKind ? `${meterName(m)} (${m.uuid.slice(0, 8)})` : meterName(m);
      meterLabels.set(m.uuid, label);
      return el(
        "article",
        { class: "item", "data-meter": m.uuid },
        el("h4", {}, label),
        facts([
          ["Meter", m.uuid],
          ["Read by", deviceNames.get(m.measurement_device) ?? m.measurement_device],
          ["On this device", probes.has(m.uuid) ? "yes" : "no (read by another device)"],
          ["Last measurement", when(m.last_measurement)],
        ]),
      );
    });
    meterList.replaceChildren(...items);
  } else {
    meterList.replaceChildren(el("p", { class: "bad" }, `Meters not available: ${message(meters)}`));
  }

  const pvList = $("pv-list");
  if (pvSystems.ok) {
    const systems = pvSystems.body.pv_systems;
    pvList.replaceChildren(
      ...(systems.length === 0
        ? [el("p", { class: "muted" }, "No PV system registered.")]
        : systems.map((pv, i) =>
            el(
              "article",
              { class: "item" },
              el("h4", {}, `PV system ${i + 1}`),
              facts([
                ["Nominal power", `${number(pv.nominal_power, 2)} kWp`],
                ["Azimuth", `${number(pv.azimuth, 1)}°`],
                ["Tilt", `${number(pv.tilt, 1)}°`],
                ["Installed", pv.installation_date ?? pv.installation_year],
                ["Generation meter", pv.generation_meter ? meterLabels.get(pv.generation_meter) ?? pv.generation_meter : null],
              ]),
            ),
          )),
    );
  } else {
    pvList.replaceChildren(el("p", { class: "bad" }, `PV systems not available: ${message(pvSystems)}`));
  }
}

function renderReader(reader) {
  const box = $("device-status");
  if (!reader) {
    box.replaceChildren(el("p", { class: "bad" }, "This device's status is not available."));
    return;
  }
  const measuring = reader.consent === "GRANTED";
  const pending = reader.pending_measurements ?? 0;
  const probes = (reader.meters ?? []).map((m) => {
    const label = meterLabels.get(m.meter) ?? `Meter ${String(m.meter).slice(0, 8)}`;
    let state;
    if (m.refused_by_data_api)
      state = el("span", { class: "bad" }, "unknown to the survey — this meter's measurements are not sent; the device's configuration needs correcting");
    else if (reader.consent === "REVOKED") state = el("span", { class: "muted" }, "not read any more (consent revoked)");
    else if (!measuring) state = el("span", { class: "muted" }, "not read until consent is granted");
    else if (m.connected) state = el("span", { class: "ok" }, "probe connected");
    else state = el("span", { class: "bad" }, "probe not connected — check its position on the meter");
    return el(
      "article",
      { class: "item", "data-probe": m.meter },
      el("h4", {}, label),
      facts([
        ["State", state],
        ["Probe", m.probe],
        ["Transmissions", `${m.good_frames} read, ${m.bad_frames} damaged`],
        ["Last reading", when(m.last_reading)],
      ]),
    );
  });
  box.replaceChildren(
    facts([
      ["Measuring", measuring ? "yes" : reader.consent === "REVOKED" ? "no, stopped for good" : "no, waiting for consent"],
      ["Waiting to be sent", pending === 1 ? "1 measurement" : `${pending} measurements`],
      ["Last cycle", when(reader.written_at)],
    ]),
    el("div", { class: "items" }, ...probes),
  );
}

async function loadOverview() {
  const answer = await request("GET", "/api/overview");
  if (!answer.ok || !answer.body) {
    showNotice(`This device cannot show its details: ${message(answer)}`, "error");
    return;
  }
  overview = answer.body;
  const { account, household, measurement_devices: devices, meters, pv_systems: pv, reader } = overview;
  const unreachable = [account, household, devices, meters, pv].some((p) => p.body?.error === "data_api_unreachable");
  if (unreachable) {
    showNotice("The survey's server cannot be reached right now; measurements are kept on this device until it can.", "error");
  } else if ($("notice").dataset.kind === "error") {
    showNotice("");
  }
  renderConsent(household.ok ? household.body.consent : { state: reader?.consent });
  renderRegistration(account, household);
  renderDevices(devices, meters, pv, reader);
  renderReader(reader);
}

// ------------------------------------------------------------ measurements (FR-05)

function value(measurement, code) {
  for (const point of measurement.data ?? []) {
    if (Object.hasOwn(point, code)) return point[code];
  }
  return undefined;
}

function power(measurement) {
  const sum = value(measurement, SUM_POWER);
  if (sum !== undefined) return sum;
  const imported = value(measurement, IMPORT_POWER);
  const exported = value(measurement, EXPORT_POWER);
  if (imported === undefined && exported === undefined) return undefined;
  return (imported ?? 0) - (exported ?? 0);
}

// Round steps (1, 2, 5 × 10^n) covering [min, max] with about `count` ticks.
function ticks(min, max, count) {
  if (min === max) {
    const pad = Math.abs(min) * 0.1 || 1;
    min -= pad;
    max += pad;
  }
  const raw = (max - min) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * magnitude).find((s) => s >= raw) ?? raw;
  const start = Math.floor(min / step) * step;
  const end = Math.ceil(max / step) * step;
  const values = [];
  for (let v = start; v <= end + step / 2; v += step) values.push(Number(v.toPrecision(12)));
  return { min: start, max: end, values };
}

// Decimals that tell ticks `step` apart.
function decimals(step) {
  return Math.max(0, Math.ceil(-Math.log10(step) - 1e-9));
}

const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800].map(
  (s) => s * 1000,
);

// Time ticks at round steps (whole seconds, minutes, hours, days), at most `count`.
function timeTicks(t0, t1, count) {
  const step = TIME_STEPS.find((s) => (t1 - t0) / s <= count) ?? TIME_STEPS[TIME_STEPS.length - 1];
  // Round to the local clock, not to UTC, for steps of an hour and more.
  const offset = step >= 3600_000 ? new Date(t0).getTimezoneOffset() * 60_000 : 0;
  const values = [];
  for (let t = Math.ceil((t0 - offset) / step) * step + offset; t <= t1; t += step) values.push(t);
  return values;
}

function timeFormat(span) {
  if (span <= 10 * 60 * 1000) return new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  if (span <= 2 * 86400 * 1000) return new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
  return new Intl.DateTimeFormat(undefined, { day: "2-digit", month: "2-digit", hour: "2-digit" });
}

function drawChart(container, legend, series, unit, title) {
  const drawn = series.filter((s) => s.points.length > 0);
  legend.replaceChildren(
    ...drawn.map((s) => {
      const swatch = svg("svg", { width: 28, height: 10, "aria-hidden": "true" });
      swatch.append(svg("line", { x1: 1, y1: 5, x2: 27, y2: 5, stroke: s.color, "stroke-width": 3, "stroke-dasharray": s.dash }));
      return el("li", {}, swatch, s.label);
    }),
  );
  if (drawn.length === 0) {
    container.replaceChildren(el("p", { class: "empty" }, "No measurements in this period."));
    return;
  }
  const width = Math.max(320, Math.round(container.clientWidth || 640));
  const height = 240;
  const margin = { left: 62, right: 16, top: 22, bottom: 30 };
  const all = drawn.flatMap((s) => s.points);
  let t0 = Math.min(...all.map((p) => p[0]));
  let t1 = Math.max(...all.map((p) => p[0]));
  if (t0 === t1) {
    t0 -= 30_000;
    t1 += 30_000;
  }
  const y = ticks(Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1])), 5);
  const yDigits = decimals(y.values.length > 1 ? y.values[1] - y.values[0] : 1);
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const sx = (t) => margin.left + ((t - t0) / (t1 - t0)) * plotW;
  const sy = (v) => margin.top + (1 - (v - y.min) / (y.max - y.min)) * plotH;

  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `${title}: ${drawn.map((s) => `${s.label}, ${s.points.length} values`).join("; ")}, from ${dateTime.format(new Date(t0))} to ${dateTime.format(new Date(t1))}`,
  });
  const grid = svg("g", { class: "grid" });
  const axis = svg("g", { class: "axis" });
  for (const v of y.values) {
    const py = sy(v);
    grid.append(svg("line", { x1: margin.left, x2: width - margin.right, y1: py, y2: py }));
    const label = svg("text", { x: margin.left - 6, y: py + 4, "text-anchor": "end" });
    label.textContent = v.toLocaleString(undefined, { minimumFractionDigits: yDigits, maximumFractionDigits: yDigits });
    axis.append(label);
  }
  const format = timeFormat(t1 - t0);
  const xCount = Math.max(2, Math.min(6, Math.floor(plotW / 110)));
  for (const t of timeTicks(t0, t1, xCount)) {
    const px = sx(t);
    grid.append(svg("line", { x1: px, x2: px, y1: margin.top, y2: height - margin.bottom }));
    // Labels at the edges stay inside the picture.
    const anchor = px > width - margin.right - 45 ? "end" : px < margin.left + 45 ? "start" : "middle";
    const label = svg("text", { x: px, y: height - margin.bottom + 18, "text-anchor": anchor });
    label.textContent = format.format(new Date(t));
    axis.append(label);
  }
  axis.append(svg("line", { x1: margin.left, x2: margin.left, y1: margin.top, y2: height - margin.bottom }));
  axis.append(svg("line", { x1: margin.left, x2: width - margin.right, y1: height - margin.bottom, y2: height - margin.bottom }));
  const unitLabel = svg("text", { x: margin.left - 6, y: 12, "text-anchor": "end" });
  unitLabel.textContent = unit;
  axis.append(unitLabel);
  chart.append(grid, axis);
  if (y.min < 0 && y.max > 0) {
    chart.append(svg("line", { class: "zero", x1: margin.left, x2: width - margin.right, y1: sy(0), y2: sy(0) }));
  }
  for (const s of drawn) {
    const points = s.points.map(([t, v]) => `${sx(t).toFixed(1)},${sy(v).toFixed(1)}`).join(" ");
    const line = svg("polyline", { class: "series", points, stroke: s.color, "stroke-dasharray": s.dash, "data-series": s.label, "data-count": s.points.length });
    const titleNode = svg("title");
    titleNode.textContent = s.label;
    line.append(titleNode);
    chart.append(line);
    if (s.points.length <= 60) {
      for (const [t, v] of s.points) {
        chart.append(svg("circle", { cx: sx(t).toFixed(1), cy: sy(v).toFixed(1), r: 2.5, fill: s.color }));
      }
    }
  }
  container.replaceChildren(chart);
}

function renderMeasurements(result) {
  const meters = result.meters ?? [];
  const energy = [];
  const powerSeries = [];
  const rows = [];
  let color = 0;
  for (const meter of meters) {
    const label = meterLabels.get(meter.uuid) ?? meterName(meter);
    const list = [...(meter.measurements ?? [])].sort((a, b) => Date.parse(a.measured_at) - Date.parse(b.measured_at));
    const series = (name, pick, base) => {
      const points = [];
      let first;
      for (const m of list) {
        const v = pick(m);
        if (typeof v !== "number") continue;
        if (first === undefined) first = v;
        points.push([Date.parse(m.measured_at), base ? v - first : v]);
      }
      const index = color++;
      return { label: `${label} — ${name}`, points, color: COLORS[index % COLORS.length], dash: DASHES[Math.floor(index / 2) % DASHES.length] };
    };
    energy.push(series("import", (m) => value(m, IMPORT_ENERGY), true));
    energy.push(series("export", (m) => value(m, EXPORT_ENERGY), true));
    powerSeries.push(series("power", power, false));
    for (const m of list) rows.push({ m, label });
  }
  drawChart($("energy-chart"), $("energy-legend"), energy, "kWh", "Energy since the first measurement of the period");
  drawChart($("power-chart"), $("power-legend"), powerSeries, "kW", "Power");

  rows.sort((a, b) => Date.parse(b.m.measured_at) - Date.parse(a.m.measured_at));
  const shown = rows.slice(0, 50);
  const body = $("measurement-table").tBodies[0];
  if (shown.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "none" }, "No measurements in this period.")));
  } else {
    body.replaceChildren(
      ...shown.map(({ m, label }) =>
        el(
          "tr",
          {},
          el("td", {}, when(m.measured_at)),
          el("td", {}, label),
          el("td", { class: "num" }, number(value(m, IMPORT_ENERGY))),
          el("td", { class: "num" }, number(value(m, EXPORT_ENERGY))),
          el("td", { class: "num" }, number(power(m))),
        ),
      ),
    );
  }
  $("table-caption").textContent =
    rows.length > shown.length ? `Latest ${shown.length} of ${rows.length} measurements` : "Latest measurements";
  const state = overview?.household?.body?.consent?.state ?? overview?.reader?.consent;
  const summary = $("measurements-summary");
  if (rows.length === 0) {
    summary.textContent =
      state === "NOT_GRANTED" ? "Nothing is measured until you grant consent." : "No measurements in this period yet.";
  } else {
    const times = rows.map((r) => Date.parse(r.m.measured_at));
    summary.textContent = `${rows.length} measurement${rows.length === 1 ? "" : "s"} of ${meters.length} meter${meters.length === 1 ? "" : "s"}, ${dateTime.format(new Date(Math.min(...times)))} to ${dateTime.format(new Date(Math.max(...times)))}${result.truncated ? " (only the first part of a long period is shown; choose a shorter period)" : ""}.`;
  }
  document.body.dataset.measurements = String(rows.length);
}

async function loadMeasurements() {
  const seconds = Number($("range").value) || 3600;
  const from = new Date(Date.now() - seconds * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
  const answer = await request("GET", `/api/measurements?from=${encodeURIComponent(from)}`);
  if (answer.ok && answer.body) {
    lastMeasurements = answer.body;
    renderMeasurements(answer.body);
  } else {
    $("measurements-summary").textContent = `Measurements not available: ${message(answer)}`;
  }
}

// ---------------------------------------------------------------------- refreshing

// One refresh at a time; a refresh asked for meanwhile (after a consent change) follows.
async function refresh() {
  if (busy) {
    again = true;
    return;
  }
  busy = true;
  try {
    do {
      again = false;
      await loadOverview();
      await loadMeasurements();
    } while (again);
    document.body.dataset.loaded = "true";
  } finally {
    busy = false;
  }
}

function schedule() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(async () => {
    if (!document.hidden) await refresh();
    schedule();
  }, refreshSeconds * 1000);
}

function start() {
  $("grant").addEventListener("click", grant);
  $("revoke").addEventListener("click", openRevokeDialog);
  $("revoke-cancel").addEventListener("click", closeRevokeDialog);
  $("revoke-confirm").addEventListener("click", revoke);
  $("revoke-understood").addEventListener("change", (e) => {
    $("revoke-confirm").disabled = !e.target.checked;
  });
  $("revoke-dialog").addEventListener("close", () => {
    if (!$("revoke").hidden) $("revoke").focus();
  });
  $("range").addEventListener("change", loadMeasurements);
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => lastMeasurements && renderMeasurements(lastMeasurements), 250);
  });
  refresh().finally(schedule);
}

start();
