// The vild page: one /v1/images call per image (the detector runs once), then
// /v1/images/{id}/query for every vocabulary change (text encoding + a matmul on the server);
// the threshold slider filters client-side. Boxes drawn on an image become examples to find
// (exemplars.js). No build step, no dependencies.
"use strict";

(function () {
  const FLOOR = 0.02;          // the lowest score asked for; the slider filters above it
  const MAX_DETECTIONS = 300;
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const state = {
    file: null, bitmap: null, imageId: null, result: null, selected: -1,
    seq: 0, maskCache: new Map(), defaultVocabulary: [],
  };
  const exemplars = window.vildExemplars.create({
    canvas, bitmap: () => state.bitmap, imageId: () => state.imageId, file: () => state.file,
    changed: () => runQuery(), redraw: () => draw(),
  });

  // ---------- helpers ----------
  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", !!isError);
  }
  function parseNames(text) {
    const seen = new Set();
    const out = [];
    for (const raw of text.split(",")) {
      const name = raw.trim().replace(/\s+/g, " ");
      if (name && !seen.has(name)) { seen.add(name); out.push(name); }
    }
    return out;
  }
  function colour(label) {
    let h = 0;
    for (let i = 0; i < label.length; i++) h = (h * 31 + label.charCodeAt(i)) >>> 0;
    return [h % 360, 75, 45];
  }
  function css([h, s, l], a) { return `hsla(${h}, ${s}%, ${l}%, ${a === undefined ? 1 : a})`; }
  async function apiError(resp) {
    try { const body = await resp.json(); return body.detail || resp.statusText; }
    catch (e) { return resp.statusText || `HTTP ${resp.status}`; }
  }
  async function errorCode(resp) {
    try { return (await resp.clone().json()).error; } catch (e) { return null; }
  }
  function debounce(fn, ms) {
    let t = null;
    return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
  }

  function maskCanvas(i) {
    if (state.maskCache.has(i)) return state.maskCache.get(i);
    const det = state.result.detections[i];
    if (!det.mask) return null;
    const [h, w] = det.mask.size;
    const bits = window.vildDecodeRLE(det.mask);
    const off = document.createElement("canvas");
    off.width = w; off.height = h;
    const octx = off.getContext("2d");
    const img = octx.createImageData(w, h);
    const [hue, sat, lig] = colour(det.label);
    const rgb = hslToRgb(hue / 360, sat / 100, lig / 100);
    for (let j = 0; j < bits.length; j++) {
      if (bits[j]) {
        img.data[4 * j] = rgb[0]; img.data[4 * j + 1] = rgb[1]; img.data[4 * j + 2] = rgb[2];
        img.data[4 * j + 3] = 110;
      }
    }
    octx.putImageData(img, 0, 0);
    state.maskCache.set(i, off);
    return off;
  }
  function hslToRgb(h, s, l) {
    const f = (n) => {
      const k = (n + h * 12) % 12;
      const a = s * Math.min(l, 1 - l);
      return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
    };
    return [f(0), f(8), f(4)];
  }
  function iou(a, b) {
    const x1 = Math.max(a[0], b[0]), y1 = Math.max(a[1], b[1]);
    const x2 = Math.min(a[2], b[2]), y2 = Math.min(a[3], b[3]);
    const inter = Math.max(0, x2 - x1) * Math.max(0, y2 - y1);
    const area = (r) => Math.max(0, r[2] - r[0]) * Math.max(0, r[3] - r[1]);
    const u = area(a) + area(b) - inter;
    return u > 0 ? inter / u : 0;
  }
  function threshold() { return parseFloat($("threshold").value); }
  function visible() {
    if (!state.result) return [];
    const t = threshold();
    const out = [];
    state.result.detections.forEach((d, i) => { if (d.score >= t) out.push(i); });
    return out;
  }

  // ---------- drawing ----------
  // The canvas is drawn at the screen's resolution (crisp labels at any image size); drawing
  // happens in image pixels through a scale transform.
  function draw() {
    if (!state.bitmap) return;
    const iw = state.bitmap.width, ih = state.bitmap.height;
    const dpr = window.devicePixelRatio || 1;
    const shownWidth = canvas.clientWidth || iw;
    const cw = Math.max(1, Math.round(Math.min(shownWidth, 4 * iw) * dpr));
    const ch = Math.max(1, Math.round(cw * ih / iw));
    if (canvas.width !== cw || canvas.height !== ch) { canvas.width = cw; canvas.height = ch; }
    const k = cw / iw;                       // canvas pixels per image pixel
    const px = dpr / k;                      // one screen pixel, in image pixels
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, cw, ch);
    canvas.dataset.empty = "false";
    ctx.setTransform(k, 0, 0, k, 0, 0);
    ctx.imageSmoothingEnabled = k < 1;
    ctx.drawImage(state.bitmap, 0, 0);
    const shown = visible();
    if ($("show-masks").checked) {
      for (const i of shown) {
        const m = maskCanvas(i);
        if (m) ctx.drawImage(m, 0, 0, iw, ih);
      }
    }
    const font = 13 * px;
    ctx.font = `${font}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    for (const i of shown) {
      const d = state.result.detections[i];
      const c = colour(d.label);
      const [x1, y1, x2, y2] = d.box;
      const sel = i === state.selected;
      if ($("show-boxes").checked || sel) {
        ctx.lineWidth = (sel ? 3 : 1.5) * px;
        ctx.strokeStyle = css(c);
        ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      }
      const text = `${d.label} ${d.score.toFixed(2)}`;
      const tw = ctx.measureText(text).width + 6 * px;
      const th = font + 4 * px;
      const tx = Math.max(0, Math.min(x1, iw - tw));
      const ty = y1 - th >= 0 ? y1 - th : y1;
      ctx.fillStyle = css(c, sel ? 1 : 0.85);
      ctx.fillRect(tx, ty, tw, th);
      ctx.fillStyle = "#fff";
      ctx.fillText(text, tx + 3 * px, ty + 2 * px);
    }
    exemplars.drawOverlay(ctx, px);
  }

  function renderList() {
    const list = $("list");
    list.textContent = "";
    const shown = visible();
    $("count").textContent = state.result ? `(${shown.length})` : "";
    for (const i of shown) {
      const d = state.result.detections[i];
      const li = document.createElement("li");
      li.dataset.index = String(i);
      li.className = "det" + (i === state.selected ? " selected" : "");
      const sw = document.createElement("span");
      sw.className = "swatch"; sw.style.background = css(colour(d.label));
      const name = document.createElement("span");
      name.className = "det-label"; name.textContent = d.label;
      const score = document.createElement("span");
      score.className = "det-score"; score.textContent = d.score.toFixed(2);
      li.append(sw, name, score);
      li.tabIndex = 0;
      li.setAttribute("role", "button");
      li.addEventListener("click", () => select(i));
      li.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(i); } });
      list.append(li);
    }
    renderDetail();
  }

  // Top categories of a detection: the scores of every category for the same region. Box
  // regression is class-agnostic, so one region's detections share one box.
  function renderDetail() {
    const box = $("detail");
    const top = $("top");
    top.textContent = "";
    if (!state.result || state.selected < 0) { box.hidden = true; return; }
    const ref = state.result.detections[state.selected];
    const best = new Map();
    for (const d of state.result.detections) {
      if (iou(d.box, ref.box) >= 0.9 && (!best.has(d.label) || best.get(d.label) < d.score)) {
        best.set(d.label, d.score);
      }
    }
    const rows = [...best.entries()].sort((a, b) => b[1] - a[1]).slice(0, 5);
    for (const [label, score] of rows) {
      const li = document.createElement("li");
      li.className = "top-category";
      const name = document.createElement("span"); name.textContent = label;
      const val = document.createElement("span"); val.className = "det-score"; val.textContent = score.toFixed(3);
      const bar = document.createElement("div"); bar.className = "bar";
      const fill = document.createElement("span"); fill.style.width = `${Math.round(score * 100)}%`;
      fill.style.background = css(colour(label));
      bar.append(fill);
      li.append(name, val, bar);
      top.append(li);
    }
    box.hidden = false;
  }

  function select(i) {
    state.selected = state.selected === i ? -1 : i;
    renderList();
    draw();
  }

  function update() { renderList(); draw(); }

  // ---------- server calls ----------
  async function uploadImage() {
    const body = new FormData();
    body.append("image", state.file, state.file.name || "image");
    const resp = await fetch("/v1/images", { method: "POST", body });
    if (!resp.ok) {
      const err = new Error(await apiError(resp));
      // the server refused this file (not a busy or slow server): it will refuse it again
      err.badFile = resp.status >= 400 && resp.status < 500 && resp.status !== 408 && resp.status !== 429;
      throw err;
    }
    const out = await resp.json();
    state.imageId = out.id;
    return out;
  }

  async function runQuery() {
    if (!state.file) return;
    const seq = ++state.seq;
    const vocab = parseNames($("vocabulary").value);
    const attrs = parseNames($("attributes").value);
    const payload = {
      vocabulary: vocab.length ? vocab : null,
      attributes: attrs.length ? attrs : null,
      threshold: Math.min(FLOOR, threshold()),
      max_detections: MAX_DETECTIONS,
    };
    setStatus("Scoring…");
    try {
      payload.exemplars = await exemplars.payload(false);
      if (!state.imageId) {
        setStatus("Running the detector…");
        await uploadImage();
        if (seq !== state.seq) return;
      }
      let resp = await post(payload);
      if (resp.status === 404 && (await errorCode(resp)) === "unknown_exemplar_image") {
        payload.exemplars = await exemplars.payload(true);  // an example's image left: send it
        resp = await post(payload);
      }
      if (resp.status === 404) {          // the server's cache let it go: upload again
        await uploadImage();
        resp = await post(payload);
      }
      if (!resp.ok) throw new Error(await apiError(resp));
      const result = await resp.json();
      if (seq !== state.seq) return;       // a newer query is on its way
      state.result = result;
      state.selected = -1;
      state.maskCache.clear();
      update();
      setStatus(`${result.detections.length} candidates over ${result.vocabulary.length} categories in ${Math.round(result.timing_ms.model)} ms (no new detector pass). Click one for its top categories.`);
      document.body.dataset.ready = String(seq);
    } catch (e) {
      if (e.badFile) forgetFile();        // later vocabulary edits must not re-send it
      if (seq === state.seq) setStatus(`Error: ${e.message}${e.badFile ? " Choose another image." : ""}`, true);
    }
  }
  function forgetFile() {
    state.file = null;
    state.bitmap = null;
    state.imageId = null;
    state.result = null;
    state.selected = -1;
    clearCanvas();
    update();
    renderDetail();
  }
  function clearCanvas() {
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    canvas.dataset.empty = "true";
  }
  function post(payload) {
    return fetch(`/v1/images/${encodeURIComponent(state.imageId)}/query`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(payload),
    });
  }

  async function setFile(file) {
    if (!file) return;
    state.file = file;
    state.imageId = null;
    state.result = null;
    state.selected = -1;
    exemplars.imageChanged();
    try {
      state.bitmap = await createImageBitmap(file);
    } catch (e) {
      state.bitmap = null;
      setStatus("This browser could not read that image; the server will try.", true);
    }
    if (state.bitmap) draw(); else clearCanvas();  // never the previous image under a new result
    renderList();
    await runQuery();
  }

  // ---------- events ----------
  $("file").addEventListener("change", (e) => setFile(e.target.files[0]));
  const drop = $("drop");
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => {
    const f = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (f) setFile(f);
  });
  const requery = debounce(runQuery, 250);
  for (const id of ["vocabulary", "attributes"]) {
    $(id).addEventListener("input", requery);
    $(id).addEventListener("change", requery);
  }
  $("threshold").addEventListener("input", () => {
    $("threshold-value").textContent = threshold().toFixed(2);
    if (state.selected >= 0 && state.result && state.result.detections[state.selected].score < threshold()) {
      state.selected = -1;
    }
    update();
  });
  $("show-masks").addEventListener("change", draw);
  $("show-boxes").addEventListener("change", draw);
  window.addEventListener("resize", debounce(draw, 100));
  canvas.addEventListener("click", (e) => {
    if (exemplars.consumeClick() || !state.result || !state.bitmap) return;
    const r = canvas.getBoundingClientRect();
    const x = (e.clientX - r.left) * state.bitmap.width / r.width;
    const y = (e.clientY - r.top) * state.bitmap.height / r.height;
    let best = -1, bestArea = Infinity;
    for (const i of visible()) {
      const [x1, y1, x2, y2] = state.result.detections[i].box;
      const area = (x2 - x1) * (y2 - y1);
      if (x >= x1 && x <= x2 && y >= y1 && y <= y2 && area < bestArea) { best = i; bestArea = area; }
    }
    if (best >= 0) select(best);
  });

  async function loadModel() {
    try {
      const resp = await fetch("/v1/models");
      if (!resp.ok) throw new Error(await apiError(resp));
      const body = await resp.json();
      const m = body.models[0] || {};
      state.defaultVocabulary = m.default_vocabulary || [];
      $("model").textContent = `${m.name || "model"}${m.mode ? ` (${m.mode})` : ""} · ${state.defaultVocabulary.length} default categories`;
      if (state.defaultVocabulary.length) {
        $("vocabulary").placeholder = state.defaultVocabulary.slice(0, 6).join(", ") + (state.defaultVocabulary.length > 6 ? ", …" : "");
      }
    } catch (e) {
      $("model").textContent = `model unavailable: ${e.message}`;
    }
    try {
      const resp = await fetch("/v1/examples");
      if (!resp.ok) return;
      const names = (await resp.json()).examples || [];
      const box = $("examples");
      for (const name of names) {
        const b = document.createElement("button");
        b.type = "button"; b.textContent = name; b.className = "example";
        b.addEventListener("click", async () => {
          const r = await fetch(`/examples/${encodeURIComponent(name)}`);
          if (!r.ok) { setStatus(`Error: ${await apiError(r)}`, true); return; }
          const blob = await r.blob();
          setFile(new File([blob], name, { type: blob.type }));
        });
        box.append(b);
      }
      box.hidden = names.length === 0;
    } catch (e) { /* examples are optional */ }
  }
  loadModel();
})();
