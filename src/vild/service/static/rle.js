// Masks arrive as COCO compressed RLE (vild.model.convert.masks_to_rle); the page decodes them
// here. No dependencies.
"use strict";

// COCO compressed RLE (pycocotools' string form, column-major) -> Uint8Array of H*W, row-major.
window.vildDecodeRLE = function decodeRLE(rle) {
  const [h, w] = rle.size;
  const s = rle.counts;
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1, c = 0;
    while (more) {
      c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  const out = new Uint8Array(h * w);
  let idx = 0, v = 0;
  for (const n of counts) {
    if (v) {
      for (let j = idx; j < idx + n; j++) {
        const col = Math.floor(j / h), row = j - col * h;
        out[row * w + col] = 1;
      }
    }
    idx += n; v = 1 - v;
  }
  return out;
};
