/* Student page: one tap to join, then status, the slide with ink and pointer, hand, poll, chat,
 * data used, tier, data saver, floor. The protocol lives in protocol.js; this file only draws. */
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
  var board = new GRoomInk.Board($("board"));
  /** @type {any} */
  var deck = null;
  /** @type {any} */
  var slide = null;
  /** @type {any} */
  var poll = null;
  var tier = "", prefetched = {}, sharp = {}, prefetchTimer = 0, chatOn = true, resultShown = false;
  /** The URL last fetched for each slide (by its large image's name): shown or prefetched. */
  var fetched = {};
  /** The server paces and times slide images by this (the listen token): audio first on a thin
   *  link. Until the link has been measured (a `tier` message, or the next slide) the tier is
   *  a guess, so the first image is the phone one (the smallest): on a thin link one image per
   *  slide, never large then small. */
  var slideToken = "", measured = false, TIERS = ["low", "standard", "high"];
  /** Browsers without WebP (KaiOS) get the JPEG copy of the small image; asked once. */
  var webp = (function () {
    try { return document.createElement("canvas").toDataURL("image/webp").indexOf("data:image/webp") === 0; }
    catch (e) { return false; }
  })();

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

  /** @param {string} tag @param {string} [text] @param {string} [cls] */
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  /** The small image's width (groom/board/rasterize.py SMALL): all a board this many device
   *  pixels wide can show, so a wider image only costs the link more. */
  var SMALL_PX = 854;

  /** The image this phone should fetch for a slide: the phone image (600 px, few colours: a
   *  third of the small one's bytes) on the low tier, with data saver, or until the link is
   *  measured, so a thin link gets one small image per slide; with room on the link the small
   *  image where the screen shows no more than it holds, else the large one; the large one
   *  whenever the student tapped that slide for the sharper one (a worksheet page to read
   *  closely). A deck older than the phone image names its small one there. A slide of which
   *  one copy was fetched already (prefetched as the phone image before a step up) shows that
   *  copy, unless ``fresh`` (the slide on screen at a step up or a change of data saver): a
   *  slide turn then waits for no second download. */
  function imageUrl(s, fresh) {
    var wide = document.querySelector("main").clientWidth * (window.devicePixelRatio || 1) > SMALL_PX;
    var thin = tier === "low" || saver.checked || !measured;
    var name = !webp ? s.jpeg : sharp[s.large] ? s.large : thin ? s.phone || s.small : wide ? s.large : s.small;
    if (!fresh && !sharp[s.large] && fetched[s.large]) return fetched[s.large];
    return "/slides/" + encodeURIComponent(name) + (slideToken ? "?t=" + encodeURIComponent(slideToken) : "");
  }

  function showSlide(s, fresh) {
    slide = s;
    if (!s) { $("board").hidden = true; board.point(null, null); return; }
    var url = fetched[s.large] = imageUrl(s, fresh);
    board.show(s.page, url, s.ink);
  }

  /** Once the slide on screen has loaded, fetch the next two while the link is idle. */
  function prefetch() {
    clearTimeout(prefetchTimer);
    if (!slide || !deck || deck.deck_id !== slide.deck_id) return;
    var page = slide.page;
    prefetchTimer = setTimeout(function () {
      for (var i = page + 1; i <= page + 2 && i < deck.slides.length; i++) {
        var url = imageUrl(deck.slides[i]);
        if (prefetched[url]) continue;
        prefetched[url] = 1;
        fetched[deck.slides[i].large] = url;
        var img = new Image();
        img.fetchPriority = "low";
        img.src = url;
      }
    }, 800);
  }

  function addChat(m) {
    var list = $("chat-list"), li = el("li", "", m.teacher ? "teacher" : "");
    li.appendChild(el("b", (m.from || "?") + (m.teacher ? " (" + t.teacher + ")" : "") + ": "));
    li.appendChild(el("span", m.text));
    list.appendChild(li);
    while (list.children.length > 50) list.removeChild(list.firstChild);
    list.scrollTop = list.scrollHeight;
  }

  function setChat(on) {
    chatOn = on;
    $("chat-off").hidden = on;
    $("chat-text").disabled = !on;
    $("chat-form").querySelector("button").disabled = !on;
  }

  function chatError(text) {
    $("chat-error").textContent = text || "";
    $("chat-error").hidden = !text;
  }

  /** A poll to answer (open), or the result the teacher shows (counts). */
  function showPoll(p, counts) {
    poll = p;
    resultShown = !!counts;
    var box = $("poll"), choices = $("poll-choices");
    box.hidden = !p;
    if (!p) return;
    $("poll-q").textContent = counts ? t.result + ": " + p.question : p.question;
    $("poll-note").hidden = true;
    while (choices.firstChild) choices.removeChild(choices.firstChild);
    var total = counts ? counts.reduce(function (a, b) { return a + b; }, 0) : 0;
    p.choices.forEach(function (text, i) {
      if (counts) {
        var row = el("div", "", "bar");
        row.appendChild(el("span", text + ": " + counts[i]));
        var m = el("meter");
        m.max = Math.max(1, total);
        m.value = counts[i];
        row.appendChild(m);
        choices.appendChild(row);
        return;
      }
      var b = el("button", text);
      b.type = "button";
      b.setAttribute("data-choice", String(i));
      b.addEventListener("click", function () {
        if (live && live.send({ type: "vote", poll_id: p.id, choice: i })) answered(i);
      });
      choices.appendChild(b);
    });
  }

  function answered(i) {
    var buttons = $("poll-choices").querySelectorAll("button");
    for (var k = 0; k < buttons.length; k++) {
      buttons[k].disabled = true;
      buttons[k].setAttribute("aria-pressed", String(k === i));
    }
    $("poll-note").textContent = t.answered.replace("{choice}", poll ? poll.choices[i] : "");
    $("poll-note").hidden = false;
  }

  function start() {
    var hello = join.card ? { role: "student", card: join.card }
                          : { role: "student", code: join.code,
                              name: join.name || nameInput.value.trim() };
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
      if (m.tier) { tier = m.tier; $("tier").textContent = t[m.tier] || m.tier; }
      slideToken = m.listen_token || "";
      deck = m.deck || null;
      showSlide(m.slide || null);
      var chat = m.chat || { enabled: true, recent: [] };
      while ($("chat-list").firstChild) $("chat-list").removeChild($("chat-list").firstChild);
      (chat.recent || []).forEach(addChat);
      setChat(chat.enabled !== false);
      if (m.poll) { if (!poll || poll.id !== m.poll.id || resultShown) showPoll(m.poll); }
      else if (!resultShown) showPoll(null);
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
      // A step down keeps the image on screen; a step up (the link proved room) sharpens it:
      // the small image for the phone one, the large where the screen shows more (imageUrl).
      var up = TIERS.indexOf(m.tier) > TIERS.indexOf(tier) || (!measured && m.tier !== "low");
      tier = m.tier;
      measured = true;
      if (up && slide) showSlide(slide, true);
    });
    live.on("deck", function (m) { deck = m.deck; prefetched = {}; });
    live.on("slide", function (m) { measured = true; showSlide(m.slide); });
    live.on("ink", function (m) {
      if (slide && m.page === slide.page) { slide.ink = (slide.ink || []).concat([m.stroke]); board.add(m.stroke); }
    });
    live.on("ink_clear", function (m) {
      if (slide && m.page === slide.page) { slide.ink = []; board.clear(); }
    });
    live.on("pointer", function (m) { board.point(m.x, m.y); });
    live.on("chat", addChat);
    live.on("chat_enabled", function (m) { setChat(!!m.on); });
    live.on("poll", function (m) { showPoll(m.poll); });
    live.on("voted", function (m) { if (poll && poll.id === m.poll_id) answered(m.choice); });
    live.on("poll_result", function (m) { showPoll(m, m.counts); });
    live.on("error", function (m) {
      if (/^chat|^empty/.test(m.code || "")) chatError(m.message);
      else if (m.code === "already_voted" || m.code === "poll_closed") { $("poll-note").textContent = m.message; $("poll-note").hidden = false; }
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

  $("slide").addEventListener("load", prefetch);
  /** How fast the slide image came (first byte to last): the server sizes the tier and paces
   *  the next images by it. Nothing when it came from the cache. */
  $("slide").addEventListener("load", function () {
    var e = window.performance && performance.getEntriesByName && performance.getEntriesByName($("slide").src).pop();
    var seconds = e ? (e.responseEnd - e.responseStart) / 1000 : 0;
    if (live && e && e.encodedBodySize > 2000 && e.transferSize > 0 && seconds > 0.02) {
      live.slideKbps = e.encodedBodySize * 8 / seconds / 1000;
    }
  });
  $("slide").addEventListener("click", function () {
    if (slide && webp && !sharp[slide.large]) { sharp[slide.large] = 1; showSlide(slide); }
  });
  $("chat-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = $("chat-text").value.trim();
    if (!text || !chatOn || !live) return;
    if (live.send({ type: "chat", text: text.slice(0, 300) })) { $("chat-text").value = ""; chatError(""); }
  });
  hand.addEventListener("click", function () {
    if (live && live.send({ type: "hand", up: !handUp })) setHand(!handUp);
  });
  saver.addEventListener("change", function () {
    store(SAVER_KEY, saver.checked ? "1" : "0");
    if (live) live.send({ type: "data_saver", on: saver.checked });
    if (slide) showSlide(slide, true);
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
