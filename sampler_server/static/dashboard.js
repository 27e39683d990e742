// Sampler dashboard: fetches GET v1/dashboard once (the plan), then polls GET v1/progress and
// GET readyz. Charts are inline SVG drawn here; nothing is loaded from outside this server.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = ["#3b6ea8", "#e07b39", "#4c9a5f", "#b8474a", "#7a5fa8", "#8c6d46", "#c9669e", "#6b6b6b"];
const TAIL = "#a9b4c2", HOT = "#c0392b", CONSUMED = "#3b6ea8";
const params = new URLSearchParams(location.search);
const REFRESH_MS = Math.max(500, Number(params.get("refresh") || 2000));

// The token arrives once as ?token=; keep it for this tab and take it out of the address bar.
let token = params.get("token");
if (token) {
  sessionStorage.setItem("sampler-token", token);
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
} else {
  token = sessionStorage.getItem("sampler-token");
}

async function getJSON(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const r = await fetch(path, { headers, cache: "no-store" });
  const body = await r.json().catch(() => ({}));
  if (!r.ok && !(path === "readyz" && r.status === 503)) {
    const err = new Error(body.message || r.status + " " + r.statusText);
    err.status = r.status;
    throw err;
  }
  return body;
}

// -- formatting ---------------------------------------------------------------------------------

function fmtTokens(x) {
  if (x === null || x === undefined || !isFinite(x)) return "–";
  for (const [u, s] of [["T", 1e12], ["B", 1e9], ["M", 1e6], ["K", 1e3]]) {
    if (Math.abs(x) >= s) return trimZeros((x / s).toPrecision(3)) + u;
  }
  return String(Math.round(x * 100) / 100);
}
// "1.50" -> "1.5", "100" stays "100", "2.00" -> "2".
const trimZeros = (t) => (t.includes(".") && !t.includes("e") ? t.replace(/0+$/, "").replace(/\.$/, "") : t);
const pct = (x) => (x * 100 >= 10 ? (x * 100).toFixed(1) : (x * 100).toPrecision(2)) + "%";
const fixed = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
function ago(t) {
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 90 ? Math.round(s) + " s ago" : s < 5400 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
}

