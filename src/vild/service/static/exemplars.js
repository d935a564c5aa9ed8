// Find by example: drag a box on the image around one object, name it, and every query from
// then on (this image and the next ones) has it as a label of its own. An example is sent as
// {name, image_id, box}: the server cuts it from the image it cached; when that image has left
// the server's cache, the page sends the image file itself (see app.js).
"use strict";

window.vildExemplars = (function () {
  const MIN_DRAG = 5;  // screen pixels: a shorter drag is a click (which selects a detection)

  function readDataURL(file) {
    return new Promise((resolve, reject) => {
      const r = new FileReader();
      r.onload = () => resolve(r.result);
      r.onerror = () => reject(new Error("could not read the example's image"));
      r.readAsDataURL(file);
    });
  }

  // opts: {canvas, bitmap(), imageId(), file(), changed(), redraw()} from app.js
  function create(opts) {
    const $ = (id) => document.getElementById(id);
    const canvas = opts.canvas;
    const items = [];        // {name, box, imageId, file}
    let drag = null;         // a box being drawn, in image pixels
    let pending = null;      // a drawn box waiting for its name: {box, imageId, file}
    let swallowClick = false;

    function toImage(e) {
      const bm = opts.bitmap();
      const r = canvas.getBoundingClientRect();
      const x = (e.clientX - r.left) * bm.width / r.width;
      const y = (e.clientY - r.top) * bm.height / r.height;
      return [Math.max(0, Math.min(bm.width, x)), Math.max(0, Math.min(bm.height, y))];
    }
    function drawing(e) { return e.pointerType !== "touch" || $("draw-mode").checked; }

    canvas.addEventListener("pointerdown", (e) => {
      if (!opts.bitmap() || e.button !== 0 || !drawing(e)) return;
      const [x, y] = toImage(e);
      drag = { x0: x, y0: y, x1: x, y1: y, sx: e.clientX, sy: e.clientY, moved: false };
      if (canvas.setPointerCapture) canvas.setPointerCapture(e.pointerId);
    });
    canvas.addEventListener("pointermove", (e) => {
      if (!drag) return;
      [drag.x1, drag.y1] = toImage(e);
      if (Math.hypot(e.clientX - drag.sx, e.clientY - drag.sy) >= MIN_DRAG) drag.moved = true;
      if (drag.moved) { e.preventDefault(); opts.redraw(); }
    });
    function endDrag() {
      if (!drag) return;
      const d = drag;
      drag = null;
      if (!d.moved) return;
      swallowClick = true;  // the click that ends a drag must not select a detection
      const box = [Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.max(d.x0, d.x1), Math.max(d.y0, d.y1)]
        .map((v) => Math.round(v * 10) / 10);
      if (box[2] - box[0] < 1 || box[3] - box[1] < 1) { opts.redraw(); return; }
      pending = { box, imageId: opts.imageId(), file: opts.file() };
      $("exemplar-form").hidden = false;
      $("exemplar-box").textContent = `[${box.map((v) => Math.round(v)).join(", ")}]`;
      $("exemplar-name").focus();
      opts.redraw();
    }
    canvas.addEventListener("pointerup", endDrag);
    // touch drags scroll the page unless asked to draw
    $("draw-mode").addEventListener("change", (e) => canvas.classList.toggle("drawing", e.target.checked));
    canvas.addEventListener("pointercancel", () => { drag = null; opts.redraw(); });

    function cancel() {
      pending = null;
      $("exemplar-form").hidden = true;
      $("exemplar-name").value = "";
      opts.redraw();
    }
    function add() {
      const name = $("exemplar-name").value.trim().replace(/\s+/g, " ");
      if (!name || !pending) return;
      // drawn while its image was still uploading: the id is known now (or it goes inline)
      const imageId = pending.imageId || (pending.file === opts.file() ? opts.imageId() : null);
      items.push({ name, box: pending.box, imageId, file: pending.file });
      cancel();
      render();
      opts.changed();
    }
    $("exemplar-add").addEventListener("click", add);
    $("exemplar-cancel").addEventListener("click", cancel);
    $("exemplar-name").addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); add(); }
      if (e.key === "Escape") cancel();
    });

    function render() {
      const list = $("exemplar-list");
      list.textContent = "";
      items.forEach((it, i) => {
        const li = document.createElement("li");
        li.className = "exemplar";
        const name = document.createElement("span");
        name.className = "exemplar-name"; name.textContent = it.name;
        const from = document.createElement("span");
        from.className = "muted"; from.textContent = ` in ${it.file && it.file.name ? it.file.name : "an image"}`;
        const remove = document.createElement("button");
        remove.type = "button"; remove.className = "exemplar-remove"; remove.textContent = "×";
        remove.setAttribute("aria-label", `remove the example ${it.name}`);
        remove.addEventListener("click", () => { items.splice(i, 1); render(); opts.changed(); });
        li.append(name, from, remove);
        list.append(li);
      });
    }

    // The request's `exemplars`: by cached image id, or (inline, or no id) the image itself.
    async function payload(inline) {
      if (!items.length) return null;
      return Promise.all(items.map(async (it) => (
        !inline && it.imageId ? { name: it.name, image_id: it.imageId, box: it.box }
          : { name: it.name, image: await readDataURL(it.file), box: it.box })));
    }

    // The box being drawn, or waiting for its name, over the current image.
    function drawOverlay(ctx, px) {
      const b = drag && drag.moved ? [drag.x0, drag.y0, drag.x1, drag.y1]
        : pending && pending.file === opts.file() ? pending.box : null;
      if (!b) return;
      ctx.save();
      ctx.setLineDash([6 * px, 4 * px]);
      ctx.lineWidth = 2 * px;
      ctx.strokeStyle = "#111";
      ctx.strokeRect(b[0], b[1], b[2] - b[0], b[3] - b[1]);
      ctx.strokeStyle = "#fff";
      ctx.lineDashOffset = 5 * px;
      ctx.strokeRect(b[0], b[1], b[2] - b[0], b[3] - b[1]);
      ctx.restore();
    }

    function consumeClick() { const s = swallowClick; swallowClick = false; return s; }
    function imageChanged() { drag = null; if (pending) cancel(); }

    return { payload, drawOverlay, consumeClick, imageChanged, count: () => items.length };
  }

  return { create };
})();
