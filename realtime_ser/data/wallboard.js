// realtime-ser wallboard: every live call as a tile, alerts first, then the most negative.
//
// Feeds (docs/protocol.md), nothing else, so a cluster's calls show the same way as one node's:
// - one /subscribe without a session: every event of every call, live;
// - for a call met in the middle (already running when the page opened, or after the page's
//   connection dropped), a catch-up /subscribe?session=ID&since=N from the last event seen,
//   closed again once the live feed delivers what it already has;
// - GET /sessions every few seconds: calls that started or ended while the page was away.
// Events of a call are applied in seq order, each once. Event data reaches the page through
// textContent and title only.
"use strict";
(() => {
  const C = window.realtimeSerCommon;
  const { el, clock, pct, colorOf, topLabel } = C;
  const $ = (id) => document.getElementById(id);
  const calls = new Map();        // session -> state (ended calls stay, marked, so late events are ignored)
  let feed = null, feedRetry = 250, feedDown = false, frame = false;

  function newCall(session) {
    return {
      session, lastSeq: -1, buffer: new Map(), cfg: C.alertSettings(null), speakers: new Map(),
      active: new Map(), t: 0, tAt: Date.now(), ended: false, catchup: null, last: "", tile: null, listed: 0,
    };
  }
  function callOf(session) {
    let c = calls.get(session);
    if (!c) { c = newCall(session); calls.set(session, c); }
    return c;
  }
  function speakerOf(c, name) {
    let sp = c.speakers.get(name);
    if (!sp) { sp = { name, recent: [], label: null }; c.speakers.set(name, sp); }
    return sp;
  }

  // -- events, in order ------------------------------------------------------------------------
  function offer(e, fromCatchup) {
    if (!e || typeof e !== "object" || typeof e.session !== "string" || !Number.isInteger(e.seq)) return;
    const c = callOf(e.session);
    if (c.ended) return;
    if (e.seq <= c.lastSeq) {
      // The live feed has what the catch-up already gave: caught up.
      if (!fromCatchup && c.catchup) closeCatchup(c);
      return;
    }
    c.buffer.set(e.seq, e);
    if (e.seq > c.lastSeq + 1 && !c.catchup) startCatchup(c);  // a call met in the middle
    while (c.buffer.has(c.lastSeq + 1)) {
      const next = c.buffer.get(c.lastSeq + 1);
      c.buffer.delete(c.lastSeq + 1);
      c.lastSeq += 1;
      try { apply(c, next); } catch (err) { console.error("cannot show event", next, err); }
    }
    schedule();
  }

  function apply(c, e) {
    if (typeof e.t === "number" && e.t >= c.t) { c.t = e.t; c.tAt = Date.now(); }
    switch (e.type) {
      case "session.started":
        c.cfg = C.alertSettings(e);
        for (const name of e.speakers || []) speakerOf(c, String(name));
        break;
      case "utterance": {
        const sp = speakerOf(c, String(e.speaker));
        const top = topLabel(e.emotion);
        if (top) sp.label = top;
        C.pushScore(sp.recent, e.emotion, c.cfg);
        if (e.text) c.last = `${e.speaker}: ${e.text}`;
        break;
      }
      case "emotion.revised": break;  // the live label stays: alerts are about what was known then
      case "alert":
        speakerOf(c, String(e.speaker));
        if (e.state === "raised") c.active.set(String(e.speaker), e); else c.active.delete(String(e.speaker));
        break;
      case "session.ended":
        endCall(c);
        break;
      default: break;
    }
  }

  function endCall(c) {
    c.ended = true;
    c.buffer.clear();
    closeCatchup(c);
    if (c.tile) { c.tile.remove(); c.tile = null; }
    schedule();
  }

  // -- the feeds -----------------------------------------------------------------------------
  function setConn(kind, text) {
    const e = $("conn");
    e.className = "conn " + kind;
    e.textContent = text;
  }

  function connectFeed() {
    const sock = new WebSocket(C.wsBase + "/" + C.withToken("subscribe"));
    feed = sock;
    sock.onopen = () => {
      feedRetry = 250;
      setConn("live", feedDown ? "live · reconnected" : "live");
      if (feedDown) {  // what happened meanwhile: from each call's log
        feedDown = false;
        for (const c of calls.values()) if (!c.ended && !c.catchup) startCatchup(c);
      }
    };
    sock.onmessage = (m) => {
      let e;
      try { e = JSON.parse(m.data); } catch { return; }
      if (e && e.type === "error" && e.session === "-") { setConn("down", `${e.code}: ${e.message}`); return; }
      offer(e, false);
    };
    sock.onclose = (ev) => {
      if (feed !== sock) return;
      feed = null;
      feedDown = true;
      setConn("down", `connection lost (${ev.code || "no code"}) · reconnecting…`);
      setTimeout(connectFeed, feedRetry);
      feedRetry = Math.min(feedRetry * 2, 5000);
    };
  }

  function startCatchup(c) {
    if (c.ended || c.catchup) return;
    const sock = new WebSocket(C.wsBase + "/" + C.withToken("subscribe",
      { session: c.session, since: String(c.lastSeq + 1) }));
    c.catchup = sock;
    sock.onmessage = (m) => {
      let e;
      try { e = JSON.parse(m.data); } catch { return; }
      if (e && e.type === "error" && e.session !== c.session) {
        if (e.code === "since_unavailable" && Number.isInteger(e.oldest_seq)) {
          c.lastSeq = e.oldest_seq - 1;  // older events are gone: start from the oldest kept
        } else if (e.code === "unknown_session") {
          endCall(c);
        }
        return;
      }
      offer(e, true);
    };
    sock.onclose = () => {
      if (c.catchup !== sock) return;
      c.catchup = null;
      if (!c.ended && c.buffer.size) setTimeout(() => startCatchup(c), 500);  // still a gap: again
    };
  }
  function closeCatchup(c) {
    const sock = c.catchup;
    c.catchup = null;
    if (sock) sock.close(1000, "caught up");
  }

  async function listSessions() {
    let sessions;
    try {
      sessions = await C.fetchSessions();
    } catch (err) {
      $("wall-count").textContent = "cannot list calls: " + err.message;
      return;
    }
    const liveNow = new Set();
    for (const s of sessions) {
      if (s.state !== "live") continue;
      liveNow.add(s.session);
      const c = callOf(s.session);
      c.listed = Number(s.started) || 0;
      if (!c.ended && c.lastSeq < 0 && !c.catchup) startCatchup(c);  // running before the page opened
    }
    for (const c of calls.values()) {
      if (!c.ended && c.lastSeq >= 0 && !liveNow.has(c.session) && !c.catchup) startCatchup(c);  // ended meanwhile?
    }
    schedule();
  }

  // -- the tiles -----------------------------------------------------------------------------
  function levelOf(sp) { return C.level(sp.recent); }
  function worst(c) {
    let m = -1;
    for (const sp of c.speakers.values()) { const v = levelOf(sp); if (v !== null && v > m) m = v; }
    return m;
  }
  function order() {
    return [...calls.values()].filter((c) => !c.ended && c.lastSeq >= 0).sort((a, b) =>
      (b.active.size > 0) - (a.active.size > 0) || worst(b) - worst(a)
      || (a.listed || 0) - (b.listed || 0) || a.session.localeCompare(b.session));
  }
  function duration(c) { return c.t + (Date.now() - c.tAt) / 1000; }

  function tileFor(c) {
    const li = el("li", "call");
    li.dataset.session = c.session;
    const a = el("a", "call-link");
    a.href = C.withToken("./", { session: c.session });
    a.title = `open ${c.session}`;
    const head = el("div", "call-head");
    head.append(el("span", "call-id", c.session), el("span", "call-alert", ""), el("span", "call-dur", ""));
    a.append(head, el("ul", "call-speakers"), el("p", "call-msg"), el("p", "call-last"));
    li.append(a);
    return li;
  }

  function paint(c) {
    if (!c.tile) c.tile = tileFor(c);
    const li = c.tile;
    const alerting = c.active.size > 0;
    li.classList.toggle("alerting", alerting);
    li.dataset.alert = alerting ? "1" : "0";
    const w = worst(c);
    li.dataset.level = w < 0 ? "" : w.toFixed(4);
    li.querySelector(".call-dur").textContent = clock(duration(c)).replace(/\.\d$/, "");
    li.querySelector(".call-alert").textContent = alerting ? "ALERT" : "";
    const msg = [...c.active.values()].map((e) => e.message || e.speaker).join(" · ");
    li.querySelector(".call-msg").textContent = msg;
    li.querySelector(".call-last").textContent = c.last;
    const ul = li.querySelector(".call-speakers");
    const rows = [];
    for (const sp of c.speakers.values()) {
      const row = el("li", "spk" + (c.active.has(sp.name) ? " alerting" : ""));
      row.dataset.speaker = sp.name;
      const chip = el("span", sp.label ? "chip" : "chip none", sp.label ? `${sp.label.label} ${pct(sp.label.conf)}` : "–");
      if (sp.label) chip.style.background = colorOf(sp.label.label);
      const v = levelOf(sp);
      const bar = el("span", "bar");
      const fill = el("span", "fill");
      fill.style.width = v === null ? "0" : pct(v);
      bar.append(fill);
      const neg = el("span", "neg", v === null ? "negative –" : "negative " + pct(v));
      neg.title = v === null ? C.definition(c.cfg) : C.describeLevel(v, sp.recent.length, c.cfg.window_turns);
      if (v !== null) neg.dataset.level = v.toFixed(4);
      row.append(el("span", "name", sp.name), chip, bar, neg);
      rows.push(row);
    }
    ul.replaceChildren(...rows);
  }

  function render() {
    frame = false;
    const list = $("calls");
    const shown = order();
    for (const c of shown) paint(c);
    // Reorder only when the order changed: a tile under the mouse does not jump for nothing.
    const now = [...list.children];
    if (now.length !== shown.length || now.some((li, i) => li !== shown[i].tile)) {
      list.replaceChildren(...shown.map((c) => c.tile));
    }
    const alerting = shown.filter((c) => c.active.size > 0).length;
    $("wall-count").textContent = `${shown.length} live call${shown.length === 1 ? "" : "s"}`
      + (alerting ? ` · ${alerting} with an alert` : "");
    $("wall-empty").hidden = shown.length > 0;
    const cfg = shown.length ? shown[0].cfg : C.alertSettings(null);
    $("wall-definition").textContent = C.definition(cfg);
  }
  function schedule() {
    if (frame) return;
    frame = true;
    requestAnimationFrame(render);
    setTimeout(() => { if (frame) render(); }, 250);  // hidden tabs get no animation frames
  }

  // For tests and troubleshooting.
  window.realtimeSerWall = {
    state() {
      render();  // what the page shows now (it also redraws on the next frame)
      return order().map((c) => ({
        session: c.session, alert: c.active.size > 0, level: worst(c), lastSeq: c.lastSeq, catchup: Boolean(c.catchup),
        speakers: [...c.speakers.values()].map((sp) => ({ name: sp.name, label: sp.label && sp.label.label,
                                                          level: levelOf(sp), turns: sp.recent.length })),
      }));
    },
    ended() { return [...calls.values()].filter((c) => c.ended).map((c) => c.session); },
    disconnect() { if (feed) feed.close(4000, "dropped by the page"); },
  };

  $("to-dashboard").href = C.withToken("./");
  connectFeed();
  listSessions();
  setInterval(listSessions, 3000);
  setInterval(schedule, 1000);  // durations tick
})();
