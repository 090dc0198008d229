// G-Room online playback of a recorded lesson: the audio, with the slides changing in step, the
// teacher's ink drawn over them and the poll results the class was shown.
//
// Usage (page template):
//   <div class="playback" data-playback-manifest="/api/lessons/12/recording/manifest"
//        data-playback-error="(translated) Could not load the recording."></div>
//   <script src="/static/ink.js" defer></script>
//   <script src="/static/playback.js" defer></script>
// or from another script: GroomPlayback.mount(element, manifest). Elements the root already
// holds with the class names below (pb-title, pb-stage, pb-board, pb-slide, pb-ink, pb-poll,
// pb-audio, pb-nav, pb-prev, pb-next, pb-where, pb-speeds, pb-list, and an optional pb-noslide
// shown while no slide is) are used as they are instead of being created: the offline pack's
// index.html (web/templates/offline_player.html) lays its page out that way.
//
// The manifest is JSON (groom.recordings.playback.playback_manifest builds it):
//   {
//     "title": "Grade 5 maths",            // optional
//     "audio": "/recordings/12/listen.opus",  // served with Range support (groom/web/recordings.py)
//     "duration_s": 2712.4,
//     "slides": [{"at_ms": 0, "small": "/slides/ab12.webp", "large": "/slides/ab12-l.webp"}, ...],
//                                        // ("large" optional)
//     "ink": [{"at_ms": 5200, "page": 0, "points": [x0, y0, x1, y1, ...], "color": 0, "width": 1},
//             {"at_ms": 9000, "page": 0, "clear": true}, ...],
//     "polls": [{"at_ms": 61000, "question": "2 + 2?", "choices": ["3", "4"], "counts": [1, 9]}]
//   }
// Every list is sorted by at_ms (lesson time, the audio's time). Slide images are fetched only
// when shown, plus the next one ahead; "small" unless the box is wide and data saver is off.
// Ink (drawn by web/static/ink.js, loaded first: a 0-1000 grid of the slide, palette colours) belongs to a slide: its
// "page" is the index in slides of the first change showing that slide, so going back to a
// slide shows its ink again; a clear empties it from then on. The canvas is redrawn only when
// the set of visible strokes (or its size) changes. A poll result shows for POLL_MS after it was.
// Builds its DOM with createElement (no innerHTML); style it through the class names.
"use strict";

