// shoal smart client dashboard: polls /api/*, draws charts on canvas, plays the stream via MSE.
"use strict";

const COLORS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176", "#4db6ac", "#f06292"];
const dash = (window.__dash = { polls: 0, chartsDrawn: 0, appended: 0, mime: null, supported: null, errors: [] });

// With --auth-dir the /api routes need a viewer key: from #key=... once, then localStorage.
function authHeaders() {
  const m = location.hash.match(/key=([^&]+)/);
  if (m) { localStorage.setItem("shoal-api-key", decodeURIComponent(m[1])); history.replaceState(null, "", location.pathname); }
  const key = localStorage.getItem("shoal-api-key");
  return key ? { Authorization: "Bearer " + key } : {};
}

async function authFetch(path) {
  let r = await fetch(path, { cache: "no-store", headers: authHeaders() });
  if (r.status === 401 && !dash.asked) {
    dash.asked = true;
    const key = window.prompt("This dashboard needs a viewer API key (shoal auth key create --role viewer):");
    if (key) { localStorage.setItem("shoal-api-key", key.trim()); r = await fetch(path, { cache: "no-store", headers: authHeaders() }); }
  }
  return r;
}

async function getJSON(path) {
  const r = await authFetch(path);
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function fmt(v, digits) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
}

// ---- charts --------------------------------------------------------------------------------
function drawChart(canvas, series, opts) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 48, bottom = 18, top = 8, right = 8;
  ctx.clearRect(0, 0, w, h);
  let tmin = Infinity, tmax = -Infinity, vmin = opts.ymin ?? Infinity, vmax = -Infinity;
  for (const s of series) for (const [t, v] of s.points) {
    tmin = Math.min(tmin, t); tmax = Math.max(tmax, t);
    vmin = Math.min(vmin, v); vmax = Math.max(vmax, v);
  }
  if (opts.ymaxAtLeast !== undefined) vmax = Math.max(vmax, opts.ymaxAtLeast);
  if (!isFinite(tmin) || tmax <= tmin) { tmax = (isFinite(tmin) ? tmin : 0) + 1; if (!isFinite(tmin)) tmin = 0; }
  if (!isFinite(vmin)) vmin = 0;
  if (!(vmax > vmin)) vmax = vmin + 1;
  const log = !!opts.log;
  const tr = (v) => (log ? Math.log10(Math.max(v, 0.01)) : v);
  const lo = tr(log ? Math.max(vmin, 0.01) : vmin), hi = tr(vmax);
  const x = (t) => left + ((t - tmin) / (tmax - tmin)) * (w - left - right);
  const y = (v) => top + (1 - (tr(v) - lo) / (hi - lo || 1)) * (h - top - bottom);
  ctx.strokeStyle = "#2b3a4a"; ctx.fillStyle = "#8fa3b6"; ctx.font = "11px sans-serif"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const yy = top + (i / 4) * (h - top - bottom);
    ctx.beginPath(); ctx.moveTo(left, yy); ctx.lineTo(w - right, yy); ctx.stroke();
    const val = log ? Math.pow(10, hi - (i / 4) * (hi - lo)) : hi - (i / 4) * (hi - lo);
    ctx.fillText(val >= 100 ? val.toFixed(0) : val.toFixed(1), 4, yy + 4);
  }
  ctx.fillText(((tmax - tmin)).toFixed(0) + " s shown", w - 90, h - 4);
  for (const [i, s] of series.entries()) {
    ctx.strokeStyle = s.color || COLORS[i % COLORS.length]; ctx.lineWidth = 2; ctx.beginPath();
    s.points.forEach(([t, v], k) => (k ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
    ctx.stroke();
    if (s.label) { ctx.fillStyle = ctx.strokeStyle; ctx.fillText(s.label, left + 6 + i * 120, top + 12); }
  }
  dash.chartsDrawn++;
}

function shortNode(url) { return url.replace(/^https?:\/\//, ""); }

function render(status, stats, metrics) {
  document.getElementById("video").textContent = status.video_id || "no video";
  document.getElementById("state").textContent = status.state;
  document.getElementById("strategy").textContent = status.strategy;
  const b = status.buffer, bs = status.buffer_stats, ss = status.scheduler_stats;
  document.getElementById("t-level").textContent = fmt(b.buffer_level_sec, 1);
  document.getElementById("t-startup").textContent = fmt(status.startup_latency, 2);
  document.getElementById("t-rebuf").textContent = bs.rebuffering_events;
  document.getElementById("t-stall").textContent = fmt(bs.total_stall_sec, 1);
  document.getElementById("t-pos").textContent = fmt(b.position_sec, 1) + " / " + fmt(b.duration_sec, 0);
  document.getElementById("t-dl").textContent = ss.successful + "/" + ss.total_downloads;
  document.getElementById("t-fo").textContent = ss.failover_count;
  document.getElementById("t-hedge").textContent = ss.hedged_requests;

  const t0 = metrics.buffer_history.length ? metrics.buffer_history[0].timestamp : 0;
  drawChart(document.getElementById("c-buffer"),
    [{ points: metrics.buffer_history.map((p) => [p.timestamp - t0, p.level]), color: COLORS[0] }],
    { ymin: 0, ymaxAtLeast: b.target_buffer_sec });
  drawChart(document.getElementById("c-throughput"),
    [{ points: metrics.throughput_history.map((p) => [p.timestamp - t0, p.mbps]), color: COLORS[1] }], { ymin: 0 });
  drawChart(document.getElementById("c-scores"),
    Object.entries(metrics.node_score_history).map(([node, pts], i) => ({
      label: shortNode(node), color: COLORS[i % COLORS.length],
      points: pts.map((p) => [p.timestamp - t0, p.score]),
    })), { log: true });

  const rows = Object.entries(stats.nodes).map(([node, n]) => {
    const ping = n.reachable === null ? '<span class="unknown">?</span>'
      : n.reachable ? '<span class="up">up</span>' : '<span class="down">down</span>';
    return `<tr><td>${shortNode(node)}</td><td>${ping}</td><td>${fmt(n.latency_ms, 1)}</td>` +
      `<td>${fmt(n.bandwidth_mbps, 0)}</td><td>${fmt(n.success_rate, 2)}</td><td>${fmt(n.score, 1)}</td>` +
      `<td>${n.inflight}</td><td>${n.downloads}</td><td>${n.failures}</td></tr>`;
  });
  document.getElementById("nodes").innerHTML = rows.join("");
}

async function poll() {
  try {
    const [status, stats, metrics] = await Promise.all([
      getJSON("api/status"), getJSON("api/stats"), getJSON("api/metrics"),
    ]);
    render(status, stats, metrics);
    dash.polls++;
  } catch (e) {
    console.warn("poll failed:", e.message);
  }
  setTimeout(poll, 1000);
}

// ---- the video, through Media Source Extensions --------------------------------------------
function note(text) { document.getElementById("note").textContent = text; }

async function waitStream() {
  for (;;) {
    try {
      const s = await getJSON("api/stream");
      if (s.mime) return s;
    } catch (e) { /* not ready */ }
    await new Promise((r) => setTimeout(r, 300));
  }
}

function appendTo(sb, data) {
  return new Promise((resolve, reject) => {
    const done = () => { sb.removeEventListener("updateend", done); sb.removeEventListener("error", fail); resolve(); };
    const fail = () => { sb.removeEventListener("updateend", done); sb.removeEventListener("error", fail); reject(new Error("append failed")); };
    sb.addEventListener("updateend", done);
    sb.addEventListener("error", fail);
    sb.appendBuffer(data);
  });
}

async function startVideo() {
  const video = document.getElementById("player");
  if (!window.MediaSource) { note("this browser has no Media Source Extensions"); dash.supported = false; return; }
  const first = await waitStream();
  dash.mime = first.mime;
  dash.supported = MediaSource.isTypeSupported(first.mime);
  if (!dash.supported) { note("this browser cannot play " + first.mime); return; }
  const ms = new MediaSource();
  video.src = URL.createObjectURL(ms);
  await new Promise((r) => ms.addEventListener("sourceopen", r, { once: true }));
  const sb = ms.addSourceBuffer(first.mime);
  let next = first.first_kept;
  for (;;) {
    const s = await getJSON("api/stream");
    if (next < s.first_kept) next = s.first_kept;
    while (next < s.available) {
      const r = await authFetch("api/segment/" + next);
      if (!r.ok) break;
      await appendTo(sb, await r.arrayBuffer());
      dash.appended = ++next;
      if (video.paused && video.readyState >= 2) video.play().catch(() => {});
      // keep the SourceBuffer small on long videos
      if (video.currentTime > 90 && !sb.updating) {
        await new Promise((res) => { sb.addEventListener("updateend", res, { once: true }); sb.remove(0, video.currentTime - 60); });
      }
    }
    if (s.finished && next >= s.total_chunks) { if (ms.readyState === "open") ms.endOfStream(); break; }
    await new Promise((r) => setTimeout(r, 250));
  }
}

poll();
startVideo().catch((e) => { note("video: " + e.message); console.warn("video:", e.message); });