// -- tiny SVG toolkit ---------------------------------------------------------------------------

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function svg(width, height, id) {
  return el("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, "data-chart": id, role: "img" });
}
function tip(node, text) { node.appendChild(el("title", {}, text)); return node; }
// Charts are drawn at the card's real width, so text stays at its CSS size.
function widthOf(node, fallback = 560) {
  const w = node.clientWidth - 28;  // the card's horizontal padding
  return w > 200 ? Math.round(w) : fallback;
}
function card(container, title, meta) {
  const c = document.createElement("div");
  c.className = "card";
  const h = document.createElement("h3"); h.textContent = title; c.appendChild(h);
  if (meta) { const m = document.createElement("div"); m.className = "meta"; m.textContent = meta; c.appendChild(m); }
  container.appendChild(c);
  return c;
}
function empty(container, text) {
  const d = document.createElement("div"); d.className = "empty"; d.textContent = text; container.appendChild(d);
}
function niceTicks(lo, hi, n = 4) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-12; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

// Horizontal bars: rows of {label, value, text, color, title}.
function hbars(rows, { id, width = 560, labelW = 150, valueW = 110, barH = 18, gap = 6, max } = {}) {
  const h = rows.length * (barH + gap) + 4;
  const s = svg(width, h, id);
  const vmax = max || Math.max(...rows.map((r) => r.value), 1e-12);
  const span = width - labelW - valueW;
  rows.forEach((r, i) => {
    const y = 2 + i * (barH + gap), w = r.value > 0 ? Math.max(1.5, (span * r.value) / vmax) : 0;
    s.appendChild(el("text", { x: labelW - 8, y: y + barH - 5, "text-anchor": "end" }, r.label));
    s.appendChild(el("rect", { class: "track", x: labelW, y, width: span, height: barH, rx: 3 }));
    tip(s.appendChild(el("rect", { class: "bar", x: labelW, y, width: w.toFixed(1), height: barH, rx: 3,
      fill: r.color || COLORS[0], "data-value": r.value })), r.title || `${r.label}: ${r.text}`);
    s.appendChild(el("text", { class: "v", x: labelW + w + 6, y: y + barH - 5 }, r.text));
  });
  return s;
}

// Line chart of points {x, y}; xFmt/yFmt label the axes.
function lineChart(points, { id, width = 560, height = 220, color = COLORS[0], xFmt = String, yFmt = String, yZero = false }) {
  const s = svg(width, height, id);
  const L = 58, R = 14, T = 10, B = 26, W = width - L - R, H = height - T - B;
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = yZero ? 0 : Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 = yZero ? 0 : y0 - Math.abs(y0) * 0.1 - 1e-9; y1 = y1 + Math.abs(y1) * 0.1 + 1e-9; }
  const pad = (y1 - y0) * 0.06; if (!yZero) y0 -= pad; y1 += pad;
  const X = (v) => L + ((v - x0) / (x1 - x0)) * W, Y = (v) => T + H - ((v - y0) / (y1 - y0)) * H;
  for (const t of niceTicks(y0, y1)) {
    if (t < y0 || t > y1) continue;
    s.appendChild(el("line", { class: "gridline", x1: L, x2: L + W, y1: Y(t), y2: Y(t) }));
    s.appendChild(el("text", { x: L - 6, y: Y(t) + 4, "text-anchor": "end" }, yFmt(t)));
  }
  s.appendChild(el("line", { class: "axis", x1: L, x2: L + W, y1: T + H, y2: T + H }));
  for (const t of niceTicks(x0, x1, 5)) {
    if (t < x0 || t > x1) continue;
    s.appendChild(el("text", { x: X(t), y: T + H + 17, "text-anchor": "middle" }, xFmt(t)));
  }
  const d = points.map((p, i) => (i ? "L" : "M") + X(p.x).toFixed(1) + "," + Y(p.y).toFixed(1)).join("");
  const area = d + `L${X(points[points.length - 1].x).toFixed(1)},${T + H}L${X(points[0].x).toFixed(1)},${T + H}Z`;
  s.appendChild(el("path", { class: "area", d: area, fill: color }));
  s.appendChild(el("path", { class: "series", d, stroke: color, "data-points": points.length }));
  const last = points[points.length - 1];
  s.appendChild(tip(el("circle", { class: "pt last", cx: X(last.x), cy: Y(last.y), r: 3.5, fill: color }),
    `${xFmt(last.x)}: ${yFmt(last.y)}`));
  return s;
}

// -- sections -----------------------------------------------------------------------------------

let plan = null;

function renderHeader(d) {
  document.getElementById("recipe").textContent = "· " + d.recipe + (d.variant ? ` (variant ${d.variant})` : "");
  document.getElementById("build").textContent =
    `build ${d.build_id} · seed ${d.seed} · manifest ${d.manifest} · ${d.languages.toLocaleString()} languages · ` +
    `${d.total_steps.toLocaleString()} steps · ${fmtTokens(d.total_tokens)} tokens`;
  document.getElementById("epoch-warning").textContent = d.epoch_warning;
}

