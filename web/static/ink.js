/* The slide board shared by both pages: the slide image, an ink canvas over it, the pointer dot.
 * Ink is vector strokes on a 0-1000 grid of the slide (docs/protocol.md `ink`): points
 * [x0, y0, x1, y1, ...], a palette colour (0-5) and a width (1-3). No network here. */
"use strict";

var GRoomInk = (function () {
  var COLORS = ["#e53935", "#1e63e9", "#2e7d32", "#f9a825", "#111111", "#ffffff"];
  var MAX_POINTS = 400;

  /** Distance of p from the segment a-b (all [x, y]). */
  function segDist(p, a, b) {
    var dx = b[0] - a[0], dy = b[1] - a[1], len = dx * dx + dy * dy;
    var t = len ? Math.max(0, Math.min(1, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len)) : 0;
    var x = a[0] + t * dx - p[0], y = a[1] + t * dy - p[1];
    return Math.sqrt(x * x + y * y);
  }

  /** Ramer-Douglas-Peucker on [[x, y], ...], iterative. @param {number} eps */
  function simplify(pts, eps) {
    if (pts.length < 3) return pts.slice();
    var keep = new Uint8Array(pts.length), stack = [[0, pts.length - 1]];
    keep[0] = keep[pts.length - 1] = 1;
    while (stack.length) {
      var r = stack.pop(), first = r[0], last = r[1], best = 0, at = 0;
      for (var i = first + 1; i < last; i++) {
        var d = segDist(pts[i], pts[first], pts[last]);
        if (d > best) { best = d; at = i; }
      }
      if (best > eps) { keep[at] = 1; stack.push([first, at], [at, last]); }
    }
    return pts.filter(function (p, i) { return keep[i]; });
  }

  /**
   * One drawn stroke (grid floats) as `ink` point lists ready to send: simplified, rounded to
   * integers in 0..1000, repeated points dropped, split into pieces of at most 400 points that
   * share their joining point.
   * @param {number[][]} pts @returns {number[][]}
   */
  function pack(pts) {
    var flat = [], last = null;
    simplify(pts, 1.5).forEach(function (p) {
      var x = Math.max(0, Math.min(1000, Math.round(p[0]))), y = Math.max(0, Math.min(1000, Math.round(p[1])));
      if (last && last[0] === x && last[1] === y) return;
      last = [x, y];
      flat.push(x, y);
    });
    var out = [];
    for (var i = 0; i < flat.length; i += 2 * (MAX_POINTS - 1)) {
      out.push(flat.slice(i, i + 2 * MAX_POINTS));
      if (i + 2 * MAX_POINTS >= flat.length) break;
    }
    return out;
  }

  /** Draw one stroke {points, color, width} scaled from the grid to the canvas's pixel size. */
  function paintStroke(canvas, s) {
    var ctx = canvas.getContext("2d"), p = s.points || [];
    var sx = canvas.width / 1000, sy = canvas.height / 1000;
    if (p.length < 2 || !canvas.width) return;
    ctx.strokeStyle = ctx.fillStyle = COLORS[s.color] || COLORS[0];
    ctx.lineWidth = Math.max(2, canvas.width / 320) * (s.width || 1);
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

  /** Clear the canvas and draw these strokes (also used by web/static/playback.js). */
  function drawStrokes(canvas, strokes) {
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    for (var i = 0; i < strokes.length; i++) paintStroke(canvas, strokes[i]);
  }

  /**
   * A slide image with its ink and pointer, kept in step with the image's drawn size.
   * @param {HTMLElement} box  holds an <img>, a <canvas> and an element for the pointer dot
   */
  class Board {
    constructor(box) {
      this.box = box;
      this.img = box.querySelector("img");
      this.canvas = box.querySelector("canvas");
      this.dot = box.querySelector(".dot");
      /** @type {{points: number[], color: number, width: number}[]} */
      this.strokes = [];
      this.page = -1;
      var self = this;
      this.img.addEventListener("load", function () { self.fit(); });
      window.addEventListener("resize", function () { self.fit(); });
    }

    /** Show an image URL for `page` with its strokes. */
    show(page, url, strokes) {
      this.page = page;
      this.strokes = (strokes || []).slice();
      this.box.hidden = false;
      if (this.img.getAttribute("src") !== url) this.img.src = url;
      this.fit();
    }

    /** Size the canvas to the image on screen (device pixels) and draw every stroke. */
    fit() {
      var w = this.img.clientWidth, h = this.img.clientHeight, r = window.devicePixelRatio || 1;
      if (!w || !h) return;
      if (this.canvas.width !== Math.round(w * r) || this.canvas.height !== Math.round(h * r)) {
        this.canvas.width = Math.round(w * r);
        this.canvas.height = Math.round(h * r);
      }
      this.redraw();
    }

    redraw() {
      drawStrokes(this.canvas, this.strokes);
      this.box.setAttribute("data-strokes", String(this.strokes.length));
    }

    add(stroke) {
      this.strokes.push(stroke);
      this.paint(stroke);
      this.box.setAttribute("data-strokes", String(this.strokes.length));
    }

    clear() { this.strokes = []; this.redraw(); }

    /** Draw one stroke scaled from the grid to the canvas. */
    paint(s) { paintStroke(this.canvas, s); }

    /** The teacher's pointer at grid (x, y), or hidden when x is null. */
    point(x, y) {
      if (!this.dot) return;
      this.dot.hidden = x === null || x === undefined || y === null || y === undefined;
      if (this.dot.hidden) return;
      this.dot.style.left = x / 10 + "%";
      this.dot.style.top = y / 10 + "%";
    }

    /** Grid coordinates of a pointer event over the canvas. @param {PointerEvent} ev */
    grid(ev) {
      var r = this.canvas.getBoundingClientRect();
      return [(ev.clientX - r.left) * 1000 / (r.width || 1), (ev.clientY - r.top) * 1000 / (r.height || 1)];
    }
  }

  return { Board: Board, pack: pack, simplify: simplify, COLORS: COLORS,
           paintStroke: paintStroke, drawStrokes: drawStrokes };
})();
