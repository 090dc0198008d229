// G-Room online playback of a recorded lesson: the audio, with the slides changing in step, the
// teacher's ink drawn over them and the poll results the class was shown.
//
// Usage (page template):
//   <div class="playback" data-playback-manifest="/api/lessons/12/recording/manifest"
//        data-playback-error="(translated) Could not load the recording."></div>
//   <script src="/static/playback.js" defer></script>
// or from another script: GroomPlayback.mount(element, manifest).
//
// The manifest is JSON (groom.postprocess.playback_manifest builds it):
//   {
//     "title": "Grade 5 maths",            // optional
//     "audio": "/recordings/12/listen.opus",  // served with Range support (groom/recordings.py)
//     "duration_s": 2712.4,
//     "slides": [{"at_ms": 0, "small": "/slides/ab12.webp", "large": "/slides/ab12-l.webp"}, ...],
//     "ink": [{"at_ms": 5200, "page": 0, "points": [x0, y0, x1, y1, ...], "color": 0, "width": 1},
//             {"at_ms": 9000, "page": 0, "clear": true}, ...],
//     "polls": [{"at_ms": 61000, "question": "2 + 2?", "choices": ["3", "4"], "counts": [1, 9]}]
//   }
// Every list is sorted by at_ms (lesson time, the audio's time). Slide images are fetched only
// when shown, plus the next one ahead; "small" unless the box is wide and data saver is off.
// Ink (web/static/ink.js: a 0-1000 grid of the slide, palette colours) belongs to a slide: its
// "page" is the index in slides of the first change showing that slide, so going back to a
// slide shows its ink again; a clear empties it from then on. The canvas is redrawn only when
// the set of visible strokes (or its size) changes. A poll result shows for POLL_MS after it was.
// Builds its DOM with createElement (no innerHTML); style it through the class names.
"use strict";

(function () {
  var SPEEDS = [1, 1.25, 1.5];
  var COLORS = ["#e53935", "#1e63e9", "#2e7d32", "#f9a825", "#111111", "#ffffff"];  // ink.js's
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

  /** One stroke on a w x h canvas, as ink.js paints it. */
  function paint(ctx, s, w, h) {
    var p = s.points || [], sx = w / 1000, sy = h / 1000;
    if (p.length < 2) return;
    ctx.strokeStyle = ctx.fillStyle = COLORS[s.color] || COLORS[0];
    ctx.lineWidth = Math.max(2, w / 320) * (s.width || 1);
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    if (p.length === 2) {
      ctx.arc(p[0] * sx, p[1] * sy, ctx.lineWidth / 2, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    ctx.moveTo(p[0] * sx, p[1] * sy);
    for (var i = 2; i + 1 < p.length; i += 2) ctx.lineTo(p[i] * sx, p[i + 1] * sy);
    ctx.stroke();
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

    if (manifest.title && !root.hasAttribute("data-playback-hide-title")) {
      root.appendChild(el("h2", "pb-title", manifest.title));
    }
    var stage = root.appendChild(el("div", "pb-stage"));
    var board = stage.appendChild(el("div", "pb-board"));  // the slide, the ink canvas over it
    board.style.position = "relative";  // CSSOM, allowed by the CSP (no inline style attribute)
    board.style.display = "inline-block";
    board.style.maxWidth = "100%";
    var img = board.appendChild(el("img", "pb-slide"));
    img.hidden = true;
    img.alt = "";
    img.style.maxWidth = "100%";
    img.style.height = "auto";
    img.style.verticalAlign = "top";
    var canvas = board.appendChild(el("canvas", "pb-ink"));
    ["left", "top"].forEach(function (k) { canvas.style[k] = "0"; });
    canvas.style.position = "absolute";
    canvas.style.width = canvas.style.height = "100%";
    canvas.style.pointerEvents = "none";
    var pollBox = root.appendChild(el("div", "pb-poll"));
    pollBox.hidden = true;
    pollBox.setAttribute("aria-live", "polite");
    var audio = root.appendChild(el("audio", "pb-audio"));
    audio.style.width = "100%";
    audio.controls = true;
    audio.preload = "metadata";
    audio.src = manifest.audio;

    var nav = root.appendChild(el("div", "pb-nav"));
    var where = el("span", "pb-where");
    nav.appendChild(button("\u25C0", function () {
      var i = slideAt(slides, audio.currentTime * 1000);
      // Within 3 s of a slide's start, "previous" means the slide before it.
      seek(i > 0 && audio.currentTime * 1000 - slides[i].at_ms < 3000 ? i - 1 : Math.max(i, 0));
    }));
    nav.appendChild(button("\u25B6", function () {
      seek(slideAt(slides, audio.currentTime * 1000) + 1);
    }));
    nav.appendChild(where);

    var speeds = root.appendChild(el("div", "pb-speeds"));
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

    var list = root.appendChild(el("div", "pb-list"));
    slides.forEach(function (_s, i) {
      list.appendChild(button(String(i + 1), function () { seek(i); }));
    });

    function show(i) {
      if (i === shown) return;
      shown = i;
      img.hidden = i < 0;
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
      var ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, w, h);
      if (w && h) for (var k = from; k < end; k++) paint(ctx, list[k], w, h);
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