function renderKpis(live) {
  const k = document.getElementById("kpis");
  const cur = live.step === null ? null : plan.phases.find((p) => live.step >= p.start_step && live.step < p.start_step + p.steps);
  const total = plan.phases.reduce((a, p) => a + p.planned_tokens, 0);
  const consumed = live.consumed_tokens.reduce((a, b) => a + b, 0);
  const items = [
    ["step", live.step === null ? "–" : live.step.toLocaleString(), `of ${plan.total_steps.toLocaleString()}`],
    ["phase", cur ? cur.name : "–", cur ? `τ ${typeof cur.tau === "number" ? cur.tau : cur.tau.start + "→" + cur.tau.end} · L ${cur.seq_len}` : "no progress yet"],
    ["tokens consumed", fmtTokens(consumed), `${pct(total ? consumed / total : 0)} of ${fmtTokens(total)}`],
    ["tokens / s", fmtTokens(live.tokens_per_second), "live throughput"],
    ["loss", fixed(live.latest ? live.latest.loss : null), live.latest ? `reported ${ago(live.latest.time)}` : "–"],
    ["reports", live.reports.toLocaleString(), "kept in memory"],
  ];
  k.replaceChildren(...items.map(([name, v, d]) => {
    const div = document.createElement("div");
    div.className = "kpi"; div.dataset.kpi = name;
    div.innerHTML = `<div class="k"></div><div class="v"></div><div class="d"></div>`;
    div.querySelector(".k").textContent = name; div.querySelector(".v").textContent = v; div.querySelector(".d").textContent = d;
    return div;
  }));
}

function renderBudgets(live) {
  const box = document.getElementById("budgets");
  const width = widthOf(box, 1200), labelW = 190, valueW = 230, barH = 22, gap = 10;
  const s = svg(width, plan.phases.length * (barH + gap) + 4, "budgets");
  const span = width - labelW - valueW;
  plan.phases.forEach((p, i) => {
    const y = 2 + i * (barH + gap), used = live.consumed_tokens[i] || 0, frac = Math.min(1, used / p.planned_tokens);
    s.appendChild(el("text", { x: labelW - 10, y: y + barH - 7, "text-anchor": "end" }, `${p.name} · L ${p.seq_len}`));
    tip(s.appendChild(el("rect", { class: "planned track", x: labelW, y, width: span, height: barH, rx: 4,
      "data-value": p.planned_tokens })), `${p.name}: ${fmtTokens(p.planned_tokens)} planned (${p.steps} steps)`);
    tip(s.appendChild(el("rect", { class: "consumed", x: labelW, y, width: (span * frac).toFixed(1), height: barH, rx: 4,
      fill: COLORS[i % COLORS.length], "data-value": used })), `${p.name}: ${fmtTokens(used)} consumed`);
    s.appendChild(el("text", { class: "v", x: labelW + span + 10, y: y + barH - 7 },
      `${fmtTokens(used)} / ${fmtTokens(p.planned_tokens)} (${pct(frac)})`));
  });
  box.replaceChildren(s);
}

function renderLive(live) {
  const pts = live.series;
  const tp = document.getElementById("throughput"), lo = document.getElementById("loss"), ll = document.getElementById("langloss");
  const [wTp, wLo, wLl] = [tp, lo, ll].map((n) => widthOf(n) - 2);
  tp.replaceChildren(); lo.replaceChildren(); ll.replaceChildren();
  const tps = pts.filter((p) => p.tokens_per_second !== null).map((p) => ({ x: p.step, y: p.tokens_per_second }));
  const c1 = card(tp, "Throughput", tps.length ? `now ${fmtTokens(live.tokens_per_second)} tokens/s` : "");
  tps.length >= 1 ? c1.appendChild(lineChart(tps, { id: "throughput", width: wTp, color: COLORS[2], yFmt: fmtTokens, xFmt: (v) => fmtTokens(v), yZero: true }))
    : empty(c1, "no throughput yet: trainers report to POST /v1/progress");
  const losses = pts.filter((p) => p.loss !== null).map((p) => ({ x: p.step, y: p.loss }));
  const c2 = card(lo, "MLM loss by step", losses.length ? `last ${fixed(losses[losses.length - 1].y)}` : "");
  losses.length ? c2.appendChild(lineChart(losses, { id: "loss", width: wLo, color: COLORS[1], yFmt: (v) => v.toFixed(2), xFmt: (v) => fmtTokens(v) }))
    : empty(c2, "no loss reported yet");
  const entries = Object.entries(live.language_loss).sort((a, b) => b[1] - a[1]);
  const shown = entries.slice(0, 14);
  const c3 = card(ll, "Loss per language (latest)", entries.length ? `${entries.length} languages reported` +
    (entries.length > shown.length ? `, highest ${shown.length} shown` : "") : "");
  entries.length ? c3.appendChild(hbars(shown.map(([k, v], i) => ({ label: k, value: v, text: v.toFixed(3),
    color: COLORS[4] })), { id: "language-loss", width: wLl, labelW: 110, valueW: 60 }))
    : empty(c3, "no per-language loss reported yet");
}

