// Sampler dashboard: fetches GET v1/dashboard once (the plan), then polls GET v1/progress and
// GET readyz. Charts are inline SVG drawn here; nothing is loaded from outside this server.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = ["#3b6ea8", "#e07b39", "#4c9a5f", "#b8474a", "#7a5fa8", "#8c6d46", "#c9669e", "#6b6b6b"];
const TAIL = "#a9b4c2", HOT = "#c0392b", CONSUMED = "#3b6ea8";
const params = new URLSearchParams(location.search);
// ?refresh=MS; anything that is not a number (a typo such as "2s" gave NaN: a 0 ms busy loop) is the default.
// Bounded both ways: setTimeout reads its delay as a 32-bit int, so 2^31 ms wrapped to 0 (a busy loop).
const REFRESH_MS = (() => { const v = Number(params.get("refresh") || 2000); return Number.isFinite(v) ? Math.min(Math.max(500, v), 3600000) : 2000; })();

// The token arrives once as #token= (a fragment: browsers never send it, so no access log or
// proxy sees it; ?token= still works, but the server then receives it); keep it for this tab and
// take it out of the address bar.
const hash = new URLSearchParams(location.hash.slice(1));
let token = hash.get("token") || params.get("token");
if (token) {
  sessionStorage.setItem("sampler-token", token);
  params.delete("token"); hash.delete("token");
  const rest = params.toString(), frag = hash.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + (frag ? "#" + frag : ""));
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

