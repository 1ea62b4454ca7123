// realtime-ser pages: what the dashboard and the wallboard share (one definition of each).
//
// - The negative level of a speaker: the mean, over their last alerts.window_turns turns
//   that carry an emotion, of the probability on the negative labels (alerts.negative).
//   The runtime's alerts use the same (realtime_ser/alerts.py), and describeLevel() words it
//   exactly as describe_level() there does, so a page and an alert message never disagree.
// - The session's own alert settings come from its session.started event (config.alerts).
"use strict";
window.realtimeSerCommon = (() => {
  const DEFAULT_ALERTS = { negative: ["angry", "sad", "frustrated"], window_turns: 4, raise_level: 0.5 };
  const PALETTE = {
    neutral: "#8c99a6", happy: "#e0a800", excited: "#f28c28", sad: "#3f6fc6", angry: "#d32f2f",
    frustrated: "#e8590c", fear: "#7b4fc9", disgust: "#3d8b4f", surprise: "#1aa3a3", calm: "#5fa88a",
  };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function clock(s) {
    s = Math.max(0, Number(s) || 0);
    const m = Math.floor(s / 60), r = s - 60 * m;
    return m + ":" + (r < 10 ? "0" : "") + r.toFixed(1);
  }
  function pct(x) { return Math.round(100 * (Number(x) || 0)) + "%"; }
  function colorOf(label) {
    if (PALETTE[label]) return PALETTE[label];
    let h = 0;
    for (const ch of String(label)) h = (h * 31 + ch.codePointAt(0)) % 360;
    return `hsl(${h}, 55%, 48%)`;
  }
  function topLabel(emotion) {
    const scores = emotion && emotion.scores;
    if (!scores || typeof scores !== "object" || !Object.keys(scores).length) return null;
    const label = emotion.label in scores ? emotion.label
      : Object.keys(scores).reduce((a, b) => (scores[b] > scores[a] ? b : a));
    return { label: String(label), conf: Number(scores[label]) || 0 };
  }

  // The session's alert settings (from session.started), defaults until it is seen.
  function alertSettings(started) {
    const cfg = { ...DEFAULT_ALERTS, negative: new Set(DEFAULT_ALERTS.negative) };
    const alerts = started && started.config && started.config.alerts;
    if (alerts && typeof alerts === "object") {
      if (typeof alerts.negative === "string") {
        cfg.negative = new Set(alerts.negative.split(",").map((x) => x.trim()).filter(Boolean));
      }
      if (Number.isInteger(alerts.window_turns) && alerts.window_turns > 0) cfg.window_turns = alerts.window_turns;
      if (typeof alerts.raise_level === "number") cfg.raise_level = alerts.raise_level;
    }
    return cfg;
  }
  function negativeShare(scores, cfg) {
    let s = 0;
    for (const [k, v] of Object.entries(scores || {})) if (cfg.negative.has(k)) s += Number(v) || 0;
    return Math.min(1, Math.max(0, s));
  }
  // A speaker's recent negative scores: push one per utterance that carries an emotion.
  function pushScore(recent, emotion, cfg) {
    if (!topLabel(emotion)) return false;
    recent.push(negativeShare(emotion.scores, cfg));
    while (recent.length > cfg.window_turns) recent.shift();
    return true;
  }
  function level(recent) {
    return recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : null;
  }
  // realtime_ser/alerts.py describe_level(), word for word.
  function describeLevel(value, turns, window) {
    const text = `negative ${pct(value)} over the last ${window} turns`;
    return turns < window ? `${text} (${turns} so far)` : text;
  }
  function definition(cfg) {
    return `negative = share of ${[...cfg.negative].sort().join("/")} over a speaker's last ${cfg.window_turns} turns`;
  }

  // ?token= of the page goes on every request the page makes (browsers cannot set headers on WebSockets).
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const wsBase = (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
  function withToken(path, extra) {
    const q = new URLSearchParams(extra || {});
    if (token) q.set("token", token);
    const s = q.toString();
    return s ? `${path}?${s}` : path;
  }
  async function fetchSessions() {
    const r = await fetch(withToken("sessions"), token ? { headers: { Authorization: "Bearer " + token } } : {});
    if (r.status === 401) {
      throw new Error("the server needs its token: open this page as …/?token=TOKEN");
    }
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    return (await r.json()).sessions || [];
  }

  return { el, clock, pct, colorOf, topLabel, alertSettings, negativeShare, pushScore, level, describeLevel,
           definition, params, token, wsBase, withToken, fetchSessions };
})();
