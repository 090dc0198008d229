/* Student page: one tap to join, then status, hand, data used, tier, data saver, floor.
 * The protocol lives in protocol.js; this file only draws. */
"use strict";
(function () {
  /** @param {string} id @returns {any} */
  function $(id) { return document.getElementById(id); }

  /** @type {{ws: string, join: {code?: string, card?: string, name?: string}, t: Object<string, string>}} */
  var cfg = JSON.parse($("config").textContent);
  var t = cfg.t, join = cfg.join;
  var form = $("join"), nameInput = $("name"), audio = $("audio"), hand = $("hand");
  var status = $("status"), saver = $("saver"), unmute = $("unmute");
  var NAME_KEY = "groom.name", SAVER_KEY = "groom.saver";
  var resumeKey = "groom.resume." + (join.card ? "c." + join.card : "j." + join.code);
  /** @type {any} */
  var live = null;
  var handUp = false, ended = "", media = "";

  /** localStorage, or nothing when the phone disallows it. */
  function store(key, value) {
    try {
      if (value === undefined) return localStorage.getItem(key);
      localStorage.setItem(key, value);
    } catch (e) { /* private mode */ }
    return null;
  }

  if (nameInput) nameInput.value = store(NAME_KEY) || "";
  saver.checked = store(SAVER_KEY) === "1";

  function showStatus(state) {
    var text = t[ended || state] || t.connecting;
    if (!ended && state === "live" && media === "fallback") text = t.fallback;
    status.textContent = text;
    status.className = "status " + (ended ? "ended" : state);
    document.body.setAttribute("data-state", ended || state);
  }

  function play() {
    var p = audio.play();
    if (p && p.catch) {
      p.then(function () { unmute.hidden = true; }, function (e) {
        if (e && e.name === "NotAllowedError") unmute.hidden = false;
      });
    }
  }

  function setHand(up) {
    handUp = up;
    hand.setAttribute("aria-pressed", String(up));
    hand.textContent = up ? t.lower : t.raise;
  }

  /** @param {number} bytes */
  function megabytes(bytes) {
    var mb = bytes / 1e6;
    return t.mb.replace("{mb}", mb.toFixed(mb < 10 ? 2 : 1));
  }

  function start() {
    var hello = join.card ? { role: "student", card: join.card }
                          : { role: "student", code: join.code, name: nameInput.value.trim() };
    live = new GRoom.Live({ url: cfg.ws, hello: hello, key: resumeKey, fallback: true, stats: true });
    window.groom = live;  // for tests and curious teachers: the live connection
    form.hidden = true;
    $("live").hidden = false;
    live.on("state", showStatus);
    live.on("welcome", function (m) {
      var l = m.lesson;
      if (l) {
        $("title").textContent = l.title;
        document.title = l.title + " · G-Room";
        $("who").textContent = l.class_name + " · " + l.teacher_name;
      }
      if (m.tier) $("tier").textContent = t[m.tier] || m.tier;
      if (saver.checked) live.send({ type: "data_saver", on: true });
      if (handUp) live.send({ type: "hand", up: true });
    });
    live.on("track", function (stream) {
      audio.removeAttribute("src");
      audio.srcObject = stream;
      play();
    });
    live.on("fallback", function (url) {
      if (audio.getAttribute("src") === url) return;
      audio.srcObject = null;
      audio.src = url;
      play();
    });
    live.on("media", function (m) { media = m; showStatus(live.state); });
    live.on("tier", function (m) {
      $("tier").textContent = t[m.tier] || m.tier;
      saver.checked = !!m.data_saver;
    });
    live.on("usage", function (m) { $("used").textContent = megabytes(m.bytes || 0); });
    live.on("floor", function (m) {
      $("floor").hidden = !m.you;
      if (m.you) setHand(false);
    });
    live.on("mic", function (m) {
      if (m.error) { $("floor").hidden = false; $("floor").textContent = t.mic; }
    });
    live.on("ended", function (m) {
      ended = m.reason === "kicked" ? "kicked" : "ended";
      audio.srcObject = null;
      audio.removeAttribute("src");
      showStatus("ended");
    });
    live.on("closed", function (m) {
      ended = m.code === 4410 ? "ended" : m.code === 4409 ? "replaced" : "refused";
      showStatus("ended");
    });
    showStatus("connecting");
    live.start();
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    if (nameInput) {
      if (!nameInput.value.trim()) { nameInput.focus(); return; }
      store(NAME_KEY, nameInput.value.trim());
    }
    play();  // the tap unlocks sound for the whole page
    start();
  });

  hand.addEventListener("click", function () {
    if (live && live.send({ type: "hand", up: !handUp })) setHand(!handUp);
  });
  saver.addEventListener("change", function () {
    store(SAVER_KEY, saver.checked ? "1" : "0");
    if (live) live.send({ type: "data_saver", on: saver.checked });
  });
  unmute.addEventListener("click", play);
  audio.addEventListener("error", function () {
    // The fallback stream broke off: try it again while the lesson lasts.
    if (audio.getAttribute("src") && live && !ended) {
      setTimeout(function () { if (!ended) { audio.load(); play(); } }, 3000);
    }
  });
  window.addEventListener("online", function () { if (live) live.reconnectNow(); });

  // Back on the page in the same tab (reload): rejoin by itself.
  try {
    if (sessionStorage.getItem(resumeKey) && (!nameInput || nameInput.value)) start();
  } catch (e) { /* no storage */ }
})();