// Horizontal bars: rows of {label, value, text, color, title, key}; a row's optional `ghost`
// {value, title} draws a thin tick at another value (an amended phase's recipe share).
function hbars(rows, { id, width = 560, labelW = 150, valueW = 110, barH = 18, gap = 6, max } = {}) {
  const h = rows.length * (barH + gap) + 4;
  const s = svg(width, h, id);
  const vmax = max || Math.max(...rows.map((r) => Math.max(r.value, r.ghost ? r.ghost.value : 0)), 1e-12);
  const span = width - labelW - valueW;
  rows.forEach((r, i) => {
    const y = 2 + i * (barH + gap), w = r.value > 0 ? Math.max(1.5, (span * r.value) / vmax) : 0;
    const key = r.key === undefined ? {} : { "data-language": r.key };
    s.appendChild(el("text", { x: labelW - 8, y: y + barH - 5, "text-anchor": "end" }, r.label));
    s.appendChild(el("rect", { class: "track", x: labelW, y, width: span, height: barH, rx: 3 }));
    tip(s.appendChild(el("rect", { class: "bar", x: labelW, y, width: w.toFixed(1), height: barH, rx: 3,
      fill: r.color || COLORS[0], "data-value": r.value, ...key })), r.title || `${r.label}: ${r.text}`);
    let textX = labelW + w + 6;
    if (r.ghost) {
      const gx = labelW + (span * r.ghost.value) / vmax;
      tip(s.appendChild(el("line", { class: "orig-share", x1: gx.toFixed(1), x2: gx.toFixed(1), y1: y - 2, y2: y + barH + 2,
        "data-value": r.ghost.value, ...key })), r.ghost.title);
      textX = Math.max(textX, gx + 6);
    }
    s.appendChild(el("text", { class: "v", x: textX.toFixed(1), y: y + barH - 5 }, r.text));
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
    if (t < x0 || t > x1 || !Number.isInteger(t)) continue;  // x is a count (tokens): no "0.5" ticks
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
    `${d.total_steps.toLocaleString()} steps · ${fmtTokens(d.total_tokens)} tokens` +
    ((d.amendments || []).length ? ` · ${d.amendments.length} amendment${d.amendments.length > 1 ? "s" : ""}` : "");
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

// -- amendments ---------------------------------------------------------------------------------

const scalar = (v) => (typeof v === "number" ? String(v) : `${v.start}→${v.end}`);
function selection(v) {
  if (v === "all") return "all";
  if (Array.isArray(v)) return v.length <= 4 ? v.join(", ") : `${v.slice(0, 3).join(", ")} +${v.length - 3}`;
  return `top ${v.top}`;
}
// One phase's changes in words: "τ 0.2, languages top 8, tokens 524K".
function phaseChanges(c) {
  const out = [];
  if (c.tau !== undefined) out.push(`τ ${scalar(c.tau)}`);
  if (c.tau_end !== undefined) out.push(`τ end ${c.tau_end}`);
  if (c.languages !== undefined) out.push(`languages ${selection(c.languages)}`);
  if (c.language_weights !== undefined) {
    const w = Object.entries(c.language_weights);
    out.push(`weights ${w.slice(0, 4).map(([k, x]) => `${k}×${trimZeros(x.toPrecision(3))}`).join(", ")}` +
      (w.length > 4 ? ` +${w.length - 4}` : ""));
  }
  if (c.max_epochs !== undefined) out.push(`max epochs ${c.max_epochs}`);
  if (c.mask_ratio !== undefined) out.push(`mask ${scalar(c.mask_ratio)}`);
  if (c.tokens !== undefined) out.push(`tokens ${fmtTokens(c.tokens)}`);
  return out.join(", ");
}
const changesText = (a) => Object.entries(a.changes).map(([ph, c]) => `${ph}: ${phaseChanges(c)}`).join("; ");
const amendLabel = (a) => "A" + a.index;
function amendTitle(a) {
  const where = a.tokens_before === null || a.tokens_before === undefined ? "" : `, after ${fmtTokens(a.tokens_before)} tokens`;
  return `${amendLabel(a)} · from step ${a.from_step.toLocaleString()} (phase ${a.phase || "–"}${where})\n` +
    `source: ${a.source}\nreason: ${a.reason || "–"}\nchanges: ${changesText(a)}`;
}
// Amendments that change phase `name` (a phase's name without its variant); a journal written
// by hand may still say "current", meaning the phase that contains its from_step.
const amendmentsOf = (name) => (plan.amendments || []).filter((a) =>
  Object.prototype.hasOwnProperty.call(a.changes, name) || (a.phase === name && "current" in a.changes));
// The recipe's own plan of phase index `i`, when the run is amended (null otherwise).
const originalOf = (i) => (plan.original_phases ? plan.original_phases.find((o) => o.index === i) || null : null);
// The recipe's plan of phase `p` when an amendment changed its token budget (null otherwise).
// Compared on the budgets themselves: `planned_tokens` also counts whole batches and warm-up.
function budgetChange(p) {
  const o = originalOf(p.index);
  return o !== null && o.tokens !== p.tokens ? o : null;
}

function renderAmendments() {
  const box = document.getElementById("amendments");
  const list = plan.amendments || [];
  if (!list.length) {
    const d = document.createElement("div");
    d.className = "empty"; d.id = "amendments-none"; d.textContent = "none";
    d.title = "the run follows its recipe: add one with `curriculum amend` or POST /v1/amendments";
    box.replaceChildren(d);
    return;
  }
  const table = document.createElement("table");
  table.className = "amendments"; table.id = "amendments-table";
  const head = table.createTHead().insertRow();
  for (const h of ["", "from step", "phase", "tokens before", "source", "reason", "changes", "created"]) {
    const th = document.createElement("th"); th.textContent = h; head.appendChild(th);
  }
  const body = table.createTBody();
  for (const a of list) {
    const tr = body.insertRow();
    tr.dataset.amendment = a.index; tr.title = `digest ${a.digest} · build ${a.build_id}`;
    const cells = [
      ["index", amendLabel(a)], ["from-step", a.from_step.toLocaleString()], ["phase", a.phase || "–"],
      ["tokens-before", fmtTokens(a.tokens_before)], ["source", a.source], ["reason", a.reason || "–"],
      ["changes", changesText(a)], ["created", a.created_at ? new Date(a.created_at).toLocaleString([], { dateStyle: "short", timeStyle: "short" }) : "–"],
    ];
    for (const [cls, text] of cells) {
      const td = tr.insertCell(); td.className = cls; td.textContent = text;
    }
    const src = tr.querySelector(".source");
    src.classList.add(a.source.startsWith("policy:") ? "policy" : "manual");
  }
  box.replaceChildren(table);
}

// One row for the whole run on a global token axis (phases stacked, amendments marked at the
// tokens served before their from_step), then one row per phase scaled to its own budget.
function renderBudgets(live) {
  const box = document.getElementById("budgets");
  const amended = plan.phases.some((p) => budgetChange(p) !== null);
  const width = widthOf(box, 1200), labelW = 190, valueW = amended ? 270 : 230, barH = 22, gap = 10;
  const span = width - labelW - valueW;
  const starts = [];
  let total = 0;
  for (const p of plan.phases) { starts.push(total); total += p.planned_tokens; }
  const origTotal = plan.phases.reduce((a, p) => a + (budgetChange(p) || p).planned_tokens, 0);
  const runScale = Math.max(total, origTotal);
  const RX = (t) => labelW + (span * t) / runScale;
  // Marker labels take levels above the run row so that close amendments stay readable.
  const marks = (plan.amendments || []).filter((a) => a.tokens_before !== null && a.tokens_before !== undefined)
    .map((a) => ({ a, x: RX(Math.min(a.tokens_before, runScale)) })).sort((m, n) => m.x - n.x);
  const levelEnd = [];
  for (const m of marks) {
    let k = levelEnd.findIndex((end) => m.x - end > 26);
    if (k < 0) { k = levelEnd.length; levelEnd.push(0); }
    levelEnd[k] = m.x; m.level = k;
  }
  const top = marks.length ? 6 + levelEnd.length * 13 : 0;
  const rowY = (r) => top + 2 + r * (barH + gap);  // row 0: the run; row i + 1: phase i
  const s = svg(width, rowY(plan.phases.length + 1), "budgets");

  const consumedAll = live.consumed_tokens.reduce((a, b) => a + b, 0);
  let y = rowY(0);
  s.appendChild(el("text", { x: labelW - 10, y: y + barH - 7, "text-anchor": "end" }, "whole run"));
  if (origTotal !== total) {
    tip(s.appendChild(el("rect", { class: "original-budget run", x: labelW, y: y - 2, width: (RX(origTotal) - labelW).toFixed(1),
      height: barH + 4, rx: 4, "data-value": origTotal })), `the recipe's plan: ${fmtTokens(origTotal)} tokens`);
  }
  plan.phases.forEach((p, i) => {
    tip(s.appendChild(el("rect", { class: "run-phase", x: RX(starts[i]).toFixed(1), y, width: (RX(starts[i] + p.planned_tokens) - RX(starts[i])).toFixed(1),
      height: barH, fill: COLORS[i % COLORS.length], "data-phase": p.name, "data-value": p.planned_tokens })),
      `${p.name}: tokens ${fmtTokens(starts[i])} to ${fmtTokens(starts[i] + p.planned_tokens)}`);
  });
  tip(s.appendChild(el("rect", { class: "run-consumed", x: labelW, y: y + barH - 5, width: (RX(Math.min(consumedAll, total)) - labelW).toFixed(1),
    height: 5, "data-value": consumedAll })), `${fmtTokens(consumedAll)} consumed`);
  s.appendChild(el("text", { class: "v", x: labelW + span + 10, y: y + barH - 7 },
    `${fmtTokens(consumedAll)} / ${fmtTokens(total)} (${pct(total ? Math.min(1, consumedAll / total) : 0)})` +
    (origTotal !== total ? `, recipe ${fmtTokens(origTotal)}` : "")));

  plan.phases.forEach((p, i) => {
    y = rowY(i + 1);
    const used = live.consumed_tokens[i] || 0, frac = Math.min(1, used / p.planned_tokens);
    const o = budgetChange(p), changed = o !== null;
    const scale = changed ? Math.max(p.planned_tokens, o.planned_tokens) : p.planned_tokens;
    const w = (span * p.planned_tokens) / scale;
    s.appendChild(el("text", { x: labelW - 10, y: y + barH - 7, "text-anchor": "end" }, `${p.name} · L ${p.seq_len}`));
    tip(s.appendChild(el("rect", { class: "planned track", x: labelW, y, width: w.toFixed(1), height: barH, rx: 4,
      "data-value": p.planned_tokens })), `${p.name}: ${fmtTokens(p.planned_tokens)} planned (${p.steps} steps)`);
    tip(s.appendChild(el("rect", { class: "consumed", x: labelW, y, width: (w * frac).toFixed(1), height: barH, rx: 4,
      fill: COLORS[i % COLORS.length], "data-value": used })), `${p.name}: ${fmtTokens(used)} consumed`);
    if (changed) {
      tip(s.appendChild(el("rect", { class: "original-budget", x: labelW, y: y - 2, width: ((span * o.planned_tokens) / scale).toFixed(1),
        height: barH + 4, rx: 4, "data-phase": p.name, "data-value": o.planned_tokens })),
        `${p.name}: the recipe planned ${fmtTokens(o.planned_tokens)}; amended to ${fmtTokens(p.planned_tokens)}`);
    }
    s.appendChild(el("text", { class: "v", x: labelW + span + 10, y: y + barH - 7 },
      `${fmtTokens(used)} / ${fmtTokens(p.planned_tokens)} (${pct(frac)})` + (changed ? `, recipe ${fmtTokens(o.planned_tokens)}` : "")));
  });

  // Each amendment: a line through the run row at its global position, its label above, and a
  // tick at the same point on its phase's own row.
  for (const m of marks) {
    const a = m.a, g = el("g", { class: "amendment-marker", "data-amendment": a.index, "data-from-step": a.from_step,
      "data-tokens-before": a.tokens_before });
    const ly = top - 4 - m.level * 13;
    g.appendChild(el("line", { class: "amend-line", x1: m.x.toFixed(1), x2: m.x.toFixed(1), y1: ly + 2, y2: rowY(0) + barH + 3 }));
    g.appendChild(el("text", { class: "amend-label", x: m.x.toFixed(1), y: ly, "text-anchor": "middle" }, amendLabel(a)));
    const i = plan.phases.findIndex((p, k) => a.tokens_before >= starts[k] && a.tokens_before < starts[k] + p.planned_tokens);
    if (i >= 0) {
      const p = plan.phases[i], o = budgetChange(p);
      const scale = o ? Math.max(p.planned_tokens, o.planned_tokens) : p.planned_tokens;
      const px = labelW + (span * (a.tokens_before - starts[i])) / scale, py = rowY(i + 1);
      g.appendChild(el("line", { class: "amend-line phase", x1: px.toFixed(1), x2: px.toFixed(1), y1: py - 4, y2: py + barH + 4, "data-phase": p.name }));
    }
    s.appendChild(tip(g, amendTitle(a)));
  }
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
    const variant = (plan.variant_phases || []).includes(p);
    const amends = variant ? [] : amendmentsOf(p.phase);  // other variants are planned from the recipe
    const o = amends.length ? originalOf(p.index) : null;
    const c = card(box, `${p.name}`, `${p.n_languages.toLocaleString()} languages · ${tau} · top-${plan.top_group} share ${pct(p.top10_share)}` + variantNote(p));
    c.dataset.phase = p.name;
    if (amends.length) {
      c.dataset.amended = amends.map((a) => a.index).join(",");
      const badges = document.createElement("span");
      badges.className = "amend-badges";
      for (const a of amends) {
        const b = document.createElement("span");
        b.className = "amend-badge" + (a.source.startsWith("policy:") ? " policy" : "");
        b.dataset.amendment = a.index; b.textContent = amendLabel(a); b.title = amendTitle(a);
        badges.appendChild(b);
      }
      c.querySelector("h3").appendChild(badges);
      if (o) {
        const was = document.createElement("div");
        was.className = "amend-note";
        const otau = typeof o.tau === "number" ? `τ ${o.tau}` : `τ ${o.tau.start}→${o.tau.end}`;
        was.textContent = `recipe: ${o.n_languages.toLocaleString()} languages · ${otau} · top-${plan.top_group} share ${pct(o.top10_share)}` +
          " · ticks mark each language's recipe share";
        c.querySelector(".meta").after(was);
      }
    }
    // The recipe's share of each shown language: known for its top languages, and 0 for a
    // language it did not select at all (only knowable when it had no tail).
    const share0 = o ? new Map(o.top.map((r) => [r.language, r.weight])) : null;
    const ghost = (r) => {
      if (!share0) return undefined;
      const w0 = share0.has(r.language) ? share0.get(r.language) : o.tail ? undefined : 0;
      return w0 === undefined ? undefined : { value: w0, title: `${r.language}: recipe share ${pct(w0)}, amended ${pct(r.weight)}` };
    };
    const rows = p.top.map((r, i) => ({
      label: r.language, key: r.language, value: r.weight, text: `${pct(r.weight)} · ${r.epochs.toFixed(2)} ep`,
      color: r.epochs > plan.epoch_warning ? HOT : COLORS[0], ghost: ghost(r),
      title: `${r.language}: weight ${pct(r.weight)}, ${fmtTokens(r.allotted_tokens)} tokens, ${r.epochs.toFixed(2)} epochs${r.capped ? " (capped)" : ""}`,
    }));
    if (p.tail) rows.push({ label: `tail (${p.tail.languages.toLocaleString()} langs)`, value: p.tail.weight,
      text: pct(p.tail.weight), color: TAIL, title: `the other ${p.tail.languages} languages: ${fmtTokens(p.tail.allotted_tokens)} tokens` });
    const chart = c.appendChild(hbars(rows, { id: "mixture-" + p.name, width: widthOf(c), labelW: 150, valueW: 130 }));
    if (amends.length) chart.dataset.amended = c.dataset.amended;
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
        `${e.language[i]}: ${v.toFixed(2)} epochs of its ${fmtTokens(e.available_tokens[i])} tokens (+ [CLS]/[SEP] a document)${e.capped[i] ? " (capped)" : ""}`);
    });
    c.appendChild(s);
  }
}

