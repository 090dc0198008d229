/* G-Room live protocol client (docs/protocol.md): one WebSocket with reconnect and `resume`,
 * one RTCPeerConnection (no trickle: ICE is gathered before the offer), stats, HTTP fallback.
 * No DOM access: student.js and teacher.js listen to its events and draw the page. */
"use strict";

/**
 * @typedef {{type: string, [field: string]: any}} Message
 * @typedef {"connecting"|"waiting"|"live"|"teacher-away"|"reconnecting"|"ended"} State
 * @typedef {Object} Options
 * @property {string} url  WebSocket URL, absolute or a path on this host
 * @property {Object} hello  the `hello` fields (role, code/name, card or lesson_id)
 * @property {string} key  sessionStorage key for the resume token
 * @property {MediaStream} [mic]  microphone published from the start (teacher)
 * @property {boolean} [fallback]  use the HTTP stream when WebRTC fails (student)
 * @property {boolean} [stats]  send `stats` every 2 s (student)
 */

var GRoom = (function () {
  /** Close codes after which reconnecting cannot help. */
  var FINAL = { 4400: 1, 4401: 1, 4403: 1, 4404: 1, 4409: 1, 4410: 1, 4429: 0 };
  var TICK_MS = 2000, CONNECT_MS = 10000, PING_MS = 20000, SILENT_MS = 45000, GATHER_MS = 2000, LOST_MS = 8000;

  /** @param {string} url */
  function wsUrl(url) {
    if (/^wss?:/.test(url)) return url;
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + url;
  }

  /** Resolve when ICE gathering is complete, or after `ms`. @param {RTCPeerConnection} pc */
  function gathered(pc, ms) {
    return new Promise(function (resolve) {
      if (pc.iceGatheringState === "complete") return resolve(undefined);
      var timer = setTimeout(done, ms);
      function check() { if (pc.iceGatheringState === "complete") done(); }
      function done() {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve(undefined);
      }
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  /** The audio inbound-rtp figures of a getStats() report, or null. @param {RTCStatsReport} report */
  function inbound(report) {
    var found = null;
    report.forEach(function (s) {
      if (s.type === "inbound-rtp" && (s.kind || s.mediaType) === "audio") found = s;
    });
    return found;
  }

  function getMic() {
    return navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
  }

  class Live {
    /** @param {Options} opts */
    constructor(opts) {
      this.opts = opts;
      /** @type {Object<string, Function[]>} */
      this.handlers = {};
      /** @type {WebSocket|null} */
      this.ws = null;
      /** @type {RTCPeerConnection|null} */
      this.pc = null;
      /** @type {RTCRtpTransceiver|null} */
      this.tr = null;
      /** @type {MediaStream|null} */
      this.mic = opts.mic || null;
      /** @type {Message|null} */
      this.welcome = null;
      /** @type {Message|null} */
      this.room = null;
      /** kbit/s of the last slide image (the page sets it), sent with the next stats. */
      this.slideKbps = 0;
      /** @type {State} */
      this.state = "connecting";
      this.delay = 1;
      this.stopped = false;
      this.waiting = false;
      this.useFallback = !window.RTCPeerConnection;
      this.sentResume = false;
      this.lastRx = 0;
      this.lastTx = 0;
      this.deadline = 0;
      this.lostSince = 0;
      /** @type {Function|null} resolves the offer in flight with its answer (or null) */
      this.answerWaiter = null;
      this.negotiating = false;
      this.again = false;
      this.timer = 0;
      this.retryTimer = 0;
    }

    /** @param {string} type @param {Function} fn */
    on(type, fn) { (this.handlers[type] = this.handlers[type] || []).push(fn); return this; }

    /** @param {string} type @param {any} [data] */
    emit(type, data) { (this.handlers[type] || []).forEach(function (fn) { fn(data); }); }

    start() {
      var self = this;
      this.timer = setInterval(function () { self.tick(); }, TICK_MS);
      this.connect();
    }

    /** Stop for good (page leaving). */
    stop() {
      this.stopped = true;
      clearInterval(this.timer);
      clearTimeout(this.retryTimer);
      if (this.ws) { this.ws.onclose = null; this.ws.close(1000); this.ws = null; }
      this.closePc();
      this.releaseMic();
    }

    /** Reconnect at once (e.g. the phone is back online). */
    reconnectNow() {
      if (this.stopped || (this.ws && this.ws.readyState <= 1)) return;
      clearTimeout(this.retryTimer);
      this.delay = 1;
      this.connect();
    }

    /** @param {Message} msg */
    send(msg) {
      if (!this.ws || this.ws.readyState !== 1) return false;
      this.ws.send(JSON.stringify(msg));
      this.lastTx = Date.now();
      return true;
    }

    get resume() {
      try { return sessionStorage.getItem(this.opts.key) || ""; } catch (e) { return ""; }
    }

    set resume(token) {
      try {
        if (token) sessionStorage.setItem(this.opts.key, token);
        else sessionStorage.removeItem(this.opts.key);
      } catch (e) { /* storage disabled: reconnects start afresh */ }
    }

    connect() {
      var self = this, ws;
      this.setState(this.welcome ? "reconnecting" : "connecting");
      try { ws = new WebSocket(wsUrl(this.opts.url)); } catch (e) { this.retry(); return; }
      this.ws = ws;
      ws.onopen = function () {
        var hello = Object.assign({ type: "hello" }, self.opts.hello);
        var resume = self.resume;
        self.sentResume = !!resume;
        if (resume) hello.resume = resume;
        self.lastRx = Date.now();
        self.send(hello);
      };
      ws.onmessage = function (ev) {
        self.lastRx = Date.now();
        var msg;
        try { msg = JSON.parse(ev.data); } catch (e) { return; }
        if (msg && typeof msg.type === "string") self.handle(msg);
      };
      ws.onclose = function (ev) {
        if (self.ws === ws) self.dropped(ev.code);
      };
    }

    /** The socket is gone. @param {number} code */
    dropped(code) {
      if (this.ws) { this.ws.onclose = null; this.ws.close(); }
      this.ws = null;
      this.abortAnswer();
      if (this.stopped) return;
      if ((code === 4404 || code === 4410) && this.sentResume) {
        this.resume = "";  // a token from an earlier lesson: join afresh
        this.welcome = null;
        this.delay = 1;
        this.connect();
        return;
      }
      if (FINAL[code]) {
        this.finish();
        this.emit("closed", { code: code });
        return;
      }
      this.retry();
    }

    retry() {
      var self = this;
      this.setState(this.welcome ? "reconnecting" : "connecting");
      var wait = this.delay * (0.8 + Math.random() * 0.4);
      this.delay = Math.min(this.delay * 2, 30);
      this.retryTimer = setTimeout(function () { self.connect(); }, wait * 1000);
    }

    finish() {
      this.stopped = true;
      this.resume = "";
      clearInterval(this.timer);
      clearTimeout(this.retryTimer);
      this.closePc();
      this.releaseMic();
      this.setState("ended");
    }

    /** @param {Message} m */
    handle(m) {
      switch (m.type) {
        case "welcome":
          this.delay = 1;
          this.waiting = false;
          this.welcome = m;
          if (m.resume) this.resume = m.resume;
          this.room = m.room || this.room;
          this.emit("welcome", m);
          if (this.room) this.emit("room", this.room);
          // A resumed participant keeps a working connection: the server keeps its end too.
          if (!this.pc || this.pc.connectionState !== "connected") this.startMedia();
          break;
        case "waiting":
          this.delay = 1;
          this.waiting = true;
          break;
        case "room":
          this.room = m;
          break;
        case "answer":
          if (this.answerWaiter) this.answerWaiter(m.sdp);
          break;
        case "floor":
          this.setMic(!!m.you);
          break;
        case "ended":
          this.emit("ended", m);
          this.finish();
          return;
      }
      if (m.type !== "welcome" && m.type !== "answer") this.emit(m.type, m);
      this.updateState();
    }

    updateState() {
      if (this.stopped) return;
      var r = this.room;
      if (!this.ws || this.ws.readyState !== 1) return;
      if (this.waiting || !this.welcome) this.setState(this.waiting ? "waiting" : this.state);
      else if (r && r.state === "ended") this.setState("ended");
      else if (r && r.teacher_present === false) this.setState("teacher-away");
      else this.setState("live");
    }

    /** @param {State} s */
    setState(s) {
      if (s === this.state) return;
      this.state = s;
      this.emit("state", s);
    }

    closePc() {
      this.abortAnswer();
      if (this.pc) { this.pc.onconnectionstatechange = null; this.pc.ontrack = null; this.pc.close(); }
      this.pc = null;
      this.tr = null;
    }

    releaseMic() {
      if (this.mic) this.mic.getTracks().forEach(function (t) { t.stop(); });
      this.mic = null;
    }

    abortAnswer() {
      if (this.answerWaiter) this.answerWaiter(null);
      this.answerWaiter = null;
    }

    /** A fresh peer connection (first welcome, or the old one failed). */
    startMedia() {
      var self = this;
      this.closePc();
      if (this.useFallback) { this.fallback(); return; }
      var ice = (this.welcome && this.welcome.ice_servers) || [];
      var pc;
      try { pc = new RTCPeerConnection({ iceServers: ice }); } catch (e) { this.fallback(); return; }
      this.pc = pc;
      var track = this.mic && this.mic.getAudioTracks()[0];
      this.tr = track ? pc.addTransceiver(track, { direction: "sendrecv", streams: [this.mic] })
                      : pc.addTransceiver("audio", { direction: "recvonly" });
      pc.ontrack = function (ev) {
        self.emit("track", (ev.streams && ev.streams[0]) || new MediaStream([ev.track]));
      };
      pc.onconnectionstatechange = function () {
        var s = pc.connectionState;
        if (s === "connected") { self.deadline = 0; self.lostSince = 0; self.emit("media", "connected"); }
        else if (s === "failed" || s === "closed") self.lost(true);
        else if (!self.deadline && !self.lostSince) self.lostSince = Date.now();
      };
      this.deadline = Date.now() + CONNECT_MS;
      this.lostSince = 0;
      this.negotiating = false;
      this.again = false;
      this.emit("media", "connecting");
      this.negotiate();
    }

    /** The media path broke after it worked: start a new one while the socket is up. */
    lost(now) {
      if (!this.pc || this.deadline) return;
      if (!now && (!this.lostSince || Date.now() - this.lostSince < LOST_MS)) return;
      this.lostSince = 0;
      if (this.ws && this.ws.readyState === 1) this.startMedia();
      else this.closePc();
    }

    /** Send an offer (ICE gathered) and apply the answer; one at a time per connection. */
    async negotiate() {
      var pc = this.pc;
      if (!pc) return;
      if (this.negotiating) { this.again = true; return; }
      this.negotiating = true;
      var self = this;
      try {
        do {
          this.again = false;
          await pc.setLocalDescription(await pc.createOffer());
          await gathered(pc, GATHER_MS);
          if (pc !== this.pc) return;
          var answer = new Promise(function (resolve) { self.answerWaiter = resolve; });
          if (!this.send({ type: "offer", sdp: pc.localDescription.sdp })) return;
          var sdp = await answer;
          this.answerWaiter = null;
          if (!sdp || pc !== this.pc) return;
          await pc.setRemoteDescription({ type: "answer", sdp: sdp });
        } while (this.again && pc === this.pc);
      } catch (e) {
        this.emit("media", "error");
      } finally {
        if (pc === this.pc) this.negotiating = false;
      }
    }

    /** The HTTP stream instead of WebRTC, for the rest of this page's life. */
    fallback() {
      this.closePc();
      this.useFallback = true;
      var token = this.welcome && this.welcome.listen_token;
      if (!token || !this.opts.fallback) { this.emit("media", "failed"); return; }
      this.emit("media", "fallback");
      this.emit("fallback", "/listen/" + encodeURIComponent(token) + ".ogg");
    }

    /** Publish (true) or stop (false) the microphone, as the floor says. @param {boolean} on */
    async setMic(on) {
      if (on === !!this.mic && (!on || (this.tr && this.tr.sender.track))) return;
      if (!on) {
        this.releaseMic();
        if (this.tr) {
          await this.tr.sender.replaceTrack(null);
          this.tr.direction = "recvonly";
          this.negotiate();
        }
        this.emit("mic", { on: false });
        return;
      }
      if (!this.tr) { this.emit("mic", { on: false, error: "no-webrtc" }); return; }
      try {
        this.mic = this.mic || await getMic();
      } catch (e) {
        this.emit("mic", { on: false, error: (e && e.name) || "mic" });
        return;
      }
      if (!this.tr) return;
      await this.tr.sender.replaceTrack(this.mic.getAudioTracks()[0]);
      this.tr.direction = "sendrecv";
      this.negotiate();
      this.emit("mic", { on: true });
    }

    /** Every 2 s: keep-alive, dead-socket detection, connect deadline, stats. */
    tick() {
      var now = Date.now(), self = this;
      if (this.ws && this.ws.readyState === 1) {
        if (now - this.lastRx > SILENT_MS) { this.dropped(1006); return; }
        if (now - this.lastTx > PING_MS) this.send({ type: "ping" });
      }
      var pc = this.pc;
      if (!pc) return;
      if (this.deadline && now > this.deadline && pc.connectionState !== "connected") {
        if (this.opts.fallback) this.fallback();
        else this.startMedia();
        return;
      }
      this.lost(false);
      if (!this.pc) return;
      if (!this.opts.stats || pc.connectionState !== "connected") return;
      pc.getStats().then(function (report) {
        var s = inbound(report);
        if (!s || pc !== self.pc) return;
        var stats = {
          type: "stats",
          packets_received: s.packetsReceived || 0,
          packets_lost: Math.max(0, s.packetsLost || 0),
          jitter: s.jitter || 0,
          concealed_samples: s.concealedSamples || 0,
          total_samples: s.totalSamplesReceived || 0,
          bytes_received: s.bytesReceived || 0,
        };
        if (self.slideKbps) { stats.slide_kbps = self.slideKbps; self.slideKbps = 0; }
        self.send(stats);
        self.emit("stats", stats);
      }, function () { /* closed meanwhile */ });
    }
  }

  return { Live: Live, getMic: getMic };
})();
