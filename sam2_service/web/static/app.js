// SAM2 click-to-segment page: plain canvas + WebSocket, no framework, no build step.
// Protocol: docs/web.md. The image canvas and the mask layers hold image pixels; the overlay
// canvas is sized in device pixels and everything on it is drawn scaled, so a click maps to an
// image pixel as floor((clientX - left) * width / displayedWidth) at any zoom and devicePixelRatio.
"use strict";

const PALETTE = [[30, 144, 255], [255, 133, 27], [177, 13, 201], [255, 220, 0],
                 [57, 204, 204], [240, 18, 190], [1, 255, 112], [133, 20, 75]];
const MASK_ALPHA = 110;          // of 255: the overlay's opacity
const LONG_PRESS_MS = 500;       // touch: longer than this = background point
const RECONNECT_MAX_MS = 5000;

const $ = (id) => document.getElementById(id);
const els = {
  stage: $("stage"), image: $("image"), overlay: $("overlay"), file: $("file"), zoom: $("zoom"),
  showMask: $("show-mask"), status: $("status"), session: $("session"), size: $("size"),
  object: $("object"), points: $("points"), score: $("score"), latency: $("latency"),
  reset: $("reset"), newObject: $("new-object"), clear: $("clear"),
  download: $("download"), downloadLabels: $("download-labels"),
};

// Everything the page knows; exposed as window.sam2 for tests and the curious.
const S = {
  ws: null, sessionId: null, reconnectMs: 250,
  image: null,        // {dataUrl, width, height, element}
  loaded: false,      // the gateway has the image's embedding
  points: [],         // [{x, y, label}] of the current object, image pixels
  current: null,      // {mask: Uint8Array, layer: canvas, png: base64, score}
  objects: [],        // finished objects: [{mask, layer, color}]
  clickTime: null, lastLatencyMs: null, lastResult: null,
};
window.sam2 = S;

function setStatus(text, isError = false) {
  els.status.textContent = text;
  els.status.classList.toggle("error", isError);
}

function color() { return PALETTE[S.objects.length % PALETTE.length]; }

// ---- WebSocket ---------------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/realtime`);
  S.ws = ws;
  ws.onmessage = (event) => onMessage(JSON.parse(event.data));
  ws.onclose = () => {
    if (S.ws !== ws) return;
    S.loaded = false;
    S.sessionId = null;
    els.session.textContent = "–";
    setStatus(`disconnected; reconnecting in ${(S.reconnectMs / 1000).toFixed(1)} s…`, true);
    setTimeout(connect, S.reconnectMs);
    S.reconnectMs = Math.min(S.reconnectMs * 2, RECONNECT_MAX_MS);
  };
}

function send(message) {
  if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify(message));
}

const handlers = {
  session_created(m) {
    S.sessionId = m.session_id;
    S.reconnectMs = 250;
    els.session.textContent = m.session_id;
    if (S.image) sendImage(); else setStatus("connected; open an image");
  },
  image_loaded(m) {
    S.loaded = true;
    setStatus(`image ready (${m.width}×${m.height}); click on an object`);
    for (const p of S.points) send({type: "click", x: p.x, y: p.y, label: p.label}); // after a reconnect
    if (S.points.length) S.clickTime = performance.now();
    updateControls();
  },
  point_added(m) { els.points.textContent = String(m.total_points); },
  segmentation_result(m) { showResult(m); },
  points_cleared() {},
  error(m) { setStatus(m.message, true); },
};

function onMessage(m) {
  const handler = handlers[m.type];
  if (handler) handler(m); else console.warn("unknown message", m);
}

function sendImage() {
  S.loaded = false;
  setStatus("sending the image; the model computes its embedding…");
  send({type: "init", image: S.image.dataUrl});
  updateControls();
}

// ---- masks ---------------------------------------------------------------------------------

async function decodeMask(png) {
  const img = new Image();
  img.src = "data:image/png;base64," + png;
  await img.decode();
  const { width, height } = S.image;
  const c = document.createElement("canvas");
  c.width = width; c.height = height;
  const ctx = c.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const mask = new Uint8Array(width * height);
  for (let i = 0; i < mask.length; i++) mask[i] = rgba[4 * i] > 127 ? 255 : 0;
  return mask;
}

