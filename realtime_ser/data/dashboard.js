// realtime-ser dashboard: follows one session's events over /subscribe (docs/protocol.md).
//
// - Sessions: GET /sessions every few seconds; ?session=ID in the page URL picks one,
//   otherwise the newest live session is followed, or, when none is live, the latest one.
// - Events: /subscribe?session=ID&since=N, starting at since=0 (the whole retained log),
//   and after a drop resuming at the last seq seen + 1, so nothing is missed or shown twice.
// - Rendering: events are queued and drawn once per animation frame, appending only what
//   is new (hundreds of utterances stay cheap). Event data reaches the page through
//   textContent and title only, never as HTML.
"use strict";
(() => {
  const C = window.realtimeSerCommon;
  const { el, clock, pct, colorOf, topLabel } = C;
  const params = C.params;
  const wsBase = C.wsBase;
  const $ = (id) => document.getElementById(id);
  const PX_PER_S = 14;
  const MAX_SPARK = 120;

  let current = params.get("session") || "";
  let chosen = Boolean(current);  // false: follow the newest live session
  let ws = null;
  let S = null;                   // state of the followed session
  let retry = 250, reconnectTimer = null, pauseUntil = 0;
  let pending = [], frameRequested = false;

  function scoresText(scores) {
    return Object.entries(scores || {}).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${pct(v)}`).join(" · ");
  }

  // -- connection status -------------------------------------------------------------------
  function setConn(kind, text) {
    const c = $("conn");
    c.className = "conn " + kind;
    c.textContent = text;
  }

  // -- session state -----------------------------------------------------------------------
  function newState(session) {
    return {
      session, lastSeq: -1, ended: false, down: false, drops: 0, reconnects: 0, droppedAt: 0, gap: "",
      alertsCfg: C.alertSettings(null),
      speakers: new Map(), utterances: new Map(), order: [], alerts: 0, active: new Map(),
      labels: new Set(), duration: 0, ticks: 0,
    };
  }

  function resetView(session) {
    S = newState(session);
    for (const id of ["transcript", "alerts", "legend"]) $(id).textContent = "";
    for (const row of [...document.querySelectorAll("#timeline .lane-row")]) if (row.id !== "axis") row.remove();
    $("axis-lane").textContent = "";
    $("partial").textContent = "";
    $("banner").hidden = true;
    $("alert-count").textContent = "none";
    $("counts").textContent = "";
    $("session-title").textContent = session ? "session " + session : "no session selected";
    $("session-meta").textContent = "";
    $("definition").textContent = C.definition(S.alertsCfg);
    document.title = session ? `${session} · realtime-ser` : "realtime-ser";
  }

  function speakerRow(name, channel) {
    let sp = S.speakers.get(name);
    if (sp) return sp;
    const row = el("div", "lane-row");
    row.dataset.speaker = name;
    const label = el("div", "lane-label");
    const nameEl = el("span", "name", name);
    const trend = el("span", "trend", "–");
    trend.title = C.definition(S.alertsCfg);
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", `0 0 ${MAX_SPARK} 20`);
    svg.setAttribute("preserveAspectRatio", "none");
    const thr = document.createElementNS("http://www.w3.org/2000/svg", "line");
    thr.setAttribute("class", "spark-threshold");
    thr.setAttribute("x1", "0"); thr.setAttribute("x2", String(MAX_SPARK));
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("class", "spark");
    svg.append(thr, line);
    label.append(nameEl, trend, svg);
    const lane = el("div", "lane");
    row.append(label, lane);
    $("timeline").append(row);
    sp = { name, channel, row, lane, trend, line, thr, recent: [], levels: [], band: null };
    S.speakers.set(name, sp);
    drawThreshold(sp);
    return sp;
  }
  function drawThreshold(sp) {
    const y = (20 * (1 - S.alertsCfg.raise_level)).toFixed(1);
    sp.thr.setAttribute("y1", y); sp.thr.setAttribute("y2", y);
  }

  function extendTimeline(t) {
    if (t <= S.duration) return;
    S.duration = t;
    const width = Math.ceil((t + 5) * PX_PER_S) + "px";
    $("axis-lane").style.width = width;
    for (const sp of S.speakers.values()) sp.lane.style.width = width;
    while (S.ticks * 10 <= t + 5) {
      const tick = el("div", "tick", clock(S.ticks * 10).replace(/\.0$/, ""));
      tick.style.left = S.ticks * 10 * PX_PER_S + "px";
      $("axis-lane").append(tick);
      S.ticks++;
    }
    for (const sp of S.speakers.values()) {
      if (sp.band && !sp.band.classList.contains("cleared")) {
        sp.band.style.width = Math.max(4, (t - sp.bandStart) * PX_PER_S) + "px";
      }
    }
  }

  function legend(label) {
    if (S.labels.has(label)) return;
    S.labels.add(label);
    const key = el("span", "key");
    key.dataset.label = label;
    const sw = el("span", "swatch");
    sw.style.background = colorOf(label);
    key.append(sw, document.createTextNode(label));
    $("legend").append(key);
  }

  function describe(e) {
    const lines = [`${e.speaker}  ${clock(e.start)}–${clock(e.end)}`];
    const top = topLabel(e.emotion);
    if (top) {
      lines.push(`${top.label} ${pct(top.conf)}`, "scores: " + scoresText(e.emotion.scores));
      const mod = e.emotion.modalities || {};
      for (const k of Object.keys(mod)) lines.push(`${k}: ` + scoresText(mod[k]));
      if (e.emotion.context_turns !== undefined) lines.push(`context: ${e.emotion.context_turns} turns`);
    } else {
      lines.push("emotion: –");
    }
    lines.push("“" + (e.text || "") + "”");
    return lines.join("\n");
  }

  function paintEmotion(u) {
    const top = topLabel(u.event.emotion);
    u.block.title = describe(u.event);
    u.chip.title = u.block.title;
    if (top) {
      legend(top.label);
      u.block.className = "utt";
      u.block.style.background = colorOf(top.label);
      u.block.dataset.label = top.label;
      u.chip.className = "chip";
      u.chip.style.background = colorOf(top.label);
      u.chip.textContent = `${top.label} ${pct(top.conf)}`;
      u.li.dataset.label = top.label;
    } else {
      u.block.className = "utt none";
      u.chip.className = "chip none";
      u.chip.textContent = "–";
    }
  }

  function updateTrend(sp) {
    if (!sp.recent.length) return;
    const level = C.level(sp.recent);
    sp.levels.push(level);
    if (sp.levels.length > MAX_SPARK) sp.levels.shift();
    sp.trend.textContent = "negative " + pct(level);
    sp.trend.title = C.describeLevel(level, sp.recent.length, S.alertsCfg.window_turns);
    sp.trend.dataset.level = level.toFixed(4);
    const n = sp.levels.length, step = n > 1 ? MAX_SPARK / (n - 1) : 0;
    sp.line.setAttribute("points", sp.levels.map((v, i) => `${(i * step).toFixed(1)},${(20 - 20 * v).toFixed(1)}`).join(" "));
  }

  // -- events ------------------------------------------------------------------------------
  function onUtterance(e) {
    if (S.utterances.has(e.utterance_id)) return;  // already shown (defensive; seq dedup comes first)
    const sp = speakerRow(e.speaker, e.channel);
    extendTimeline(e.end);
    const block = el("div", "utt");
    block.style.left = e.start * PX_PER_S + "px";
    block.style.width = Math.max(3, (e.end - e.start) * PX_PER_S) + "px";
    block.dataset.utterance = e.utterance_id;
    sp.lane.append(block);

    const li = el("li");
    li.dataset.utterance = e.utterance_id;
    li.dataset.speaker = e.speaker;
    const chip = el("span", "chip none", "–");
    const text = el("span", "text" + (e.text ? "" : " empty"), e.text || "(no words recognized)");
    li.append(el("span", "time", clock(e.start)), el("span", "speaker", e.speaker), el("span", "emo"), text);
    li.children[2].append(chip);
    $("transcript").append(li);

    const u = { event: e, block, li, chip };
    S.utterances.set(e.utterance_id, u);
    S.order.push(e.utterance_id);
    paintEmotion(u);
    if (C.pushScore(sp.recent, e.emotion, S.alertsCfg)) updateTrend(sp);
    const p = $("partial");
    if (p.dataset.speaker === e.speaker) { p.textContent = ""; delete p.dataset.speaker; }
  }

  function onRevised(e) {
    const u = S.utterances.get(e.utterance_id);
    if (!u || !e.emotion) return;
    u.event = { ...u.event, emotion: e.emotion };
    paintEmotion(u);
    u.block.classList.add("revised");
  }

  function onAlert(e) {
    S.alerts++;
    const raised = e.state === "raised";
    const li = el("li", raised ? "raised" : "cleared");
    li.dataset.alert = e.alert_id;
    li.append(el("span", "when", clock(e.t)),
              el("div", "what", (raised ? "▲ raised: " : "▽ cleared: ") + e.speaker),
              el("div", "msg", e.message || ""));
    $("alerts").prepend(li);
    $("alert-count").textContent = `${S.alerts} event${S.alerts > 1 ? "s" : ""}`;
    const sp = speakerRow(e.speaker, e.channel);
    if (raised) {
      S.active.set(e.speaker, e);
      sp.row.classList.add("alerting");
      sp.band = el("div", "alert-band");
      sp.bandStart = Number(e.since) || 0;
      sp.band.style.left = sp.bandStart * PX_PER_S + "px";
      sp.band.style.width = Math.max(4, (e.t - sp.bandStart) * PX_PER_S) + "px";
      sp.band.title = e.message || "";
      sp.lane.prepend(sp.band);
    } else {
      S.active.delete(e.speaker);
      sp.row.classList.remove("alerting");
      if (sp.band) {
        sp.band.classList.add("cleared");
        sp.band.style.width = Math.max(4, (e.t - sp.bandStart) * PX_PER_S) + "px";
        sp.band = null;
      }
    }
    showBanner();
  }

  // The red banner is for alerts of a call in progress: once the call ends, it goes (the
  // alert list and the lanes still show what was raised).
  function showBanner() {
    const banner = $("banner");
    banner.hidden = S.active.size === 0 || S.ended;
    banner.textContent = [...S.active.values()].map((a) => "ALERT " + (a.message || a.speaker)).join("  ·  ");
  }

  function onStarted(e) {
    S.alertsCfg = C.alertSettings(e);
    $("definition").textContent = C.definition(S.alertsCfg);
    for (const sp of S.speakers.values()) sp.trend.title = C.definition(S.alertsCfg);
    const asr = e.asr || {};
    $("session-meta").textContent = `${e.input || "?"} · ${e.channels || "?"} ch · asr ${asr.backend || "?"}`
      + (asr.model ? ` (${asr.model})` : "");
    for (const [i, name] of (e.speakers || []).entries()) speakerRow(String(name), i);
    for (const sp of S.speakers.values()) drawThreshold(sp);
  }

  function apply(e) {
    switch (e.type) {
      case "session.started": onStarted(e); break;
      case "utterance": onUtterance(e); break;
      case "emotion.revised": onRevised(e); break;
      case "alert": onAlert(e); break;
      case "transcript.partial": {
        const p = $("partial");
        p.textContent = `${e.speaker} … ${e.text}`;
        p.dataset.speaker = e.speaker;
        break;
      }
      case "session.ended":
        S.ended = true;
        $("partial").textContent = "";
        showBanner();
        for (const sp of S.speakers.values()) sp.row.classList.remove("alerting");
        listSessions();  // its state in the list, now rather than at the next poll
        if (typeof e.duration === "number") extendTimeline(e.duration);
        break;
      case "error":
        if (!e.fatal) break;
        setConn("down", `error: ${e.code}: ${e.message}`);
        break;
      default: break;
    }
    if (typeof e.t === "number") extendTimeline(e.t);
  }

  function flush() {
    frameRequested = false;
    if (!pending.length || !S) return;
    const batch = pending;
    pending = [];
    // Layout is read once before and written once after the batch (no reflow per event).
    const tl = $("timeline"), list = $("transcript");
    const followTimeline = tl.scrollWidth - tl.scrollLeft - tl.clientWidth < 60;
    const followTranscript = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    for (const e of batch) {
      try { apply(e); } catch (err) { console.error("cannot show event", e, err); }
    }
    if (followTimeline) tl.scrollLeft = tl.scrollWidth;
    if (followTranscript) list.scrollTop = list.scrollHeight;
    $("counts").textContent = `${S.order.length} utterance${S.order.length === 1 ? "" : "s"} · ${clock(S.duration)}`
      + (S.ended ? " · ended" : "");
    if (S.ended) {
      setConn("ended", "session ended" + (S.reconnects ? ` · reconnected ${S.reconnects}×, `
        + (S.gap || "no event missed") : ""));
    }
  }
  function schedule() {
    if (frameRequested) return;
    frameRequested = true;
    requestAnimationFrame(flush);
    setTimeout(() => { if (frameRequested) flush(); }, 250);  // hidden tabs get no animation frames
  }

  // -- subscription ------------------------------------------------------------------------
  function connect() {
    reconnectTimer = null;
    if (!current) return;
    const wait = pauseUntil - Date.now();
    if (wait > 0) { reconnectTimer = setTimeout(connect, wait); return; }
    const since = S.lastSeq + 1;
    const sock = new WebSocket(wsBase + "/" + C.withToken("subscribe", { session: current, since: String(since) }));
    ws = sock;
    sock.onopen = () => {
      if (ws !== sock) return;
      retry = 250;
      if (S.down) {
        S.down = false;
        S.reconnects++;
        const away = ((Date.now() - S.droppedAt) / 1000).toFixed(1);
        setConn("resumed", `reconnected after ${away} s · resumed from event ${since}` + (S.gap ? ` · ${S.gap}` : ""));
      } else {
        setConn("live", "live");
      }
    };
    sock.onmessage = (m) => {
      if (ws !== sock) return;
      let e;
      try { e = JSON.parse(m.data); } catch { return; }
      if (!e || typeof e !== "object") return;
      if (e.type === "error" && e.session !== current) {  // about the connection, not an event of the session
        if (e.code === "since_unavailable" && Number.isInteger(e.oldest_seq)) {
          S.gap = `events before ${e.oldest_seq} are no longer kept`;
          S.lastSeq = e.oldest_seq - 1;
        } else {
          setConn("down", `${e.code}: ${e.message}`);
        }
        return;
      }
      if (e.session !== current || !Number.isInteger(e.seq) || e.seq <= S.lastSeq) return;  // not ours, or seen
      S.lastSeq = e.seq;
      if (e.type === "session.ended") S.ended = true;  // before the close that follows it
      pending.push(e);
      schedule();
    };
    sock.onclose = (c) => {
      if (ws !== sock) return;
      ws = null;
      if (S.ended) { flush(); return; }
      if (c.code === 4004) { setConn("down", `unknown session ${current}`); return; }
      if (!S.down) { S.down = true; S.droppedAt = Date.now(); }
      S.drops++;
      setConn("down", `connection lost (${c.code || "no code"}) · reconnecting…`);
      reconnectTimer = setTimeout(connect, c.code === 4010 ? 0 : retry);
      retry = Math.min(retry * 2, 5000);
    };
  }

  function follow(session) {
    if (ws) { const old = ws; ws = null; old.close(1000, "switching session"); }
    if (reconnectTimer) { clearTimeout(reconnectTimer); reconnectTimer = null; }
    pending = [];
    current = session;
    resetView(session);
    markCurrent();
    if (session) { setConn("idle", "connecting…"); connect(); } else { setConn("idle", "not connected"); }
  }

  // -- session list ------------------------------------------------------------------------
  let known = [];
  function markCurrent() {
    for (const li of $("sessions").children) li.classList.toggle("current", li.dataset.session === current);
  }
  async function listSessions() {
    let sessions;
    try {
      sessions = await C.fetchSessions();
    } catch (err) {
      $("sessions-note").textContent = "cannot list sessions: " + err.message;
      return;
    }
    known = sessions.slice().sort((a, b) =>
      (a.state === b.state ? 0 : a.state === "live" ? -1 : 1) || (b.started || 0) - (a.started || 0));
    const ul = $("sessions");
    ul.textContent = "";
    for (const s of known) {
      const li = el("li", s.state === "live" ? "live" : "ended");
      li.dataset.session = s.session;
      const b = el("button");
      b.type = "button";
      const started = s.started ? new Date(s.started * 1000).toLocaleTimeString() : "";
      b.append(el("span", "sid", s.session),
               el("span", "sstate", `${s.state} · ${started} · ${s.next_seq} events · ${s.subscribers} watching`));
      b.onclick = () => {
        chosen = true;
        const u = new URL(location.href);
        u.searchParams.set("session", s.session);
        history.replaceState(null, "", u);
        follow(s.session);
      };
      li.append(b);
      ul.append(li);
    }
    const live = known.filter((s) => s.state === "live").length;
    $("sessions-note").textContent = known.length ? `${live} live, ${known.length - live} recently ended` : "no sessions yet";
    markCurrent();
    if (!chosen) {
      // Not picked by hand: the newest live call; with none live, the one that ended last. A
      // call that starts later takes over from one that has ended.
      const live = known.find((s) => s.state === "live");
      const latest = live || known.slice().sort((a, b) => (b.ended || 0) - (a.ended || 0))[0];
      if (latest && (!current || (live && S && S.ended && live.session !== current))) follow(latest.session);
    }
  }

  // For tests and troubleshooting: drop the connection as a network failure would (and
  // stay away for pauseMs, or until resume()), and read what the page has shown.
  window.realtimeSer = {
    disconnect(pauseMs = 0) {
      pauseUntil = Date.now() + pauseMs;
      if (ws) ws.close(4000, "dropped by the page");
    },
    resume() {
      pauseUntil = 0;
      if (reconnectTimer) { clearTimeout(reconnectTimer); connect(); }
    },
    state() {
      return S && {
        session: S.session, lastSeq: S.lastSeq, ended: S.ended, drops: S.drops, reconnects: S.reconnects,
        utterances: S.order.slice(), alerts: S.alerts, connected: Boolean(ws && ws.readyState === 1),
      };
    },
  };

  $("to-wallboard").href = C.withToken("wallboard");
  resetView(current);
  if (current) follow(current);
  listSessions();
  setInterval(listSessions, 3000);
})();
