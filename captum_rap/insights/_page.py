"""The single HTML page of the Insights UI (vanilla JS, no build step, no external assets).

All text from the server is inserted with ``textContent`` (never as HTML).
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>captum_rap Insights</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font-family: system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
 header { background: #26324a; color: #fff; padding: 8px 16px; display: flex; gap: 16px; align-items: baseline; }
 header h1 { font-size: 18px; margin: 0; }
 #status { font-size: 13px; opacity: .85; }
 section { padding: 8px 16px; }
 #controls, #filters { display: flex; flex-wrap: wrap; gap: 10px 16px; align-items: center; border-bottom: 1px solid #ddd; background: #fff; }
 label { font-size: 13px; }
 #args { display: flex; flex-wrap: wrap; gap: 6px 14px; }
 #args label { background: #f1f3f7; padding: 2px 6px; border-radius: 4px; }
 #args input[type=number] { width: 90px; }
 #method-desc { font-size: 12px; color: #555; width: 100%; }
 button { padding: 4px 12px; cursor: pointer; }
 #run { font-weight: bold; }
 #error { color: #a40000; font-weight: bold; padding: 4px 16px; min-height: 1em; }
 #examples { display: flex; flex-wrap: wrap; gap: 12px; }
 .example { background: #fff; border: 1px solid #ccd; border-radius: 6px; padding: 8px; }
 .example.selected { border-color: #2a62c9; box-shadow: 0 0 0 2px #2a62c940; }
 .row { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
 .panel { text-align: center; font-size: 12px; }
 .panel img { width: 192px; height: 192px; image-rendering: pixelated; display: block; border: 1px solid #eee; }
 .words { max-width: 520px; line-height: 1.9; font-size: 14px; text-align: left; }
 .words span { padding: 1px 3px; border-radius: 3px; margin-right: 2px; display: inline-block; }
 .results.wide { flex-basis: 100%; }
 ol.preds { margin: 4px 0; padding-left: 22px; font-size: 13px; }
 li.pred { cursor: pointer; }
 li.pred:hover { text-decoration: underline; }
 .bar { display: inline-block; height: 8px; background: #7b9be0; margin-left: 4px; vertical-align: middle; }
 .meta { font-size: 12px; color: #444; }
 .ok { color: #137333; } .bad { color: #a40000; }
 .caption { font-size: 11px; color: #555; max-width: 200px; }
 #acd-panel { background: #fff; border-bottom: 1px solid #ddd; }
 table.acd-text { border-collapse: collapse; font-size: 13px; margin-top: 6px; }
 table.acd-text td { padding: 3px 5px; border: 1px solid #fff; text-align: center; }
 table.acd-text tr.current td { outline: 2px solid #222; }
 table.acd-text th { font-weight: normal; font-size: 11px; color: #666; padding-right: 6px; }
 .groups { font-size: 12px; max-height: 200px; overflow: auto; }
 .busy { opacity: .5; pointer-events: none; }
</style>
</head>
<body>
<header><h1>captum_rap Insights</h1><span id="status">loading&hellip;</span></header>
<section id="controls">
 <label>View <select id="view"></select></label>
 <label>Model <select id="model"></select></label>
 <label>Method <select id="method"></select></label>
 <label>Explain <select id="target-mode"><option value="label">true label</option><option value="predicted">predicted class</option></select></label>
 <button id="run" type="button">Explain selected</button>
 <span id="method-desc"></span>
 <form id="args" onsubmit="return false"></form>
</section>
<section id="filters">
 <label>Show <select id="f-prediction"><option value="all">all</option><option value="correct">correct</option><option value="incorrect">incorrect</option></select></label>
 <label>True class <select id="f-true"><option value="">any</option></select></label>
 <label>Predicted class <select id="f-pred"><option value="">any</option></select></label>
 <label>Top-k <input id="f-topk" type="number" min="1" max="10" value="3" style="width:50px"></label>
 <button id="refresh" type="button">Apply</button>
 <button id="prev" type="button">&larr;</button><span id="count"></span><button id="next" type="button">&rarr;</button>
</section>
<div id="error" role="alert"></div>
<section id="acd-panel" hidden>
 <strong>ACD hierarchy</strong> <span id="acd-info"></span><br>
 <label>Level <input type="range" id="acd-level" min="0" max="0" value="0" style="width:300px"></label>
 <span id="acd-level-label"></span>
 <div id="acd-body"></div>
</section>
<section id="examples"></section>
<script>
"use strict";
const S = { config: null, view: null, methods: [], examples: [], offset: 0, total: 0, pageSize: 12,
            selected: new Set(), acd: null };
const $ = (id) => document.getElementById(id);
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  if (attrs) for (const k in attrs) {
    if (k === "class") e.className = attrs[k]; else e.setAttribute(k, attrs[k]);
  }
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function setStatus(t) { $("status").textContent = t; }
function showError(msg) { $("error").textContent = msg || ""; }
async function api(path, payload) {
  const opts = payload === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" },
                                              body: JSON.stringify(payload) };
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = { error: "invalid answer from the server" }; }
  if (!r.ok) throw new Error((data && data.error) || ("HTTP " + r.status));
  return data;
}
function signedColor(v, lim) {
  const t = Math.max(-1, Math.min(1, lim > 0 ? v / lim : 0));
  const a = Math.abs(t);
  return t >= 0 ? `rgba(220,30,30,${a.toFixed(3)})` : `rgba(30,60,220,${a.toFixed(3)})`;
}
function currentView() { return S.config.views.find(v => v.name === S.view); }
function currentMethod() { return S.methods.find(m => m.name === $("method").value); }

async function init() {
  try {
    S.config = await api("/api/config");
    const vs = $("view"); vs.textContent = "";
    for (const v of S.config.views) vs.appendChild(el("option", { value: v.name }, v.title));
    await selectView(S.config.views[0].name);
  } catch (e) { showError(e.message); setStatus("error"); }
}
async function selectView(name) {
  S.view = name; S.offset = 0; S.selected.clear(); hideAcd();
  const v = currentView();
  const ms = $("model"); ms.textContent = "";
  v.models.forEach((m, i) => ms.appendChild(el("option", { value: String(i) }, m)));
  $("target-mode").value = v.use_label_for_attr ? "label" : "predicted";
  const data = await api("/api/methods?view=" + encodeURIComponent(name));
  S.methods = data.methods;
  const sel = $("method"); sel.textContent = "";
  for (const m of S.methods) sel.appendChild(el("option", { value: m.name }, m.name));
  buildArgs();
  await loadExamples(true);
}
function buildArgs() {
  const m = currentMethod(); const f = $("args"); f.textContent = "";
  $("method-desc").textContent = m ? m.description : "";
  if (!m) return;
  for (const a of m.args) {
    const lab = el("label", { title: a.help || "" }, a.name + " ");
    let inp;
    if (a.type === "bool") {
      inp = el("input", { type: "checkbox" }); inp.checked = !!a.default;
    } else if (a.type === "choice") {
      inp = el("select");
      for (const c of a.choices) { const o = el("option", { value: JSON.stringify(c) }, c); inp.appendChild(o); }
      inp.value = JSON.stringify(a.default);
    } else {
      inp = el("input", { type: "number" });
      if (a.min !== undefined) inp.min = a.min;
      if (a.max !== undefined) inp.max = a.max;
      inp.step = a.type === "int" ? "1" : "any";
      inp.value = a.default;
    }
    inp.dataset.arg = a.name; inp.dataset.kind = a.type; inp.name = a.name;
    if (a.only_with) { lab.dataset.onlyArg = a.only_with.arg; lab.dataset.onlyValues = JSON.stringify(a.only_with.values); }
    inp.addEventListener("change", applicableArgs);
    lab.appendChild(inp); f.appendChild(lab);
  }
  applicableArgs();
}
function argValue(name) {
  const inp = $("args").querySelector('[data-arg="' + name + '"]');
  if (!inp) return undefined;
  return inp.dataset.kind === "choice" ? JSON.parse(inp.value) : inp.value;
}
function applicableArgs() {
  // an argument that applies only with some values of another one (gamma: epsilon_gamma_box)
  for (const lab of $("args").querySelectorAll("label")) {
    if (!lab.dataset.onlyArg) continue;
    lab.hidden = !JSON.parse(lab.dataset.onlyValues).includes(argValue(lab.dataset.onlyArg));
  }
}
function readArgs() {
  const out = {};
  for (const inp of $("args").querySelectorAll("[data-arg]")) {
    if (inp.parentElement && inp.parentElement.hidden) continue;  // not used with these settings
    const k = inp.dataset.kind;
    if (k === "bool") out[inp.dataset.arg] = inp.checked;
    else if (k === "choice") out[inp.dataset.arg] = JSON.parse(inp.value);
    else out[inp.dataset.arg] = Number(inp.value);
  }
  return out;
}
function fillClassFilter(selId, indices) {
  const s = $(selId); const keep = s.value; s.textContent = "";
  s.appendChild(el("option", { value: "" }, "any"));
  const names = currentView().classes;
  for (const i of indices) s.appendChild(el("option", { value: String(i) }, names[i] !== undefined ? names[i] : ("output " + i)));
  s.value = Array.from(s.options).some(o => o.value === keep) ? keep : "";
}
async function loadExamples(resetFilters) {
  showError("");
  if (resetFilters) { $("f-true").value = ""; $("f-pred").value = ""; $("f-prediction").value = "all"; }
  const p = new URLSearchParams({ view: S.view, model: $("model").value, prediction: $("f-prediction").value,
                                  offset: String(S.offset), limit: String(S.pageSize), top_k: $("f-topk").value });
  if (!resetFilters && $("f-true").value !== "") p.set("true_class", $("f-true").value);
  if (!resetFilters && $("f-pred").value !== "") p.set("predicted_class", $("f-pred").value);
  setStatus("loading examples…");
  try {
    const data = await api("/api/examples?" + p.toString());
    S.examples = data.examples; S.total = data.total;
    fillClassFilter("f-true", data.labels_present);
    fillClassFilter("f-pred", data.predicted_present);
    renderExamples();
    setStatus(`${data.total} example(s)`);
  } catch (e) { showError(e.message); setStatus("error"); }
}
function renderOriginal(o) {
  const box = el("div", { class: "panel" });
  if (o.type === "image") {
    const img = el("img", { class: "original", alt: o.name }); img.src = "data:image/png;base64," + o.png;
    box.appendChild(img); box.appendChild(el("div", null, o.name));
  } else if (o.type === "text") {
    const w = el("div", { class: "words original-text" });
    for (const t of o.words) w.appendChild(el("span", null, t));
    box.appendChild(w);
  } else {
    const ul = el("ul", { class: "values" });
    for (const v of o.values) ul.appendChild(el("li", null, typeof v === "object" ? `${v.name}: ${Number(v.value).toFixed(3)}` : v));
    box.appendChild(el("div", null, o.name)); box.appendChild(ul);
  }
  return box;
}
function renderExamples() {
  const root = $("examples"); root.textContent = "";
  const start = S.total ? S.offset + 1 : 0;
  $("count").textContent = ` ${start}-${S.offset + S.examples.length} of ${S.total} `;
  for (const ex of S.examples) {
    const card = el("div", { class: "example", "data-index": String(ex.index) });
    if (S.selected.has(ex.index)) card.classList.add("selected");
    const head = el("div", { class: "meta" });
    const cb = el("input", { type: "checkbox", class: "pick" }); cb.checked = S.selected.has(ex.index);
    cb.addEventListener("change", () => { if (cb.checked) S.selected.add(ex.index); else S.selected.delete(ex.index);
                                          card.classList.toggle("selected", cb.checked); });
    head.appendChild(cb);
    head.appendChild(document.createTextNode(` #${ex.index}  label: ${ex.label_name === null ? "–" : ex.label_name} `));
    if (ex.correct !== null) head.appendChild(el("span", { class: ex.correct ? "ok" : "bad" }, ex.correct ? "✓ correct" : "✗ wrong"));
    card.appendChild(head);
    const row = el("div", { class: "row" });
    for (const o of ex.originals) row.appendChild(renderOriginal(o));
    const res = el("div", { class: "row results" });
    row.appendChild(res);
    card.appendChild(row);
    const ol = el("ol", { class: "preds" });
    for (const p of ex.predictions) {
      const li = el("li", { class: "pred", title: "explain this class", "data-class": String(p.index) }, `${p.name}: ${(100 * p.score).toFixed(1)}%`);
      li.appendChild(el("span", { class: "bar", style: `width:${Math.round(60 * Math.max(0, Math.min(1, p.score)))}px` }));
      li.addEventListener("click", () => run([ex.index], p.index));
      ol.appendChild(li);
    }
    card.appendChild(ol);
    root.appendChild(card);
  }
}
function selectedIndices() {
  const shown = S.examples.map(e => e.index);
  let picked = shown.filter(i => S.selected.has(i));
  const maxN = S.config.limits.max_examples_per_request;
  if (!picked.length) picked = shown.slice(0, Math.min(4, maxN));
  return picked.slice(0, maxN);
}
async function run(indices, targetClass) {
  const m = currentMethod(); if (!m) return;
  indices = indices || selectedIndices();
  if (!indices.length) { showError("no example to explain"); return; }
  const target = targetClass !== undefined ? targetClass : $("target-mode").value;
  showError(""); document.body.classList.add("busy");
  setStatus(`running ${m.name}…`);
  const t0 = performance.now();
  try {
    if (m.endpoint === "acd") {
      const data = await api("/api/acd", { view: S.view, model: Number($("model").value), args: readArgs(),
                                           example: indices[0], target: target });
      showAcd(data);
    } else {
      hideAcd();
      const data = await api("/api/attribute", { view: S.view, model: Number($("model").value), method: m.name,
                                                 args: readArgs(), examples: indices, target: target });
      for (const r of data.results) showResult(r, data.method);
    }
    setStatus(`${m.name} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  } catch (e) { showError(e.message); setStatus("error"); }
  finally { document.body.classList.remove("busy"); }
}
function showResult(r, method) {
  const card = document.querySelector(`.example[data-index="${r.index}"]`); if (!card) return;
  const res = card.querySelector(".results"); res.textContent = "";
  for (const f of r.features) {
    const box = el("div", { class: "panel result" });
    if (f.type === "image") {
      const img = el("img", { class: "heatmap", alt: `${method} heat map` }); img.src = "data:image/png;base64," + f.heatmap;
      box.appendChild(img);
      box.appendChild(el("div", { class: "caption" }, `${method} → ${r.target_name}: Σ=${f.sum.toPrecision(4)} (red +, blue −)`));
    } else if (f.type === "text") {
      res.classList.add("wide");
      const lim = Math.max(1e-12, ...f.scores.map(Math.abs));
      const w = el("div", { class: "words attributed" });
      f.words.forEach((t, i) => { const s = el("span", { title: f.scores[i].toPrecision(3) }, t);
                                  s.style.background = signedColor(f.scores[i], lim); w.appendChild(s); });
      box.appendChild(w);
      box.appendChild(el("div", { class: "caption" }, `${method} → ${r.target_name}: Σ=${f.sum.toPrecision(4)}`));
    } else {
      const ul = el("ul", { class: "values attributed" });
      const lim = Math.max(1e-12, ...f.values.map(v => Math.abs(v.attribution)));
      for (const v of f.values) { const li = el("li", null, `${v.name}: ${v.attribution.toPrecision(3)}`);
                                  li.style.background = signedColor(v.attribution, lim); ul.appendChild(li); }
      box.appendChild(el("div", null, f.name)); box.appendChild(ul);
    }
    res.appendChild(box);
    if (f.type === "image" && f.overlay) {
      const ob = el("div", { class: "panel result" });
      const ov = el("img", { class: "overlay", alt: "overlay" }); ov.src = "data:image/png;base64," + f.overlay;
      ob.appendChild(ov); ob.appendChild(el("div", { class: "caption" }, "overlay"));
      res.appendChild(ob);
    }
  }
}
function hideAcd() { $("acd-panel").hidden = true; S.acd = null; }
function showAcd(data) {
  S.acd = data;
  $("acd-panel").hidden = false;
  $("acd-info").textContent = ` example #${data.index}, class ${data.target_name}, ${data.levels.length} levels, ${data.cd_evaluations} CD evaluations`;
  const slider = $("acd-level");
  slider.max = String(data.levels.length - 1);
  let start = data.levels.length - 1;
  if (data.kind === "image") { const nb = data.num_before_final || 1; start = Math.min(data.levels.length - 1, Math.max(1, nb - 1)); }
  else { start = Math.min(1, data.levels.length - 1); }
  slider.value = String(start);
  const body = $("acd-body"); body.textContent = "";
  if (data.kind === "image") {
    const row = el("div", { class: "row" });
    const p1 = el("div", { class: "panel" }); const img = el("img", { class: "acd-overlay", alt: "ACD level" });
    p1.appendChild(img); p1.appendChild(el("div", { class: "caption" }, "groups coloured by CD score (red +, blue −)"));
    const p2 = el("div", { class: "panel" }); const u = el("img", { class: "acd-unit", alt: "CD blocks" });
    u.src = "data:image/png;base64," + data.unit_heatmap;
    p2.appendChild(u); p2.appendChild(el("div", { class: "caption" }, "CD score of each block alone"));
    row.appendChild(p1); row.appendChild(p2); row.appendChild(el("div", { class: "groups", id: "acd-groups" }));
    body.appendChild(row);
  } else {
    const table = el("table", { class: "acd-text" });
    data.levels.forEach((lev, li) => {
      const tr = el("tr", { "data-level": String(li) });
      tr.appendChild(el("th", null, "level " + li));
      lev.scores.forEach((s, t) => { const td = el("td", null, s === null ? "" : data.words[t]);
                                     if (s !== null) { td.style.background = signedColor(s, data.limit); td.title = s.toPrecision(3); }
                                     tr.appendChild(td); });
      table.appendChild(tr);
    });
    body.appendChild(table);
    const img = el("img", { class: "acd-text-png", alt: "levels x words" }); img.src = "data:image/png;base64," + data.png;
    img.style.maxWidth = "100%"; img.style.display = "block"; img.style.marginTop = "8px";
    body.appendChild(el("div", { class: "groups", id: "acd-groups" }));
    body.appendChild(img);
  }
  showAcdLevel();
}
function showAcdLevel() {
  const data = S.acd; if (!data) return;
  const l = Number($("acd-level").value); const lev = data.levels[l];
  $("acd-level-label").textContent = `level ${l} / ${data.levels.length - 1}: ${lev.groups.length} group(s)`;
  const g = $("acd-groups"); g.textContent = "";
  const sorted = lev.groups.slice().sort((a, b) => Math.abs(b.score) - Math.abs(a.score)).slice(0, 30);
  for (const grp of sorted) {
    const d = el("div", null, data.kind === "image" ? `group ${grp.id}: ${grp.size} px, score ${grp.score.toPrecision(4)}`
                                               : `"${grp.text}": ${grp.score.toPrecision(4)}`);
    d.style.borderLeft = "8px solid " + signedColor(grp.score, lev.limit || data.limit); d.style.paddingLeft = "4px";
    g.appendChild(d);
  }
  if (data.kind === "image") {
    document.querySelector("img.acd-overlay").src = "data:image/png;base64," + lev.png;
  } else {
    for (const tr of document.querySelectorAll("table.acd-text tr")) tr.classList.toggle("current", tr.dataset.level === String(l));
  }
}
$("view").addEventListener("change", (e) => selectView(e.target.value).catch(err => showError(err.message)));
$("model").addEventListener("change", () => { S.offset = 0; loadExamples(false); });
$("method").addEventListener("change", buildArgs);
$("run").addEventListener("click", () => run());
$("refresh").addEventListener("click", () => { S.offset = 0; loadExamples(false); });
$("prev").addEventListener("click", () => { if (S.offset > 0) { S.offset = Math.max(0, S.offset - S.pageSize); loadExamples(false); } });
$("next").addEventListener("click", () => { if (S.offset + S.pageSize < S.total) { S.offset += S.pageSize; loadExamples(false); } });
$("acd-level").addEventListener("input", showAcdLevel);
init();
</script>
</body>
</html>
"""