function maskLayer(mask, [r, g, b]) {
  const { width, height } = S.image;
  const c = document.createElement("canvas");
  c.width = width; c.height = height;
  const ctx = c.getContext("2d");
  const data = ctx.createImageData(width, height);
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) continue;
    data.data.set([r, g, b, MASK_ALPHA], 4 * i);
  }
  ctx.putImageData(data, 0, 0);
  return c;
}

async function showResult(m) {
  if (!S.image || m.num_points !== S.points.length) return; // a skipped intermediate result
  const image = S.image;
  const mask = await decodeMask(m.mask);
  if (S.image !== image || m.num_points !== S.points.length) return;
  S.current = { mask, layer: maskLayer(mask, color()), png: m.mask, score: m.score };
  S.lastResult = m;
  if (S.clickTime !== null) {
    S.lastLatencyMs = performance.now() - S.clickTime;
    els.latency.textContent = `${S.lastLatencyMs.toFixed(0)} ms (model ${m.inference_time_ms?.toFixed(0) ?? "?"} ms)`;
  }
  els.score.textContent = m.score.toFixed(3);
  setStatus(`mask for ${m.num_points} point${m.num_points === 1 ? "" : "s"}`);
  draw();
  updateControls();
}

// ---- drawing -------------------------------------------------------------------------------

function displayScale() {
  const { width, height } = S.image;
  if (els.zoom.value !== "fit") return Number(els.zoom.value);
  const room = els.stage.parentElement.clientWidth - 240;
  const tall = Math.max(200, window.innerHeight - 90);
  return Math.min(room / width, tall / height);
}

function layout() {
  if (!S.image) return;
  const { width, height } = S.image;
  const scale = displayScale();
  const cssW = width * scale, cssH = height * scale;
  for (const c of [els.image, els.overlay]) {
    c.style.width = `${cssW}px`;
    c.style.height = `${cssH}px`;
  }
  const dpr = window.devicePixelRatio || 1;
  els.overlay.width = Math.max(1, Math.round(cssW * dpr));
  els.overlay.height = Math.max(1, Math.round(cssH * dpr));
  draw();
}

function draw() {
  const ctx = els.overlay.getContext("2d");
  ctx.clearRect(0, 0, els.overlay.width, els.overlay.height);
  if (!S.image) return;
  const sx = els.overlay.width / S.image.width, sy = els.overlay.height / S.image.height;
  ctx.imageSmoothingEnabled = false;
  if (els.showMask.checked) {
    for (const o of [...S.objects, S.current].filter(Boolean)) {
      ctx.drawImage(o.layer, 0, 0, els.overlay.width, els.overlay.height);
    }
  }
  const radius = 6 * (window.devicePixelRatio || 1);
  for (const p of S.points) {
    ctx.beginPath();
    ctx.arc((p.x + 0.5) * sx, (p.y + 0.5) * sy, radius, 0, 2 * Math.PI);
    ctx.fillStyle = p.label ? "#2ecc40" : "#ff4136";
    ctx.fill();
    ctx.lineWidth = 2 * (window.devicePixelRatio || 1);
    ctx.strokeStyle = "#fff";
    ctx.stroke();
  }
}

function updateControls() {
  const has = Boolean(S.image);
  els.stage.classList.toggle("empty", !has);
  els.reset.disabled = !has || !S.points.length;
  els.newObject.disabled = !S.current;
  els.clear.disabled = !has;
  els.download.disabled = !S.current;
  els.downloadLabels.disabled = !S.objects.length;
  els.points.textContent = String(S.points.length);
  els.object.textContent = String(S.objects.length + 1);
  els.size.textContent = has ? `${S.image.width} × ${S.image.height}` : "–";
}

// ---- input ---------------------------------------------------------------------------------

/** The image pixel under a pointer event: exact at any zoom and devicePixelRatio. */
function toImagePixel(event) {
  const rect = els.overlay.getBoundingClientRect();
  const { width, height } = S.image;
  const x = Math.floor((event.clientX - rect.left) * width / rect.width);
  const y = Math.floor((event.clientY - rect.top) * height / rect.height);
  return { x: Math.min(width - 1, Math.max(0, x)), y: Math.min(height - 1, Math.max(0, y)) };
}

function addPoint(event, label) {
  if (!S.image) return;
  if (!S.loaded) { setStatus("wait: the image is still loading", true); return; }
  const { x, y } = toImagePixel(event);
  S.points.push({ x, y, label });
  S.clickTime = performance.now();
  send({ type: "click", x, y, label });
  draw();
  updateControls();
}

let press = null; // touch or pen: {timer, x, y, event}