// Every phase of the served variant, then the other variants of phases that have them.
const allPhases = () => plan.phases.concat(plan.variant_phases || []);
const variantNote = (p) => (plan.variant_phases || []).includes(p) ? ` · variant (?variant=${p.variant})` : "";

function renderMixtures() {
  const box = document.getElementById("mixtures");
  box.replaceChildren();
  for (const p of allPhases()) {
    const tau = typeof p.tau === "number" ? `τ ${p.tau}` : `τ ${p.tau.start}→${p.tau.end}`;
    const c = card(box, `${p.name}`, `${p.n_languages.toLocaleString()} languages · ${tau} · top-${plan.top_group} share ${pct(p.top10_share)}` + variantNote(p));
    const rows = p.top.map((r, i) => ({
      label: r.language, value: r.weight, text: `${pct(r.weight)} · ${r.epochs.toFixed(2)} ep`,
      color: r.epochs > plan.epoch_warning ? HOT : COLORS[0],
      title: `${r.language}: weight ${pct(r.weight)}, ${fmtTokens(r.allotted_tokens)} tokens, ${r.epochs.toFixed(2)} epochs${r.capped ? " (capped)" : ""}`,
    }));
    if (p.tail) rows.push({ label: `tail (${p.tail.languages.toLocaleString()} langs)`, value: p.tail.weight,
      text: pct(p.tail.weight), color: TAIL, title: `the other ${p.tail.languages} languages: ${fmtTokens(p.tail.allotted_tokens)} tokens` });
    c.appendChild(hbars(rows, { id: "mixture-" + p.name, width: widthOf(c), labelW: 150, valueW: 130 }));
    for (const w of p.warnings) { const d = document.createElement("div"); d.className = "warn"; d.textContent = w; c.appendChild(d); }
  }
}

