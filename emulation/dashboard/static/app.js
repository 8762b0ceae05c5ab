// EPIC testbed dashboard: renders the server's pushed view (server-sent events). No libraries.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  if (token) history.replaceState(null, "", location.pathname);  // keep it out of the bar
  const $ = (id) => document.getElementById(id);
  const maps = [];  // the last few decoded maps, newest last
  const MAX_MAPS = 8;

  // -- formatting ---------------------------------------------------------------------------
  const num = (v, d = 0) => (typeof v === "number" && isFinite(v)) ? v.toFixed(d) : "–";
  const ms = (v) => (typeof v === "number") ? (v * 1e3).toFixed(v < 0.01 ? 2 : 1) : "–";
  function bytes(v) {
    if (typeof v !== "number") return "–";
    const u = ["B", "kB", "MB", "GB"]; let i = 0;
    while (v >= 1000 && i < u.length - 1) { v /= 1000; i++; }
    return v.toFixed(i ? 1 : 0) + " " + u[i];
  }
  const bps = (v) => (typeof v !== "number") ? "?" :
    v >= 1e6 ? (v / 1e6).toFixed(v >= 1e7 ? 0 : 1) + " Mbit/s" : (v / 1e3).toFixed(0) + " kbit/s";
  const clock = (t) => new Date(t * 1000).toLocaleTimeString();
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function sv(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function row(cells, attrs) {
    const tr = el("tr", attrs);
    for (const c of cells) {
      const td = (c && typeof c === "object" && c.node) ? c.node : el("td", c && c.attrs, c && c.text !== undefined ? c.text : c);
      tr.appendChild(td);
    }
    return tr;
  }

  // -- colour map (viridis, 9 stops interpolated) ------------------------------------------
  const STOPS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  const LUT = new Uint8Array(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = i / 255 * (STOPS.length - 1), k = Math.min(Math.floor(x), STOPS.length - 2), f = x - k;
    for (let c = 0; c < 3; c++) LUT[i * 3 + c] = Math.round(STOPS[k][c] * (1 - f) + STOPS[k + 1][c] * f);
  }
  function decodeU16(b64) {
    const bin = atob(b64), buf = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) buf[i] = bin.charCodeAt(i);
    return new Uint16Array(buf.buffer);
  }
  function paint(canvas, b64, range) {
    const ctx = canvas.getContext("2d");
    if (!b64) { ctx.clearRect(0, 0, canvas.width, canvas.height); return false; }
    const v = decodeU16(b64), img = ctx.createImageData(70, 70), [lo, hi] = range;
    for (let i = 0; i < v.length; i++) {
      const t = Math.max(0, Math.min(255, Math.round((v[i] - lo) / (hi - lo) * 255)));
      img.data[i * 4] = LUT[t * 3]; img.data[i * 4 + 1] = LUT[t * 3 + 1];
      img.data[i * 4 + 2] = LUT[t * 3 + 2]; img.data[i * 4 + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    return true;
  }
  (function colorbar() {
    const c = $("cbar"), ctx = c.getContext("2d"), img = ctx.createImageData(c.width, c.height);
    for (let y = 0; y < c.height; y++) {
      const t = Math.round((1 - y / (c.height - 1)) * 255);
      for (let x = 0; x < c.width; x++) {
        const o = (y * c.width + x) * 4;
        img.data[o] = LUT[t * 3]; img.data[o + 1] = LUT[t * 3 + 1]; img.data[o + 2] = LUT[t * 3 + 2]; img.data[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
  })();

  // -- the topology graph --------------------------------------------------------------------
  function drawGraph(view) {
    const g = $("graph"), devices = view.devices || [], roles = view.roles || {};
    const rowH = 52, top = 34, h = Math.max(top * 2 + rowH * devices.length, 220);
    g.setAttribute("viewBox", `0 0 960 ${h}`);
    while (g.firstChild) g.removeChild(g.firstChild);
    const X = { device: 70, proxy: 420, medium: 600, broker: 770, central: 900 };
    const yOf = (i) => top + rowH * i + rowH / 2;
    const mid = h / 2;
    const edges = sv("g"), nodes = sv("g");
    g.appendChild(edges); g.appendChild(nodes);
    // media: one node per link profile, at the mean height of its devices
    const media = {};
    Object.entries(view.links || {}).forEach(([name, link]) => {
      const ys = devices.map((d, i) => d.link === name ? yOf(i) : null).filter((y) => y !== null);
      if (ys.length) media[name] = { y: ys.reduce((a, b) => a + b) / ys.length, link };
    });
    const proxiesUp = roles.proxies && roles.proxies.alive !== false;
    devices.forEach((d, i) => {
      const y = yOf(i), state = d.link_state || "idle";
      const w = state === "active" ? Math.min(2 + Math.log10(1 + (d.up_bytes_per_s || 0)), 8) : 2.5;
      edges.appendChild(sv("path", { class: `edge ${state}`, "stroke-width": w,
        d: `M${X.device + 22},${y} L${X.proxy - 34},${y}`, "data-device": d.id }));
      const spec = d.link_spec || {};
      const label = `${d.link || "?"}: ${bps(spec.bandwidth_bps)}, ${num((spec.delay_s || 0) * 1e3, 1)} ms, loss ${num(spec.loss || 0, 3)}`;
      edges.appendChild(sv("text", { x: (X.device + X.proxy) / 2 - 10, y: y - 7, "text-anchor": "middle", class: "sub" }, label));
      const live = `${bytes(d.up_bytes_per_s)}/s  ·  ${num(d.frames_per_s, 1)} frames/s` +
        (d.resent_rounds ? `  ·  ${d.resent_rounds} re-sends` : "") +
        (d.queue !== null && d.queue !== undefined ? `  ·  queue ${typeof d.queue === "object" ? JSON.stringify(d.queue) : d.queue}` : "");
      edges.appendChild(sv("text", { x: (X.device + X.proxy) / 2 - 10, y: y + 15, "text-anchor": "middle", class: "sub" }, live));
      if (d.reloaded_recently) {
        edges.appendChild(sv("text", { x: X.proxy - 40, y: y - 7, "text-anchor": "end", class: "sub reloaded" }, "↻ reloaded"));
      }
      const m = media[d.link];
      if (m) {
        edges.appendChild(sv("path", { class: `edge ${d.dead ? "dead" : state === "active" ? "active" : "idle"}`, "stroke-width": 1.5,
          d: `M${X.proxy + 34},${y} C${X.proxy + 90},${y} ${X.medium - 70},${m.y} ${X.medium - 52},${m.y}` }));
      }
      const node = sv("g", { class: `node device${d.dead ? " dead" : ""}`, "data-device": d.id,
        "data-state": d.dead ? "dead" : state });
      node.appendChild(sv("circle", { cx: X.device, cy: y, r: 20 }));
      node.appendChild(sv("text", { x: X.device, y: y + 4, "text-anchor": "middle" }, d.id.replace("device-", "d")));
      node.appendChild(sv("text", { x: X.device + 26, y: y - 20, class: "sub" }, d.id));
      node.appendChild(sv("text", { x: X.device + 80, y: y - 20, class: "dead-mark" }, "✖ DEAD"));
      const title = sv("title", {}, `${d.id}: ${d.dead ? "dead (kill-device)" : state}, MQTT ${d.mqtt_status || "–"}`);
      node.appendChild(title);
      nodes.appendChild(node);
      const p = sv("g", { class: `node role proxy${proxiesUp ? "" : " down"}` });
      p.appendChild(sv("rect", { x: X.proxy - 34, y: y - 12, width: 68, height: 24, rx: 4 }));
      p.appendChild(sv("text", { x: X.proxy, y: y + 4, "text-anchor": "middle", class: "sub" }, "proxy"));
      nodes.appendChild(p);
    });
    Object.entries(media).forEach(([name, m]) => {
      const n = sv("g", { class: "node medium", "data-link": name });
      n.appendChild(sv("rect", { x: X.medium - 52, y: m.y - 22, width: 104, height: 44, rx: 22 }));
      n.appendChild(sv("text", { x: X.medium, y: m.y - 2, "text-anchor": "middle" }, name));
      n.appendChild(sv("text", { x: X.medium, y: m.y + 13, "text-anchor": "middle", class: "sub" },
        `${m.link.kind} ${bps(m.link.bandwidth_bps)}`));
      nodes.appendChild(n);
      edges.appendChild(sv("path", { class: "edge idle", "stroke-width": 2,
        d: `M${X.medium + 52},${m.y} C${X.medium + 90},${m.y} ${X.broker - 80},${mid} ${X.broker - 42},${mid}` }));
    });
    const broker = roles.broker || {}, central = roles.central || {};
    // down: its process is gone, or central (reporting) cannot reach it; unknown: no reports
    const brokerDown = broker.alive === false || (!central.stale && !central.connected);
    const brokerUnknown = !brokerDown && broker.alive !== true && central.stale;
    const recent = broker.restarted_unix_s && (view.now_unix_s - broker.restarted_unix_s) < 30;
    edges.appendChild(sv("path", { class: `edge ${central.connected ? "active" : "down"}`, "stroke-width": 2.5,
      d: `M${X.broker + 42},${mid} L${X.central - 38},${mid}` }));
    const b = sv("g", { class: `node role broker${brokerDown ? " down" : recent ? " restarted" : ""}`,
      "data-role": "broker", "data-state": brokerDown ? "down" : brokerUnknown ? "unknown" : "up" });
    b.appendChild(sv("rect", { x: X.broker - 42, y: mid - 22, width: 84, height: 44, rx: 5 }));
    b.appendChild(sv("text", { x: X.broker, y: mid - 2, "text-anchor": "middle" }, "broker"));
    b.appendChild(sv("text", { x: X.broker, y: mid + 13, "text-anchor": "middle", class: "sub" },
      brokerDown ? "DOWN" : brokerUnknown ? "no status" : broker.restarts ? `restarted ×${broker.restarts}` : "Mosquitto"));
    nodes.appendChild(b);
    const c = sv("g", { class: `node role central${central.alive === false || (central.alive === true && central.stale) ? " down" : ""}`, "data-role": "central" });
    c.appendChild(sv("rect", { x: X.central - 38, y: mid - 22, width: 76, height: 44, rx: 5 }));
    c.appendChild(sv("text", { x: X.central, y: mid - 2, "text-anchor": "middle" }, "central"));
    c.appendChild(sv("text", { x: X.central, y: mid + 13, "text-anchor": "middle", class: "sub" },
      central.stale ? "no status" : central.connected ? "connected" : "disconnected"));
    nodes.appendChild(c);
  }

  // -- tables --------------------------------------------------------------------------------
  function drawDevices(view) {
    const body = $("devices").querySelector("tbody");
    body.replaceChildren(...(view.devices || []).map((d) => {
      const state = d.dead ? "dead" : d.link_state;
      const e = d.energy_j || {};
      return row([d.id, { text: d.dead ? "DEAD" : (d.mqtt_status || state), attrs: { class: `state-${state}` } },
        d.link || "–", { text: String(d.publishes), attrs: { "data-field": "publishes" } },
        num(d.frames_per_s, 1), String(d.frames_decoded), bytes(d.up_wire_bytes),
        num(d.up_bytes_per_s, 0), num(e.tx, 4), num(e.rx, 4), num(e.idle, 2),
        num(d.radio_w, 3), d.compute_j === null ? "–" : num(d.compute_j, 3), String(d.resent_rounds)],
      { "data-device": d.id, class: d.dead ? "dead" : "" });
    }));
    const total = (view.devices || []).reduce((a, d) => a + (d.publishes || 0), 0);
    $("devices").setAttribute("data-frames-total", String(total));
  }

  const STAGE_NAMES = { encode: "encode", link_broker: "link + broker", assembly: "assembly",
    decode: "decode", capture_to_decode: "capture → decode" };
  function drawStages(view) {
    const modes = Object.keys(view.stages || {}).sort();
    const head = $("stages").querySelector("thead"), body = $("stages").querySelector("tbody");
    if (!modes.length) { head.replaceChildren(row(["no gather decoded yet"])); body.replaceChildren(); return; }
    const h = el("tr"); h.appendChild(el("th", {}, "stage"));
    for (const m of modes) for (const q of ["p50", "p95", "p99"]) h.appendChild(el("th", {}, `${m.toUpperCase()} ${q}`));
    head.replaceChildren(h);
    body.replaceChildren(...Object.keys(STAGE_NAMES).map((s) => row([STAGE_NAMES[s],
      ...modes.flatMap((m) => { const p = (view.stages[m] || {})[s] || {}; return [ms(p.p50), ms(p.p95), ms(p.p99)]; })])));
  }
  function drawCentral(view) {
    const c = view.central || {}, rej = Object.values(c.frames_rejected || {}).reduce((a, b) => a + b, 0);
    const decoded = Object.entries(c.decoded || {}).map(([m, n]) => `${m} ${n}`).join(", ") || "0";
    const fid = Object.entries(view.fidelity || {}).map(([m, f]) => `${m}: MAE ${num(f.mae, 4)}, SSIM ${num(f.ssim, 3)}`).join("; ") || "–";
    $("central").querySelector("tbody").replaceChildren(
      row(["frames accepted", { text: String(c.frames_accepted || 0), attrs: { id: "frames-accepted" } }]),
      row(["frames rejected", String(rej)]),
      row(["gathers decoded", { text: decoded, attrs: { id: "gathers-decoded" } }]),
      row(["partial / dropped / pending", `${c.partial || 0} / ${c.dropped || 0} / ${c.pending || 0}`]),
      row(["mean fidelity", fid]));
  }
  function drawPrediction(view) {
    const p = view.prediction, head = $("prediction").querySelector("thead"), body = $("prediction").querySelector("tbody");
    $("pred-source").textContent = p ? p.source || "" : "none yet";
    if (!p || !p.modes) { head.replaceChildren(); body.replaceChildren(); return; }
    head.replaceChildren(row(["mode", "gather p50 ms", "p95 ms", "p99 ms", "live p50 ms", "comm J/gather", "bytes/gather"].map((t) => ({ node: el("th", {}, t) }))));
    body.replaceChildren(...Object.entries(p.modes).map(([m, s]) => {
      const lat = s.gather_latency_s || {}, live = ((view.stages || {})[m] || {}).capture_to_decode || {};
      const n = (view.gathers || {})[m] || 0;
      return row([m, ms(lat.p50), ms(lat.p95), ms(lat.p99), ms(live.p50),
        num(s.comm_j_per_gather, 5), bytes(s.uplink_bytes_per_gather)], { "data-mode": m, title: `${n} live gathers` });
    }));
  }
  function drawEvents(view) {
    $("events").replaceChildren(...(view.events || []).map((e) => {
      const li = el("li", { class: e.kind }); li.appendChild(el("span", { class: "t" }, clock(e.t)));
      li.appendChild(document.createTextNode(e.text)); return li;
    }));
  }

  // -- maps ----------------------------------------------------------------------------------
  function drawMaps() {
    const latest = maps[maps.length - 1];
    if (!latest) return;
    const canvas = $("map-latest");
    paint(canvas, latest.map_u16, latest.range_mps);
    canvas.setAttribute("data-gather", String(latest.gather));
    canvas.setAttribute("data-mode", latest.mode);
    const hasTruth = paint($("map-truth"), latest.truth_u16, latest.range_mps);
    $("truth-caption").textContent = hasTruth ? "truth" : "truth unknown";
    $("map-title").textContent = `${latest.mode.toUpperCase()} gather ${latest.gather}`;
    const m = latest.metrics, out = $("map-metrics");
    out.replaceChildren();
    out.appendChild(document.createTextNode(m ? `MAE ${num(m.mae, 4)}  ·  RMSE ${num(m.rmse, 4)}  ·  SSIM ${num(m.ssim, 3)}` : "no truth: no metrics"));
    if (latest.partial) out.appendChild(el("span", { class: "partial" }, `  ·  PARTIAL: without ${latest.absent.join(", ")}`));
    $("strip").replaceChildren(...maps.slice().reverse().map((e) => {
      const f = el("figure", { class: e.partial ? "partial" : "", title: e.partial ? `without ${e.absent.join(", ")}` : "all devices" });
      const c = el("canvas", { width: 70, height: 70 }); paint(c, e.map_u16, e.range_mps);
      f.appendChild(c); f.appendChild(el("figcaption", {}, `${e.mode} ${e.gather}${e.partial ? " ◐" : ""}`));
      return f;
    }));
  }

  function render(view) {
    $("testbed").textContent = view.testbed || "?";
    $("runtime").textContent = view.runtime || "";
    $("updated").textContent = view.now_unix_s ? `updated ${clock(view.now_unix_s)}` : "";
    drawGraph(view); drawDevices(view); drawStages(view); drawCentral(view);
    drawPrediction(view); drawEvents(view);
    document.body.setAttribute("data-version", String((+document.body.getAttribute("data-version") || 0) + 1));
  }

  // -- the event stream ----------------------------------------------------------------------
  const source = new EventSource("events" + (token ? "?token=" + encodeURIComponent(token) : ""));
  source.addEventListener("open", () => { $("conn").textContent = "live"; $("conn").className = "pill on"; });
  source.addEventListener("error", () => { $("conn").textContent = "reconnecting"; $("conn").className = "pill off"; });
  source.addEventListener("state", (ev) => render(JSON.parse(ev.data)));
  source.addEventListener("map", (ev) => {
    const entry = JSON.parse(ev.data);
    if (maps.length && entry.seq <= maps[maps.length - 1].seq) maps.length = 0;  // server restarted
    maps.push(entry);
    while (maps.length > MAX_MAPS) maps.shift();
    drawMaps();
  });
})();