els.overlay.addEventListener("contextmenu", (e) => e.preventDefault());
els.overlay.addEventListener("pointerdown", (e) => {
  if (e.pointerType === "mouse") {
    if (e.button === 0 || e.button === 2) addPoint(e, e.button === 0 ? 1 : 0);
    return;
  }
  const start = { clientX: e.clientX, clientY: e.clientY };
  press = { start, timer: setTimeout(() => { press = null; addPoint(start, 0); }, LONG_PRESS_MS) };
});
els.overlay.addEventListener("pointermove", (e) => {
  if (press && Math.hypot(e.clientX - press.start.clientX, e.clientY - press.start.clientY) > 10) {
    clearTimeout(press.timer);
    press = null;
  }
});
els.overlay.addEventListener("pointerup", () => {
  if (!press) return;
  clearTimeout(press.timer);
  addPoint(press.start, 1);
  press = null;
});
els.overlay.addEventListener("pointercancel", () => { if (press) clearTimeout(press.timer); press = null; });

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function openFile(file) {
  if (!file) return;
  let dataUrl = await readDataUrl(file);
  const element = new Image();
  element.src = dataUrl;
  try { await element.decode(); } catch { setStatus(`cannot read ${file.name} as an image`, true); return; }
  if (!/^data:image\/(png|jpeg);/.test(dataUrl)) { // the daemon takes PNG and JPEG: convert
    const c = document.createElement("canvas");
    c.width = element.naturalWidth; c.height = element.naturalHeight;
    c.getContext("2d").drawImage(element, 0, 0);
    dataUrl = c.toDataURL("image/png");
  }
  clearImage(false);
  S.image = { dataUrl, width: element.naturalWidth, height: element.naturalHeight, element, name: file.name };
  els.image.width = S.image.width; els.image.height = S.image.height;
  els.image.getContext("2d").drawImage(element, 0, 0);
  updateControls();
  layout();
  sendImage();
}

function clearImage(tell = true) {
  if (tell && S.points.length) send({ type: "reset" });
  Object.assign(S, { image: null, loaded: false, points: [], current: null, objects: [],
                     lastResult: null });
  els.score.textContent = "–";
  els.latency.textContent = "–";
  draw();
  updateControls();
  if (tell) setStatus("image cleared; open another");
}

function resetPoints() {
  S.points = []; S.current = null;
  send({ type: "reset" });
  els.score.textContent = "–";
  draw(); updateControls();
}

function newObject() {
  if (!S.current) return;
  S.objects.push({ mask: S.current.mask, layer: S.current.layer, color: color() });
  resetPoints();
  setStatus(`object ${S.objects.length} kept; click on the next object`);
}

function download(href, name) {
  const a = document.createElement("a");
  a.href = href; a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
}

function stem() { return (S.image.name || "image").replace(/\.[^.]*$/, ""); }

function downloadLabels() {
  const { width, height } = S.image;
  const c = document.createElement("canvas");
  c.width = width; c.height = height;
  const ctx = c.getContext("2d");
  const data = ctx.createImageData(width, height);
  const masks = [...S.objects, S.current].filter(Boolean).map((o) => o.mask);
  for (let i = 0; i < width * height; i++) {
    let label = 0;
    masks.forEach((m, k) => { if (m[i]) label = k + 1; }); // later objects on top
    data.data.set([label, label, label, 255], 4 * i);
  }
  ctx.putImageData(data, 0, 0);
  download(c.toDataURL("image/png"), `${stem()}-labels.png`);
}

els.file.addEventListener("change", () => openFile(els.file.files[0]));
els.stage.addEventListener("dragover", (e) => { e.preventDefault(); els.stage.classList.add("drag"); });
els.stage.addEventListener("dragleave", () => els.stage.classList.remove("drag"));
els.stage.addEventListener("drop", (e) => {
  e.preventDefault();
  els.stage.classList.remove("drag");
  openFile(e.dataTransfer.files[0]);
});
els.reset.addEventListener("click", resetPoints);
els.newObject.addEventListener("click", newObject);
els.clear.addEventListener("click", () => clearImage(true));
els.showMask.addEventListener("change", draw);
els.zoom.addEventListener("change", layout);
window.addEventListener("resize", layout);
els.download.addEventListener("click", () =>
  download("data:image/png;base64," + S.current.png, `${stem()}-mask.png`));
els.downloadLabels.addEventListener("click", downloadLabels);

updateControls();
connect();