(function () {
  var SPEEDS = [1, 1.25, 1.5];
  var POLL_MS = 60000;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function button(label, onclick) {
    var b = el("button", "pb-button", label);
    b.type = "button";
    b.addEventListener("click", onclick);
    return b;
  }

  /** Index of the last item (slide, stroke, poll) with at_ms <= ms, or -1 (binary search). */
  function slideAt(slides, ms) {
    var lo = 0, hi = slides.length - 1, found = -1;
    while (lo <= hi) {
      var mid = (lo + hi) >> 1;
      if (slides[mid].at_ms <= ms + 1) { found = mid; lo = mid + 1; } else { hi = mid - 1; }
    }
    return found;
  }

  function mount(root, manifest) {
    var slides = Array.isArray(manifest.slides) ? manifest.slides : [];
    var polls = Array.isArray(manifest.polls) ? manifest.polls : [];
    var inkOf = {}, firstOf = {};  // page -> its strokes and clears; image -> first slide index
    (Array.isArray(manifest.ink) ? manifest.ink : []).forEach(function (s) {
      (inkOf[s.page] = inkOf[s.page] || []).push(s);
    });
    var pageOf = slides.map(function (s, i) {
      var key = s.small || s.large;
      if (!(key in firstOf)) firstOf[key] = i;
      return firstOf[key];
    });
    var drawn = "", pollShown = -2;
    var conn = navigator.connection;
    var saveData = !!(conn && conn.saveData);
    var shown = -2;

    function urlOf(i) {
      var wide = root.clientWidth * (window.devicePixelRatio || 1) > 720;
      return (wide && !saveData && slides[i].large) || slides[i].small || slides[i].large;
    }

    /** The root's element of class cls, or a new one appended to parent. */
    function part(parent, tag, cls) {
      return root.querySelector("." + cls) || parent.appendChild(el(tag, cls));
    }

    if (manifest.title && !root.hasAttribute("data-playback-hide-title")) {
      part(root, "h2", "pb-title").textContent = manifest.title;
    }
    var stage = part(root, "div", "pb-stage");
    var board = part(stage, "div", "pb-board");  // the slide, the ink canvas over it
    var noslide = root.querySelector(".pb-noslide");
    board.style.position = "relative";  // CSSOM, allowed by the CSP (no inline style attribute)
    board.style.display = "inline-block";
    board.style.maxWidth = "100%";
    var img = part(board, "img", "pb-slide");
    img.hidden = true;
    img.alt = "";
    img.style.maxWidth = "100%";
    img.style.height = "auto";
    img.style.verticalAlign = "top";
    var canvas = part(board, "canvas", "pb-ink");
    ["left", "top"].forEach(function (k) { canvas.style[k] = "0"; });
    canvas.style.position = "absolute";
    canvas.style.width = canvas.style.height = "100%";
    canvas.style.pointerEvents = "none";
    var pollBox = part(root, "div", "pb-poll");
    pollBox.hidden = true;
    pollBox.setAttribute("aria-live", "polite");
    var audio = part(root, "audio", "pb-audio");
    audio.style.width = "100%";
    audio.controls = true;
    if (!audio.hasAttribute("preload")) audio.preload = "metadata";
    audio.src = manifest.audio;

    var nav = part(root, "div", "pb-nav");
    part(nav, "button", "pb-prev").addEventListener("click", function () {
      var i = slideAt(slides, audio.currentTime * 1000);
      // Within 3 s of a slide's start, "previous" means the slide before it.
      seek(i > 0 && audio.currentTime * 1000 - slides[i].at_ms < 3000 ? i - 1 : Math.max(i, 0));
    });
    part(nav, "button", "pb-next").addEventListener("click", function () {
      seek(slideAt(slides, audio.currentTime * 1000) + 1);
    });
    Array.prototype.forEach.call(nav.querySelectorAll(".pb-prev, .pb-next"), function (b, k) {
      b.type = "button";
      b.classList.add("pb-button");
      if (!b.textContent) b.textContent = k ? "\u25B6" : "\u25C0";
    });
    var where = part(nav, "span", "pb-where");

    var speeds = part(root, "div", "pb-speeds");
    SPEEDS.forEach(function (rate) {
      var b = button(rate + "x", function () {
        audio.playbackRate = rate;
        for (var k = 0; k < speeds.children.length; k++) {
          speeds.children[k].setAttribute("aria-pressed", String(speeds.children[k] === b));
        }
      });
      b.setAttribute("aria-pressed", String(rate === 1));
      speeds.appendChild(b);
    });

    var list = part(root, "div", "pb-list");
    slides.forEach(function (_s, i) {
      list.appendChild(button(String(i + 1), function () { seek(i); }));
    });

    function show(i) {
      if (i === shown) return;
      shown = i;
      img.hidden = i < 0;
      if (noslide) noslide.hidden = i >= 0;
      if (i >= 0) {
        img.src = urlOf(i);
        img.alt = "Slide " + (i + 1);
        if (i + 1 < slides.length) new Image().src = urlOf(i + 1);  // one ahead, while idle
      }
      where.textContent = slides.length ? (Math.max(i, 0) + 1) + " / " + slides.length : "";
      for (var k = 0; k < list.children.length; k++) {
        list.children[k].setAttribute("aria-pressed", String(k === i));
      }
    }

    function seek(i) {
      if (i < 0 || i >= slides.length) return;
      audio.currentTime = slides[i].at_ms / 1000;
      show(i);
    }

    /** The current slide's strokes since its last clear, if that set (or the size) changed. */
    function drawInk() {
      var list = shown >= 0 ? inkOf[pageOf[shown]] || [] : [];
      var end = slideAt(list, audio.currentTime * 1000) + 1, from = end;
      while (from > 0 && !list[from - 1].clear) from--;
      var r = window.devicePixelRatio || 1;
      var w = img.hidden ? 0 : Math.round(img.clientWidth * r);
      var h = img.hidden ? 0 : Math.round(img.clientHeight * r);
      var key = [shown, from, end, w, h].join();
      if (key === drawn) return;
      drawn = key;
      if (canvas.width !== w || canvas.height !== h) {
        canvas.width = w;  // also clears it
        canvas.height = h;
      }
      window.GRoomInk.drawStrokes(canvas, w && h ? list.slice(from, end) : []);
      canvas.setAttribute("data-strokes", String(end - from));
    }

    /** The latest poll result shown to the class, for POLL_MS after it was. */
    function showPoll(ms) {
      var j = slideAt(polls, ms);
      if (j >= 0 && ms - polls[j].at_ms > POLL_MS) j = -1;
      if (j === pollShown) return;
      pollShown = j;
      pollBox.hidden = j < 0;
      pollBox.textContent = "";
      if (j < 0) return;
      var p = polls[j], counts = p.counts || [], total = 0;
      counts.forEach(function (n) { total += n; });
      pollBox.appendChild(el("p", "pb-poll-question", p.question));
      var ul = pollBox.appendChild(el("ul", "pb-poll-counts"));
      (p.choices || []).forEach(function (choice, k) {
        var n = counts[k] || 0;
        ul.appendChild(el("li", null, choice + ": " + n +
                          (total ? " (" + Math.round(100 * n / total) + "%)" : "")));
      });
    }

    function sync() {
      var ms = audio.currentTime * 1000;
      show(slideAt(slides, ms));
      drawInk();
      showPoll(ms);
    }
    audio.addEventListener("timeupdate", sync);
    audio.addEventListener("seeked", sync);
    img.addEventListener("load", drawInk);
    window.addEventListener("resize", drawInk);
    sync();
    return { audio: audio, seek: seek };
  }

  function mountAll() {
    var roots = document.querySelectorAll("[data-playback-manifest]");
    Array.prototype.forEach.call(roots, function (root) {
      fetch(root.getAttribute("data-playback-manifest"), { credentials: "same-origin" })
        .then(function (r) {
          if (!r.ok) throw new Error("HTTP " + r.status);
          return r.json();
        })
        .then(function (manifest) { mount(root, manifest); })
        .catch(function (err) {
          var text = root.getAttribute("data-playback-error") || "Could not load the recording.";
          root.appendChild(el("p", "pb-error", text + " (" + err.message + ")"));
        });
    });
  }

  window.GroomPlayback = { mount: mount };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", mountAll);
  } else {
    mountAll();
  }
})();
