"""The ``/status`` page: one self-contained HTML document (no external assets).

It is kept as a Python string so it ships with the package without package data.
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>vmqtw status</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
  h1 { font-size: 1.4em; margin: 0 0 .3em; }
  .muted { color: #777; font-size: .9em; }
  .cards { display: flex; flex-wrap: wrap; gap: .8em; margin: 1em 0; }
  .card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em;
          min-width: 9em; }
  .card .v { font-size: 1.6em; font-weight: 600; }
  .card .k { color: #666; font-size: .85em; }
  table { border-collapse: collapse; background: #fff; }
  th, td { border: 1px solid #ddd; padding: .3em .7em; text-align: left; }
  th { background: #f0f0f0; }
  .down { color: #b00; font-weight: 600; }
  .issues li { color: #b00; }
  canvas { background: #fff; border: 1px solid #ddd; border-radius: 6px; }
</style>
</head>
<body>
<h1>vmqtw <span id="node"></span></h1>
<div class="muted">version <span id="version">?</span>, updated <span id="updated">never</span>
  (every <span id="every"></span> s)</div>
<ul class="issues" id="issues"></ul>
<div class="cards">
  <div class="card"><div class="v" id="num_online">-</div><div class="k">online sessions</div></div>
  <div class="card"><div class="v" id="num_offline">-</div>
    <div class="k">offline sessions</div></div>
  <div class="card"><div class="v" id="rate_connect">-</div><div class="k">connects / s</div></div>
  <div class="card"><div class="v" id="rate_in">-</div><div class="k">publish in / s</div></div>
  <div class="card"><div class="v" id="rate_out">-</div><div class="k">publish out / s</div></div>
  <div class="card"><div class="v" id="rate_drop">-</div><div class="k">dropped / s</div></div>
  <div class="card"><div class="v" id="queued">-</div><div class="k">queued</div></div>
  <div class="card"><div class="v" id="num_subscriptions">-</div>
    <div class="k">subscriptions</div></div>
  <div class="card"><div class="v" id="num_retained">-</div><div class="k">retained</div></div>
</div>
<canvas id="chart" width="720" height="200"></canvas>
<div class="muted">message rates: <span style="color:#1f77b4">in</span>,
  <span style="color:#2ca02c">out</span>, <span style="color:#d62728">dropped</span></div>
<h2>Listeners</h2>
<table><thead><tr><th>type</th><th>status</th><th>ip</th><th>port</th><th>mountpoint</th>
<th>max_conns</th></tr></thead><tbody id="listeners"></tbody></table>
<script>
"use strict";
(function () {
  var params = new URLSearchParams(window.location.search);
  var refresh = Math.max(200, parseInt(params.get("refresh") || "10000", 10) || 10000);
  var last = null, history = [], MAX_POINTS = 60;
  var statusUrl = window.location.pathname.replace(/\/status(\/.*)?$/, "/status.json");
  document.getElementById("every").textContent = (refresh / 1000).toString();

  function set(id, value) { document.getElementById(id).textContent = String(value); }
  function rate(now, prev, key, secs) {
    return prev ? Math.max(0, (now[key] - prev[key]) / secs) : 0;
  }
  function fmt(n) { return n >= 100 ? Math.round(n).toString() : n.toFixed(1); }

  function draw() {
    var canvas = document.getElementById("chart"), ctx = canvas.getContext("2d");
    var w = canvas.width, h = canvas.height, pad = 24;
    ctx.clearRect(0, 0, w, h);
    var top = 1;
    history.forEach(function (p) { top = Math.max(top, p.in, p.out, p.drop); });
    ctx.strokeStyle = "#eee"; ctx.fillStyle = "#999"; ctx.font = "11px sans-serif";
    for (var i = 0; i <= 4; i++) {
      var y = pad + (h - 2 * pad) * i / 4;
      ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w - 4, y); ctx.stroke();
      ctx.fillText(fmt(top * (4 - i) / 4), 2, y - 2);
    }
    [["in", "#1f77b4"], ["out", "#2ca02c"], ["drop", "#d62728"]].forEach(function (s) {
      ctx.strokeStyle = s[1]; ctx.lineWidth = 2; ctx.beginPath();
      history.forEach(function (p, j) {
        var x = pad + (w - pad - 4) * j / Math.max(1, MAX_POINTS - 1);
        var y = h - pad - (h - 2 * pad) * p[s[0]] / top;
        if (j === 0) { ctx.moveTo(x, y); } else { ctx.lineTo(x, y); }
      });
      ctx.stroke();
    });
  }

  function show(doc) {
    var node = Object.keys(doc[0])[0], s = doc[0][node], now = Date.now();
    var secs = last ? Math.max(0.001, (now - last.at) / 1000) : 1;
    var prev = last ? last.s : null;
    set("node", node); set("version", s.version);
    set("updated", new Date(now).toLocaleTimeString());
    set("num_online", s.num_online); set("num_offline", s.num_offline);
    var point = { in: rate(s, prev, "msg_in", secs), out: rate(s, prev, "msg_out", secs),
                  drop: rate(s, prev, "queue_drop", secs) };
    set("rate_connect", fmt(rate(s, prev, "num_online", secs)));
    set("rate_in", fmt(point.in)); set("rate_out", fmt(point.out));
    set("rate_drop", fmt(point.drop));
    set("queued", Math.max(0, s.queue_in - s.queue_out - s.queue_drop - s.queue_unhandled));
    set("num_subscriptions", s.num_subscriptions); set("num_retained", s.num_retained);
    var rows = document.getElementById("listeners"), issues = document.getElementById("issues");
    rows.textContent = ""; issues.textContent = "";
    s.listeners.forEach(function (l) {
      var tr = document.createElement("tr");
      [l.type, l.status, l.ip, l.port, Array.isArray(l.mountpoint) ? "" : l.mountpoint,
       l.max_conns].forEach(function (v, k) {
        var td = document.createElement("td"); td.textContent = String(v);
        if (k === 1 && v !== "running") { td.className = "down"; }
        tr.appendChild(td);
      });
      rows.appendChild(tr);
      if (l.status !== "running" && /^mqtt/.test(l.type)) {
        var li = document.createElement("li");
        li.textContent = "listener " + l.type + " " + l.ip + ":" + l.port + " is " + l.status;
        issues.appendChild(li);
      }
    });
    if (prev) { history.push(point); if (history.length > MAX_POINTS) { history.shift(); } }
    last = { at: now, s: s };
    draw();
  }

  function poll() {
    fetch(statusUrl, { cache: "no-store", credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (doc) { show(doc); })
      .catch(function (e) { set("updated", "failed: " + e.message); })
      .then(function () { setTimeout(poll, refresh); });
  }
  draw();
  poll();
})();
</script>
</body>
</html>
"""
