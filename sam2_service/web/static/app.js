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
const MAX_CLOSES_WHILE_LOADING = 3; // the image is not sent again after this many
const HEALTH_EVERY_MS = 5000;
const IDLE_CLOSE = 4000, MESSAGE_TOO_BIG = 1009; // WebSocket close codes (docs/web.md)
const TOKEN = new URLSearchParams(location.search).get("token"); // --auth token
const INSTANCE = document.querySelector('meta[name="sam2-instance"]')?.content;
const FOREIGN = "the gateway at this address is not the one this page came from (it was " +
                "restarted, or another program holds the port); nothing was sent to it. " +
                "Reload the page to use it.";

const $ = (id) => document.getElementById(id);
const els = {
  stage: $("stage"), image: $("image"), overlay: $("overlay"), file: $("file"), zoom: $("zoom"),
  showMask: $("show-mask"), status: $("status"), session: $("session"), size: $("size"),
  object: $("object"), points: $("points"), score: $("score"), latency: $("latency"),
  reset: $("reset"), newObject: $("new-object"), clear: $("clear"),
  download: $("download"), downloadLabels: $("download-labels"), daemon: $("daemon"),
  warning: $("warning"),
};

// Everything the page knows; exposed as window.sam2 for tests and the curious.
const S = {
  ws: null, sessionId: null, reconnectMs: 250,
  image: null,        // {dataUrl, width, height, element}
  loaded: false,      // the gateway has the image's embedding
  pending: false,     // the image was sent and has no answer yet
  failed: null,       // why the image did not load (the gateway's error), else null
  closesWhileLoading: 0, gaveUp: null, // connections lost while the image was pending; why we stopped
  idle: false,        // the gateway closed the session as idle: reconnect on the next action
  foreign: false,     // the gateway at this address is not the one the page came from
  health: null, maxPoints: null, // the last /health answer; the daemon's limits.maxPoints
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

function withToken(path) {
  return TOKEN ? `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(TOKEN)}` : path;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}${withToken("/ws/realtime")}`);
  S.ws = ws;
  S.idle = false;
  ws.onmessage = (event) => onMessage(JSON.parse(event.data));
  ws.onclose = (event) => {
    if (S.ws !== ws) return;
    const wasPending = S.pending;
    Object.assign(S, { loaded: false, pending: false, sessionId: null });
    els.session.textContent = "–";
    if (S.foreign) return;
    if (event.code === IDLE_CLOSE) {
      S.idle = true;
      setStatus("the gateway closed this idle session; click or open an image to reconnect");
      return;
    }
    if (wasPending) noteLostImage(event.code);
    const why = S.gaveUp ? `${S.gaveUp}; ` : "";
    setStatus(`${why}disconnected; reconnecting in ${(S.reconnectMs / 1000).toFixed(1)} s…`, true);
    setTimeout(connect, S.reconnectMs);
    S.reconnectMs = Math.min(S.reconnectMs * 2, RECONNECT_MAX_MS);
  };
}

/** The connection closed while the image was loading: stop sending it when that repeats. */
function noteLostImage(code) {
  S.closesWhileLoading += 1;
  if (code === MESSAGE_TOO_BIG) {
    S.gaveUp = "the image is larger than the gateway accepts (--max-message-mb); it is not sent again";
  } else if (S.closesWhileLoading >= MAX_CLOSES_WHILE_LOADING) {
    S.gaveUp = `the gateway closed the connection ${S.closesWhileLoading} times while loading ` +
               "this image; it is not sent again (open another image, or reload the page)";
  }
}

function reconnectIfIdle() {
  if (!S.idle) return false;
  setStatus("reconnecting…");
  connect();
  return true;
}

function send(message) { // true if it went out
  if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return false;
  S.ws.send(JSON.stringify(message));
  return true;
}

const handlers = {
  session_created(m) {
    if (INSTANCE && m.instance !== INSTANCE) { // another start of the gateway, or another program
      S.foreign = true;
      S.ws.close();
      setStatus(FOREIGN, true);
      return;
    }
    S.sessionId = m.session_id;
    S.reconnectMs = 250;
    els.session.textContent = m.session_id;
    pollHealth();
    if (S.image && !S.gaveUp) sendImage();
    else if (S.gaveUp) setStatus(S.gaveUp, true);
    else sayDaemon();
  },
  image_loaded(m) {
    Object.assign(S, { loaded: true, pending: false, failed: null, closesWhileLoading: 0 });
    setStatus(`image ready (${m.width}×${m.height}); click on an object`);
    for (const p of S.points) send({type: "click", x: p.x, y: p.y, label: p.label}); // after a reconnect
    if (S.points.length) S.clickTime = performance.now();
    updateControls();
  },
  point_added(m) { els.points.textContent = String(m.total_points); },
  segmentation_result(m) { showResult(m); },
  points_cleared() {},
  error(m) {
    if (S.pending) { S.pending = false; S.failed = m.message; } // the image's answer
    setStatus(m.message, true);
  },
};

function onMessage(m) {
  const handler = handlers[m.type];
  if (handler) handler(m); else console.warn("unknown message", m);
}

function sendImage(status = "sending the image; the model computes its embedding…", isError = false) {
  Object.assign(S, { loaded: false, failed: null });
  setStatus(status, isError);
  S.pending = send({type: "init", image: S.image.dataUrl}); // else sent on the next connection
  updateControls();
}

// ---- the daemon's state (/health) ----------------------------------------------------------

/** true or false from the last /health answer, null before one came. */
function daemonUp() { return S.health ? Boolean(S.health.daemon?.reachable) : null; }

/** The status line when no image is open: connected, and whether the daemon answers. */
function sayDaemon() {
  if (daemonUp() === false) {
    setStatus("connected to the gateway, but the daemon is down (see Daemon); start it with " +
              "`make run`", true);
  } else setStatus("connected; open an image");
}

async function pollHealth() {
  let body = null;
  try {
    body = await (await fetch(withToken("/health"), { cache: "no-store" })).json();
  } catch {
    els.daemon.textContent = "unknown: the gateway does not answer";
    return;
  }
  const was = daemonUp();
  S.health = body;
  const d = body.daemon || {};
  S.maxPoints = d.limits?.maxPoints ?? S.maxPoints;
  els.daemon.textContent = d.reachable ? `up (${d.model ?? "?"} on ${d.device ?? "?"})`
                                       : `down: ${d.error ?? "not reachable"}`;
  els.daemon.classList.toggle("error", !d.reachable);
  els.warning.textContent = d.warning ?? "";
  els.warning.hidden = !d.warning;
  if (was === daemonUp() || !S.sessionId) return; // say it when it changes
  if (!S.image) sayDaemon();
  else if (d.reachable && S.failed && !S.gaveUp) sendImage("the daemon is back; sending the image again…");
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

/** Why the image is not ready yet, for a click that came too early. */
function notLoadedWhy() {
  if (!S.sessionId) return "not connected to the gateway (reconnecting); the image is sent once it is";
  if (daemonUp() === false) {
    return `the daemon is down (${S.health.daemon.error ?? "not reachable"}); the image is ` +
           "sent again once it is back";
  }
  return "the image is still loading";
}

function addPoint(event, label) {
  if (S.foreign) { setStatus(FOREIGN, true); return; }
  if (!S.image || reconnectIfIdle()) return;
  if (S.gaveUp) { setStatus(S.gaveUp, true); return; }
  if (S.failed && S.sessionId) {
    sendImage(`the image did not load (${S.failed}); sending it again…`, true);
    return;
  }
  if (!S.loaded) { setStatus(`wait: ${notLoadedWhy()}`, true); return; }
  if (S.maxPoints && S.points.length >= S.maxPoints) {
    setStatus(`this object has ${S.points.length} points, the daemon's limit (maxPoints); ` +
              "reset the points or start a new object", true);
    return;
  }
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
  if (S.foreign) { setStatus(FOREIGN, true); return; }
  clearImage(false);
  Object.assign(S, { gaveUp: null, closesWhileLoading: 0 });
  reconnectIfIdle();
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
  setStatus("points cleared; click on the object");
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

async function downloadLabels() { // greyscale: 8-bit up to 255 objects, else 16-bit
  const { width, height } = S.image;
  const masks = [...S.objects, S.current].filter(Boolean).map((o) => o.mask);
  const url = URL.createObjectURL(await window.sam2png.labelPng(masks, width, height));
  download(url, `${stem()}-labels.png`);
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
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

document.addEventListener("keydown", reconnectIfIdle);

updateControls();
connect();
pollHealth();
setInterval(pollHealth, HEALTH_EVERY_MS);
