// G-Room online playback of a recorded lesson: the audio, with the slides changing in step.
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
//     "slides": [{"at_ms": 0, "small": "/slides/ab12.webp", "large": "/slides/ab12-l.webp"}, ...]
//   }
// slides are sorted by at_ms (lesson time, the audio's time). Slide images are fetched only
// when shown, plus the next one ahead; "small" unless the box is wide and data saver is off.
// Builds its DOM with createElement (no innerHTML); style it through the class names.
"use strict";

(function () {
  var SPEEDS = [1, 1.25, 1.5];

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

  /** Index of the last slide with at_ms <= ms, or -1 (binary search). */
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
    var img = stage.appendChild(el("img", "pb-slide"));
    img.hidden = true;
    img.alt = "";
    img.style.maxWidth = "100%";  // CSSOM, allowed by the CSP (no inline style attribute)
    img.style.height = "auto";
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

    function sync() { show(slideAt(slides, audio.currentTime * 1000)); }
    audio.addEventListener("timeupdate", sync);
    audio.addEventListener("seeked", sync);
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
