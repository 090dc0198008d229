/* Teacher page: start/end, mic level, participants with link quality, hands and the floor.
 * The protocol lives in protocol.js; this file only draws. */
"use strict";
(function () {
  /** @param {string} id @returns {any} */
  function $(id) { return document.getElementById(id); }

  /**
   * @typedef {{id: string, name: string, tier: string, quality: string, loss_pct: number,
   *            jitter_ms: number, rtt_ms: number, hand: boolean, connected: boolean}} Participant
   */
  /** @type {{ws: string, lesson_id: number, t: Object<string, string>}} */
  var cfg = JSON.parse($("config").textContent);
  var t = cfg.t;
  var resumeKey = "groom.resume.t." + cfg.lesson_id;
  /** @type {any} */
  var live = null;
  /** @type {Participant[]} */
  var people = [];
  /** @type {string[]} */
  var hands = [];
  /** @type {string|null} */
  var floor = null;
  /** @type {AudioContext|null} */
  var audioCtx = null;
  var meterTimer = 0, ended = false;

  /** @param {string} text @param {Object<string, any>} params */
  function fill(text, params) {
    return text.replace(/\{(\w+)\}/g, function (all, k) { return k in params ? String(params[k]) : all; });
  }

  /** @param {string} tag @param {string} [text] @param {string} [cls] */
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  /** @param {string} text @param {Function} onclick @param {string} [cls] */
  function button(text, onclick, cls) {
    var b = el("button", text, cls);
    b.type = "button";
    b.addEventListener("click", onclick);
    return b;
  }

  function showError(text) {
    $("error").textContent = text || "";
    $("error").hidden = !text;
  }

  function showStatus(state) {
    $("status").textContent = t[state] || state;
    $("status").className = "badge" + (state === "live" || state === "teacher-away" ? " live" : "");
    document.body.setAttribute("data-state", state);
  }

  /** Local level meter: RMS of the microphone in dBFS, -60..0 shown as 0..1. @param {MediaStream} stream */
  function meter(stream) {
    var Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    audioCtx = new Ctx();
    var analyser = audioCtx.createAnalyser();
    analyser.fftSize = 1024;
    audioCtx.createMediaStreamSource(stream).connect(analyser);
    var buf = new Float32Array(analyser.fftSize);
    meterTimer = setInterval(function () {
      analyser.getFloatTimeDomainData(buf);
      var sum = 0;
      for (var i = 0; i < buf.length; i++) sum += buf[i] * buf[i];
      var db = 10 * Math.log10(sum / buf.length + 1e-12);
      $("mic").value = Math.max(0, Math.min(1, (db + 60) / 60));
    }, 100);
  }

  function nameOf(id) {
    for (var i = 0; i < people.length; i++) if (people[i].id === id) return people[i].name;
    return "?";
  }

  function giveFloor(id) { live.send({ type: "floor", participant_id: id }); }

  function drawPeople() {
    var body = $("people");
    while (body.firstChild) body.removeChild(body.firstChild);
    var here = 0;
    people.forEach(function (p) {
      var tr = el("tr", "", p.connected ? "" : "muted");
      tr.setAttribute("data-id", p.id);
      if (p.connected) here++;
      tr.appendChild(el("td", p.name + (p.connected ? "" : " (" + t.offline + ")")));
      tr.appendChild(el("td", t[p.tier] || p.tier || ""));
      var link = el("td");
      link.appendChild(el("span", t[p.quality] || p.quality || "", "badge q-" + p.quality));
      link.appendChild(el("small", " " + fill(t.link, {
        loss: (p.loss_pct || 0).toFixed(1), jitter: Math.round(p.jitter_ms || 0) })));
      tr.appendChild(link);
      var hand = el("td", p.hand ? "✋" : "");
      if (p.hand) hand.title = t.hand_up;
      tr.appendChild(hand);
      var actions = el("td");
      actions.appendChild(button(t.kick, function () {
        if (window.confirm(fill(t.kick_confirm, { name: p.name }))) {
          live.send({ type: "kick", participant_id: p.id });
        }
      }, "secondary small"));
      tr.appendChild(actions);
      body.appendChild(tr);
    });
    $("count").textContent = String(here);
  }

  function drawHands() {
    var list = $("hands");
    while (list.firstChild) list.removeChild(list.firstChild);
    hands.forEach(function (id) {
      var li = el("li");
      li.setAttribute("data-id", id);
      li.appendChild(el("span", nameOf(id) + " "));
      li.appendChild(button(t.give, function () { giveFloor(id); }));
      list.appendChild(li);
    });
    $("no-hands").hidden = hands.length > 0;
    $("floor").hidden = !floor;
    $("floor-who").textContent = floor ? fill(t.speaking, { name: nameOf(floor) }) : "";
  }

  function stopMeter() {
    clearInterval(meterTimer);
    if (audioCtx) audioCtx.close();
    audioCtx = null;
    $("mic").value = 0;
  }

  async function start() {
    $("start").disabled = true;
    showError("");
    showStatus("connecting");
    var mic;
    try {
      mic = await GRoom.getMic();
    } catch (e) {
      showError(fill(t.mic, { error: (e && e.name) || "" }));
      $("start").disabled = false;
      return;
    }
    meter(mic);
    live = new GRoom.Live({ url: cfg.ws, hello: { role: "teacher", lesson_id: cfg.lesson_id },
                            key: resumeKey, mic: mic });
    window.groom = live;  // for tests
    live.on("state", showStatus);
    live.on("welcome", function () {
      $("start").hidden = true;
      $("end").hidden = false;
    });
    live.on("room", function (m) { floor = m.floor || null; drawHands(); });
    live.on("participants", function (m) { people = m.list || []; drawPeople(); drawHands(); });
    live.on("hands", function (m) { hands = m.queue || []; drawHands(); });
    live.on("level", function (m) {
      $("heard").value = Math.max(0, Math.min(1, ((m.dbfs || -100) + 60) / 60));
    });
    live.on("track", function (stream) { $("audio").srcObject = stream; $("audio").play().catch(function () {}); });
    live.on("media", function (m) {
      if (m === "connected") showError("");
      else if (m === "error" || m === "failed") showError(t.media);
    });
    live.on("error", function (m) { showError(m.message || m.code); });
    live.on("ended", function () { finish(); });
    live.on("closed", function (m) {
      finish();
      showError(fill(t.closed, { code: m.code }));
    });
    live.start();
  }

  function finish() {
    ended = true;
    stopMeter();
    showStatus("ended");
    $("end").hidden = true;
    $("start").hidden = true;
    $("audio").srcObject = null;
  }

  $("start").addEventListener("click", start);
  $("end").addEventListener("click", function () {
    if (live && window.confirm(t.end_confirm)) live.send({ type: "end" });
  });
  $("takeback").addEventListener("click", function () { giveFloor(null); });
  document.addEventListener("click", function () {
    if (audioCtx && audioCtx.state === "suspended") audioCtx.resume();
  });
  window.addEventListener("online", function () { if (live && !ended) live.reconnectNow(); });

  // Reloaded during a lesson (same tab): carry on without another click.
  try {
    if (sessionStorage.getItem(resumeKey)) start();
  } catch (e) { /* no storage */ }
})();
