/* Teacher page: start/end, mic level, participants with link quality, hands and the floor;
 * decks (upload, pick), slides (buttons, keys, thumbnails), ink and pointer, chat, quick polls.
 * The protocol lives in protocol.js, the board drawing in ink.js; this file only draws. */
"use strict";
(function () {
  /** @param {string} id @returns {any} */
  function $(id) { return document.getElementById(id); }

  /**
   * @typedef {{id: string, name: string, tier: string, quality: string, loss_pct: number,
   *            jitter_ms: number, rtt_ms: number, hand: boolean, connected: boolean}} Participant
   */
  /** @type {{ws: string, lesson_id: number, class_id: number, csrf: string, pass: string,
   *          t: Object<string, string>}} */
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
  var board = new GRoomInk.Board($("board"));
  /** @type {any} the deck on screen ({deck_id, title, slides}) */
  var deck = null;
  /** @type {any} the slide on screen */
  var slide = null;
  /** @type {any} the poll on screen */
  var poll = null;
  var color = 0, mode = "draw";
  /** @type {number[][]|null} the stroke being drawn, grid floats */
  var drawing = null;
  var pointerSent = 0, pointerTimer = 0;
  /** @type {number[]|null} */
  var pointerNext = null;

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

  function online() { return !!(live && live.ws && live.ws.readyState === 1 && !ended); }

  // ---- decks ------------------------------------------------------------------------------------

  /** The class's decks into the picker; `select` picks one. */
  async function loadDecks(select) {
    var resp = await fetch("/api/classes/" + cfg.class_id + "/decks", { credentials: "same-origin" });
    if (!resp.ok) return;
    var decks = await resp.json(), picker = $("decks"), keep = select || picker.value;
    while (picker.options.length > 1) picker.remove(1);
    decks.forEach(function (d) {
      var o = el("option", (d.title || d.filename) + " (" + fill(t.pages, { pages: d.pages }) + ")");
      o.value = String(d.id);
      picker.appendChild(o);
    });
    picker.value = keep ? String(keep) : "";
    if (picker.value !== String(keep || "")) picker.value = "";
    $("show-deck").disabled = !picker.value;
  }

  function uploadStatus(text, bad) {
    $("upload-status").textContent = text;
    $("upload-status").className = bad ? "bad" : "";
  }

  async function upload(ev) {
    ev.preventDefault();
    var file = $("deck-file").files[0];
    if (!file) { uploadStatus(t.pick_file, true); return; }
    var title = $("deck-title").value.trim() || file.name.replace(/\.[^.]+$/, "");
    $("upload-go").disabled = true;
    uploadStatus(t.converting, false);
    try {
      var resp = await fetch("/api/classes/" + cfg.class_id + "/decks?title=" + encodeURIComponent(title) +
                             "&filename=" + encodeURIComponent(file.name), {
        method: "POST", body: file, credentials: "same-origin",
        headers: { "Content-Type": "application/octet-stream", "X-CSRF-Token": cfg.csrf } });
      var body = null;
      try { body = await resp.json(); } catch (e) { /* not JSON */ }
      if (!resp.ok) {
        var msg = (body && body.error && body.error.message) || String(resp.status);
        uploadStatus(fill(t.upload_failed, { error: msg }), true);
        return;
      }
      uploadStatus(fill(t.uploaded, { pages: body.pages }), false);
      $("deck-file").value = "";
      $("deck-title").value = "";
      await loadDecks(body.id);
    } catch (e) {
      uploadStatus(fill(t.upload_failed, { error: (e && e.message) || "" }), true);
    } finally {
      $("upload-go").disabled = false;
    }
  }

  // ---- slides and ink ---------------------------------------------------------------------------

  function showDeck(d) {
    deck = d;
    var strip = $("thumbs");
    while (strip.firstChild) strip.removeChild(strip.firstChild);
    if (!d) { $("stage").hidden = true; return; }
    d.slides.forEach(function (s, i) {
      var b = button("", function () { goTo(i); }, "thumb");
      b.setAttribute("data-page", String(i));
      b.setAttribute("aria-label", fill(t.slide_n, { n: i + 1 }));
      var img = el("img");
      img.loading = "lazy";
      img.alt = String(i + 1);
      img.src = "/slides/" + encodeURIComponent(s.thumb);
      b.appendChild(img);
      strip.appendChild(b);
    });
    $("stage").hidden = false;
  }

  function showSlide(s) {
    slide = s;
    if (!s) return;
    if (!deck || deck.deck_id !== s.deck_id) return;
    board.show(s.page, "/slides/" + encodeURIComponent(s.large), s.ink);
    $("page").textContent = (s.page + 1) + " / " + deck.slides.length;
    $("prev").disabled = s.page <= 0;
    $("next").disabled = s.page >= deck.slides.length - 1;
    var thumbs = $("thumbs").children;
    for (var i = 0; i < thumbs.length; i++) {
      thumbs[i].setAttribute("aria-current", String(i === s.page));
      if (i === s.page && thumbs[i].scrollIntoView) thumbs[i].scrollIntoView({ block: "nearest", inline: "nearest" });
    }
  }

  function goTo(page) {
    if (!deck || !online() || page < 0 || page >= deck.slides.length) return;
    if (slide && slide.page === page) return;
    live.send({ type: "slide", page: page });
  }

  /** The finished stroke: the rough line drawn while moving gives way to what was sent. */
  function sendStroke(pts) {
    board.strokes.pop();
    GRoomInk.pack(pts).forEach(function (points) {
      if (live.send({ type: "ink", points: points, color: color, width: 2 })) {
        board.strokes.push({ points: points, color: color, width: 2 });
      }
    });
    board.redraw();
  }

  /** Send the pointer at most 5 times a second; the last position always goes out. */
  function sendPointer(p) {
    pointerNext = p;
    if (pointerTimer) return;
    var wait = Math.max(0, 200 - (Date.now() - pointerSent));
    pointerTimer = setTimeout(function () {
      pointerTimer = 0;
      pointerSent = Date.now();
      var q = pointerNext;
      if (online()) live.send({ type: "pointer", x: q ? Math.round(q[0]) : null, y: q ? Math.round(q[1]) : null });
      board.point(q ? q[0] : null, q ? q[1] : null);
    }, wait);
  }

  function inside(p) { return p[0] >= 0 && p[0] <= 1000 && p[1] >= 0 && p[1] <= 1000; }

  function drawColors() {
    var box = $("colors");
    GRoomInk.COLORS.slice(0, 5).forEach(function (c, i) {
      var b = button("", function () { color = i; pickColor(); }, "swatch c" + i);
      b.setAttribute("data-color", String(i));
      b.setAttribute("aria-label", c);
      box.appendChild(b);
    });
    pickColor();
  }

  function pickColor() {
    var all = $("colors").children;
    for (var i = 0; i < all.length; i++) all[i].setAttribute("aria-pressed", String(i === color));
  }

  // ---- chat and polls ---------------------------------------------------------------------------

  function addChat(m) {
    var list = $("chat-list"), li = el("li", "", m.teacher ? "teacher" : "");
    li.appendChild(el("b", (m.from || "?") + (m.teacher ? " (" + t.teacher + ")" : "") + ": "));
    li.appendChild(el("span", m.text));
    list.appendChild(li);
    while (list.children.length > 100) list.removeChild(list.firstChild);
    list.scrollTop = list.scrollHeight;
  }

  function pollInputs() {
    var box = $("poll-choices");
    for (var i = 0; i < 6; i++) {
      var input = el("input");
      input.maxLength = 80;
      input.placeholder = fill(t.choice, { n: i + 1 });
      input.setAttribute("aria-label", input.placeholder);
      box.appendChild(input);
    }
  }

  /** The poll with its counts; `state` is open, closed or shown. */
  function showPoll(p, counts, voters, state) {
    poll = p;
    $("poll-live").hidden = !p;
    if (!p) return;
    $("poll-question").textContent = p.question;
    $("poll-state").textContent = state === "open" ? t.open : state === "shown" ? t.shown : t.closed_poll;
    $("poll-close").hidden = state !== "open";
    var list = $("poll-counts");
    list.setAttribute("data-counts", JSON.stringify(counts));
    while (list.firstChild) list.removeChild(list.firstChild);
    var total = counts.reduce(function (a, b) { return a + b; }, 0);
    p.choices.forEach(function (text, i) {
      var li = el("li");
      li.appendChild(el("span", text + " "));
      var m = el("meter");
      m.max = Math.max(1, total);
      m.value = counts[i] || 0;
      li.appendChild(m);
      li.appendChild(el("b", String(counts[i] || 0), "n"));
      list.appendChild(li);
    });
    $("poll-voters").textContent = fill(t.voters, { n: voters === undefined ? total : voters });
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
    // A moderator sent by the BBB-compatible API has no login: the page's lesson pass is theirs.
    var hello = cfg.pass ? { role: "teacher", lesson_id: cfg.lesson_id, pass: cfg.pass }
                         : { role: "teacher", lesson_id: cfg.lesson_id };
    live = new GRoom.Live({ url: cfg.ws, hello: hello,
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
    live.on("welcome", function (m) {
      showDeck(m.deck || null);
      showSlide(m.slide || null);
      var chat = m.chat || { enabled: true, recent: [] };
      while ($("chat-list").firstChild) $("chat-list").removeChild($("chat-list").firstChild);
      (chat.recent || []).forEach(addChat);
      $("chat-on").checked = chat.enabled !== false;
      if (m.poll) showPoll(m.poll, m.poll.choices.map(function () { return 0; }), 0, "open");
      $("show-deck").disabled = !$("decks").value;
    });
    live.on("deck", function (m) { showDeck(m.deck); });
    live.on("slide", function (m) { showSlide(m.slide); });
    live.on("chat", addChat);
    live.on("chat_enabled", function (m) { $("chat-on").checked = !!m.on; });
    live.on("poll", function (m) { showPoll(m.poll, m.poll.choices.map(function () { return 0; }), 0, "open"); });
    live.on("poll_counts", function (m) {
      if (poll && poll.id === m.id && poll.open !== false) showPoll(poll, m.counts, m.voters, "open");
    });
    live.on("poll_result", function (m) {
      var p = { id: m.id, question: m.question, choices: m.choices, open: false };
      showPoll(p, m.counts, undefined, m.shown ? "shown" : "closed");
    });
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
  $("upload").addEventListener("submit", upload);
  $("decks").addEventListener("change", function () { $("show-deck").disabled = !$("decks").value; });
  $("show-deck").addEventListener("click", function () {
    var id = parseInt($("decks").value, 10);
    if (id && online()) live.send({ type: "deck", deck_id: id });
  });
  $("prev").addEventListener("click", function () { if (slide) goTo(slide.page - 1); });
  $("next").addEventListener("click", function () { if (slide) goTo(slide.page + 1); });
  document.addEventListener("keydown", function (ev) {
    var tag = ev.target && ev.target.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || !slide || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    if (ev.key === "ArrowRight" || ev.key === "PageDown") { goTo(slide.page + 1); ev.preventDefault(); }
    else if (ev.key === "ArrowLeft" || ev.key === "PageUp") { goTo(slide.page - 1); ev.preventDefault(); }
  });
  Array.prototype.forEach.call(document.querySelectorAll("input[name=mode]"), function (r) {
    r.addEventListener("change", function () {
      mode = r.value;
      $("board").setAttribute("data-mode", mode);
      if (mode !== "point") sendPointer(null);
    });
  });
  $("board").setAttribute("data-mode", mode);
  $("clear-ink").addEventListener("click", function () {
    if (online() && live.send({ type: "ink_clear" })) board.clear();
  });
  var canvas = $("ink");
  canvas.addEventListener("pointerdown", function (ev) {
    if (!slide || !online()) return;
    if (mode === "point") { sendPointer(board.grid(ev)); return; }
    ev.preventDefault();
    if (canvas.setPointerCapture) canvas.setPointerCapture(ev.pointerId);
    drawing = [board.grid(ev)];
    board.add({ points: [drawing[0][0], drawing[0][1]], color: color, width: 2 });
  });
  canvas.addEventListener("pointermove", function (ev) {
    var p = board.grid(ev);
    if (mode === "point") { if (slide && online()) sendPointer(inside(p) ? p : null); return; }
    if (!drawing) return;
    p = [Math.max(0, Math.min(1000, p[0])), Math.max(0, Math.min(1000, p[1]))];
    var last = drawing[drawing.length - 1];
    if (Math.abs(p[0] - last[0]) + Math.abs(p[1] - last[1]) < 1) return;
    drawing.push(p);
    var s = board.strokes[board.strokes.length - 1];
    s.points.push(p[0], p[1]);
    board.redraw();
  });
  function endStroke() {
    if (!drawing) return;
    var pts = drawing;
    drawing = null;
    if (online()) sendStroke(pts);
    else { board.strokes.pop(); board.redraw(); }
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);
  canvas.addEventListener("pointerleave", function () { if (mode === "point" && online()) sendPointer(null); });
  $("chat-on").addEventListener("change", function () {
    if (online()) live.send({ type: "chat_enabled", on: $("chat-on").checked });
  });
  $("chat-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = $("chat-text").value.trim();
    if (text && online() && live.send({ type: "chat", text: text.slice(0, 300) })) $("chat-text").value = "";
  });
  $("poll-tf").addEventListener("click", function () {
    var inputs = $("poll-choices").querySelectorAll("input");
    for (var i = 0; i < inputs.length; i++) inputs[i].value = i === 0 ? t.true : i === 1 ? t.false : "";
    if (!$("poll-q").value.trim()) $("poll-q").focus();
  });
  $("poll-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var question = $("poll-q").value.trim(), choices = [];
    var inputs = $("poll-choices").querySelectorAll("input");
    for (var i = 0; i < inputs.length; i++) if (inputs[i].value.trim()) choices.push(inputs[i].value.trim());
    if (!question) { $("poll-q").focus(); return; }
    if (choices.length < 2) { inputs[choices.length].focus(); return; }
    if (online()) live.send({ type: "poll", question: question, choices: choices });
  });
  $("close-show").addEventListener("click", function () { if (online()) live.send({ type: "poll_close", show: true }); });
  $("close-private").addEventListener("click", function () { if (online()) live.send({ type: "poll_close", show: false }); });
  drawColors();
  pollInputs();
  // The class's deck library needs a login; a pass holder shows the meeting's own slides.
  if (cfg.pass) $("upload").hidden = true; else loadDecks();
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