function renderEpochs() {
  const box = document.getElementById("epochs");
  box.replaceChildren();
  for (const p of allPhases()) {
    const e = p.epochs, n = e.language.length, hot = e.epochs.filter((x) => x > plan.epoch_warning).length;
    const c = card(box, p.name, `${n.toLocaleString()} languages · max ${p.max_epochs_used.toFixed(2)} epochs · ` +
      `${hot} over ${plan.epoch_warning}` + (p.capped_languages ? ` · ${p.capped_languages} capped` : "") + variantNote(p));
    const width = widthOf(c), height = 220, L = 46, R = 12, T = 10, B = 26, W = width - L - R, H = height - T - B;
    const s = svg(width, height, "epochs-" + p.name);
    const pos = e.epochs.filter((x) => x > 0);
    let lo = Math.log10(Math.min(...pos, plan.epoch_warning) * 0.7), hi = Math.log10(Math.max(...pos, plan.epoch_warning) * 1.4);
    const Y = (v) => T + H - ((Math.log10(Math.max(v, 1e-12)) - lo) / (hi - lo)) * H;
    const X = (i) => L + (n > 1 ? (i / (n - 1)) * W : W / 2);
    const steps = hi - lo <= 2.5 ? [1, 2, 5] : [1];  // 1-2-5 ticks on a short log axis
    for (let k = Math.floor(lo); k <= Math.ceil(hi); k++) {
      for (const m of steps) {
        const v = m * Math.pow(10, k); if (Math.log10(v) < lo || Math.log10(v) > hi) continue;
        s.appendChild(el("line", { class: "gridline", x1: L, x2: L + W, y1: Y(v), y2: Y(v) }));
        s.appendChild(el("text", { x: L - 6, y: Y(v) + 4, "text-anchor": "end" }, v >= 1 ? String(v) : trimZeros(v.toPrecision(1))));
      }
    }
    s.appendChild(el("line", { class: "warnline", x1: L, x2: L + W, y1: Y(plan.epoch_warning), y2: Y(plan.epoch_warning) }));
    s.appendChild(el("text", { x: L + 4, y: Y(plan.epoch_warning) - 4, fill: HOT }, `${plan.epoch_warning} epochs`));
    s.appendChild(el("line", { class: "axis", x1: L, x2: L + W, y1: T + H, y2: T + H }));
    s.appendChild(el("text", { x: L, y: T + H + 17 }, "largest language"));
    s.appendChild(el("text", { x: L + W, y: T + H + 17, "text-anchor": "end" }, "smallest"));
    const r = n > 400 ? 1.8 : n > 60 ? 2.6 : 3.6;
    e.epochs.forEach((v, i) => {
      const over = v > plan.epoch_warning;
      tip(s.appendChild(el("circle", { class: "pt" + (over ? " hot" : ""), cx: X(i).toFixed(1), cy: Y(v).toFixed(1), r,
        fill: over ? HOT : COLORS[0], "fill-opacity": over ? 0.95 : 0.6 })),
        `${e.language[i]}: ${v.toFixed(2)} epochs of ${fmtTokens(e.available_tokens[i])} tokens${e.capped[i] ? " (capped)" : ""}`);
    });
    c.appendChild(s);
  }
}

// -- refresh loop -------------------------------------------------------------------------------

function showError(err) {
  const box = document.getElementById("error");
  if (!err) { box.hidden = true; return; }
  box.hidden = false;
  box.textContent = err.status === 401 ? "This server needs its token: open the page as /?token=YOUR_TOKEN." : "Cannot reach the sampler: " + err.message;
}

let liveSignature = null;

function renderLiveAll(live) {
  document.getElementById("updated").textContent = "updated " + new Date(live.server_time * 1000).toLocaleTimeString();
  // Redraw only when a report arrived: charts keep their nodes between polls (no flicker).
  const sig = JSON.stringify([live.reports, live.latest && live.latest.received, live.ready]);
  if (sig === liveSignature) {
    const d = document.querySelector('[data-kpi="loss"] .d');
    if (d && live.latest) d.textContent = `reported ${ago(live.latest.time)}`;
    return;
  }
  liveSignature = sig;
  renderKpis(live); renderBudgets(live); renderLive(live);
  document.body.dataset.reports = live.reports;
}

async function refresh() {
  try {
    const [live, ready] = await Promise.all([getJSON("v1/progress"), getJSON("readyz")]);
    const b = document.getElementById("ready");
    b.textContent = ready.ready ? "ready" : "not ready"; b.className = "badge " + (ready.ready ? "ok" : "bad");
    b.title = ready.ready ? "" : (ready.problems || []).join("\n");
    renderLiveAll(live);
    showError(null);
  } catch (err) { showError(err); }
  setTimeout(refresh, REFRESH_MS);
}

async function start() {
  try {
    plan = await getJSON("v1/dashboard");
  } catch (err) { showError(err); setTimeout(start, REFRESH_MS * 2); return; }
  renderHeader(plan); renderMixtures(); renderEpochs(); renderLiveAll(plan.live);
  document.body.dataset.loaded = "1";
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { renderMixtures(); renderEpochs(); }, 200);
  });
  setTimeout(refresh, REFRESH_MS);
}

start();