// -- refresh loop -------------------------------------------------------------------------------

function showError(err) {
  const box = document.getElementById("error");
  if (!err) { box.hidden = true; return; }
  box.hidden = false;
  box.textContent = typeof err === "string" ? err
    : err.status === 401 ? "This server needs its token: open the page as /#token=YOUR_TOKEN." : "Cannot reach the sampler: " + err.message;
}

let lastLive = null;  // the last progress summary drawn (a resize redraws from it)

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
  lastLive = live;
  renderKpis(live); renderBudgets(live); renderLive(live);
  document.body.dataset.reports = live.reports;
}

// The journal's entries as the page last drew them: a change (an amendment posted, the policy,
// another replica) reloads the plan, which the amendment changed from its step on.
const journalKey = (list) => JSON.stringify((list || []).map((a) => a.digest));

async function refresh() {
  try {
    let [live, ready, journal] = await Promise.all([getJSON("v1/progress"), getJSON("readyz"), getJSON("v1/amendments")]);
    const b = document.getElementById("ready");
    b.textContent = ready.ready ? "ready" : "not ready"; b.className = "badge " + (ready.ready ? "ok" : "bad");
    b.title = ready.ready ? "" : (ready.problems || []).join("\n");
    if (journalKey(journal.amendments) !== journalKey(plan.amendments)) {
      plan = await getJSON("v1/dashboard");
      renderPlan();
      liveSignature = null;  // the budgets chart depends on the plan too
      live = plan.live;
    }
    renderLiveAll(live);
    // A journal that cannot be applied stops every replica past the watermark: say why, not
    // only "not ready" with the reason in a tooltip.
    showError(journal.error ? "The amendment journal cannot be applied: " + journal.error : null);
  } catch (err) { showError(err); }
  setTimeout(refresh, REFRESH_MS);
}

// Everything drawn from the plan alone.
function renderPlan() {
  renderHeader(plan); renderAmendments(); renderMixtures(); renderEpochs();
  document.body.dataset.amendments = (plan.amendments || []).length;
}

async function start() {
  try {
    plan = await getJSON("v1/dashboard");
  } catch (err) { showError(err); setTimeout(start, REFRESH_MS * 2); return; }
  renderPlan(); renderLiveAll(plan.live);
  document.body.dataset.loaded = "1";
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      renderMixtures(); renderEpochs();
      if (lastLive) { liveSignature = null; renderLiveAll(lastLive); }  // the budgets and live charts too
    }, 200);
  });
  setTimeout(refresh, REFRESH_MS);
}

start();
