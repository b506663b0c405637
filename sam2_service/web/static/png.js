// Greyscale PNG files written in the page (a canvas can only save RGBA): the label image of
// "Download labels", 8-bit when every value fits in a byte, else 16-bit (PNG's big-endian
// samples). zlib from the browser's CompressionStream("deflate"). Exposed as window.sam2png.
"use strict";

(() => {
  const SIGNATURE = Uint8Array.of(137, 80, 78, 71, 13, 10, 26, 10);
  const CRC_TABLE = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    CRC_TABLE[n] = c >>> 0;
  }

  function crc32(bytes) {
    let c = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 255] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  function chunk(type, data) {
    const out = new Uint8Array(12 + data.length);
    const view = new DataView(out.buffer);
    view.setUint32(0, data.length);
    for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
    out.set(data, 8);
    view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  }

  async function deflate(bytes) {
    const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  /** A PNG Blob of width x height greyscale samples `values` (row-major), 8 or 16 bits. */
  async function greyPng(values, width, height, bits) {
    const bytesPerSample = bits / 8, row = 1 + width * bytesPerSample;
    const raw = new Uint8Array(row * height); // each row: filter type 0, then its samples
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const v = values[y * width + x], at = y * row + 1 + x * bytesPerSample;
        if (bits === 16) { raw[at] = v >> 8; raw[at + 1] = v & 255; } else raw[at] = v;
      }
    }
    const header = new Uint8Array(13);
    const view = new DataView(header.buffer);
    view.setUint32(0, width);
    view.setUint32(4, height);
    header[8] = bits; // colour type 0 (greyscale), compression 0, filter 0, no interlace
    const parts = [SIGNATURE, chunk("IHDR", header), chunk("IDAT", await deflate(raw)),
                   chunk("IEND", new Uint8Array(0))];
    return new Blob(parts, { type: "image/png" });
  }

  /** The label image of masks (Uint8Array each, later on top): 1, 2, ... per mask, 0 elsewhere. */
  async function labelPng(masks, width, height) {
    const bits = masks.length > 255 ? 16 : 8;
    const labels = bits === 16 ? new Uint16Array(width * height) : new Uint8Array(width * height);
    masks.forEach((mask, k) => {
      for (let i = 0; i < labels.length; i++) if (mask[i]) labels[i] = k + 1;
    });
    return greyPng(labels, width, height, bits);
  }

  window.sam2png = { crc32, greyPng, labelPng };
})();
