// The Quiver demo page: connects over WebTransport (or, where that does not get through, the WebSocket fallback),
// joins a room (chat and members) and subscribes to a tick channel (a live plot with loss, staleness and latency
// counters).
//
// Where to connect comes from /config.json ({url, websocketUrl, certHash, room, channel}), overridden by the page's
// query parameters ?url=&websocketUrl=&certHash=&room=&channel=&name=; ?transport=websocket (or webtransport) forces
// a transport; ?fallbackTimeoutMs= sets how long WebTransport gets before the WebSocket. For automated tests the page keeps `window.quiverState` current and sets `window.quiverReady = true`
// once it has joined the room and subscribed to the channel.

import { QuiverClient, QuiverError, errorCodeName } from './quiver/index.js';
import { devTokenMayGo, fetchDevToken, keyFromHash, pageKey } from './dev-token.js';

/** Seconds of ticks the plot shows. */
const PLOT_SECONDS = 5;
/** Samples kept for the plot (60 Hz for PLOT_SECONDS, with room for faster channels' latest values). */
const PLOT_SAMPLES = 2000;
/** Errors kept in the state and on the page. */
const MAX_ERRORS = 50;
/** Lines (messages, notes) kept in the state and on the page: a page left open on a busy room stays small. */
const MAX_LINES = 500;

const $ = (selector) => document.querySelector(selector);
const utf8 = new TextDecoder();
// (Linear: `\d+\.?\d*` backtracked quadratically on a long run of digits ending otherwise, ~1 ms per 1,200-byte tick.)
const DECIMAL = /^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$/;

/** Everything the page shows, kept current for people and for tests. */
const state = {
  status: 'connecting',
  transport: null,
  identity: null,
  room: null,
  channel: null,
  members: [],
  messages: [],
  ticks: { received: 0, lost: 0, stale: 0, lastSeq: '' },
  latencyMs: null,
  rttMs: null,
  errors: [],
};
window.quiverState = state;
window.quiverReady = false;

/** Tick samples for the plot: {at: performance.now(), value}. */
const samples = [];

/** Records an error in the state and shows it. */
function report(error) {
  const text = error instanceof QuiverError ? `${error.codeName}: ${error.message}` : String(error?.message ?? error);
  state.errors.push(text);
  if (state.errors.length > MAX_ERRORS) state.errors.shift();
  const item = document.createElement('li');
  item.textContent = text;
  const list = $('#error-list');
  list.append(item);
  while (list.children.length > MAX_ERRORS) list.firstElementChild.remove();
  $('#errors').hidden = false;
}

/** The tab's sessionStorage, or null where reading it throws (a sandboxed frame). */
function pageStorage() {
  try {
    return window.sessionStorage;
  } catch {
    return null;
  }
}

/** The page key of the URL quiver-server printed, taken out of the address bar at once (it would stay in the
 *  browser's history and in a copied link otherwise). */
const keyInUrl = keyFromHash(location.hash);
/** An application's token (`?token=`), likewise taken out of the address bar (a token lasting months stayed in the
 *  history and in every link copied from it), and kept with the history entry, so that a reload still has it. */
const tokenInUrl = new URLSearchParams(location.search).get('token') || history.state?.token || null;
if (keyInUrl || new URLSearchParams(location.search).has('token')) {
  const kept = new URLSearchParams(location.search);
  kept.delete('token');
  const query = kept.toString();
  history.replaceState(tokenInUrl ? { token: tokenInUrl } : null, '', location.pathname + (query ? `?${query}` : ''));
}

/** Why the dev server gave no token, told once. */
let tokenHintShown = false;
function tokenHint(text) {
  if (tokenHintShown) return;
  tokenHintShown = true;
  report(text);
}

/** A fresh token at every connect: `?token=` if given, else the dev server's (from config.json) when the page
 *  connects to it or another loopback server (dev-token.js: a link must not send it elsewhere), else none. */
async function freshToken() {
  const params = new URLSearchParams(location.search);
  if (tokenInUrl) return tokenInUrl;
  if (!devTokenMayGo(params, served, served.transport)) return null;
  // (A passing failure throws: the connect is tried again, the key kept. dev-token.js.)
  return fetchDevToken(fetch, params, pageKey(keyInUrl, pageStorage()), pageStorage(), tokenHint);
}

/** What config.json said (its server's certificate hash and WebSocket URL): where the dev token may go. */
let served = {};

/** Where to connect: config.json, then the query parameters. */
async function loadConfig() {
  const params = new URLSearchParams(location.search);
  let config = {};
  try {
    const response = await fetch('config.json', { cache: 'no-store' }); // where to connect; no token asked for here
    if (!response.ok) throw new Error(`config.json: HTTP ${response.status}`);
    config = await response.json();
  } catch (err) {
    if (!params.get('url')) throw err; // without config.json the URL must be given
  }
  served = { url: config.url ?? null, certHash: config.certHash ?? null, websocketUrl: config.websocketUrl ?? null };
  const pick = (key, fallback) => params.get(key) || config[key] || fallback;
  // The WebSocket fallback: ?websocketUrl=, else config.json's URL (null: the server has no WebSocket listener, so
  // WebTransport only); with ?url= (another server) and no ?websocketUrl=, the client derives it from the URL.
  const configured = !params.get('url') && !params.get('websocketUrl');
  const websocketUrl = params.get('websocketUrl') || (configured ? (config.websocketUrl ?? null) : null);
  const noWebSocket = configured && config.websocketUrl === null;
  // Another loopback node named by ?url= alone, the dev token allowed to it over WebTransport only (its certificate
  // is checked; the WebSocket URL derived from it would be checked by none: dev-token.js): WebTransport is used.
  // Anywhere else (no dev token goes) the WebSocket fallback stays.
  const webTransportOnly = !tokenInUrl && devTokenMayGo(params, served, 'webtransport') && !devTokenMayGo(params, served);
  const transport = params.get('transport') || (noWebSocket || webTransportOnly ? 'webtransport' : 'auto');
  served.transport = transport;
  return {
    url: pick('url', null),
    websocketUrl,
    transport,
    fallbackTimeoutMs: Number(params.get('fallbackTimeoutMs')) || undefined,
    certHash: pick('certHash', null),
    room: pick('room', 'lobby'),
    channel: pick('channel', 'prices'),
    name: params.get('name') || null,
  };
}

// ── chat ──

function scrolledToBottom(list) {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 30;
}

function appendLine(build) {
  const list = $('#messages');
  const follow = scrolledToBottom(list);
  const item = document.createElement('li');
  build(item);
  list.append(item);
  while (list.children.length > MAX_LINES) list.firstElementChild.remove();
  if (follow) list.scrollTop = list.scrollHeight;
}

function showMessage({ seq, sender, text }) {
  state.messages.push({ seq: String(seq), sender, text });
  if (state.messages.length > MAX_LINES) state.messages.shift();
  appendLine((item) => {
    const seqSpan = Object.assign(document.createElement('span'), { className: 'seq', textContent: `#${seq}` });
    const senderSpan = Object.assign(document.createElement('span'), { className: 'sender', textContent: sender });
    item.append(seqSpan, senderSpan, text);
  });
}

function showNote(text) {
  appendLine((item) => {
    item.className = 'note';
    item.textContent = text;
  });
}

function showMembers(members) {
  state.members = members;
  $('#members').replaceChildren(...members.map((member) => {
    const item = document.createElement('li');
    item.textContent = member;
    item.classList.toggle('me', member === state.identity);
    return item;
  }));
}

/** `room` is the Room once `join` has returned (events can come just before that), else null. */
function onRoomEvent(room, event) {
  const members = () => showMembers(room?.members ?? state.members);
  switch (event.type) {
    case 'message':
      showMessage(event);
      break;
    case 'joined':
    case 'left':
      showNote(`${event.member} ${event.type}`);
      members();
      break;
    case 'resumed':
      showNote(event.recovered ? 'reconnected: nothing missed' : 'reconnected: some messages were missed');
      members();
      break;
    case 'kicked':
      report(`removed from room ${event.room}: ${errorCodeName(event.code)}: ${event.reason}`);
      break;
  }
}

// ── ticks ──

/** The number a tick plots: its payload as decimal text, else its first two bytes (LE u16) in 0..1, else its seq. */
function tickValue({ seq, payload }) {
  const text = utf8.decode(payload).trim();
  if (DECIMAL.test(text)) return Number(text);
  if (payload.length >= 2) return (payload[0] | (payload[1] << 8)) / 65535;
  return Number(seq);
}

/** `subscription` is the Subscription once `subscribe` has returned (a tick can come just before that), else null. */
function onTick(subscription, tick) {
  Object.assign(state.ticks, subscription?.stats, { lastSeq: String(tick.seq) });
  state.latencyMs = tick.latencyMs;
  samples.push({ at: performance.now(), value: tickValue(tick) });
  if (samples.length > PLOT_SAMPLES) samples.splice(0, samples.length - PLOT_SAMPLES);
}

/** Draws the last PLOT_SECONDS of ticks: a line through the values, scaled to their range, and the newest as a dot. */
function drawPlot(canvas, now) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.round(canvas.clientWidth * ratio);
  const height = Math.round(canvas.clientHeight * ratio);
  if (canvas.width !== width || canvas.height !== height) Object.assign(canvas, { width, height });
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, width, height);
  const since = now - PLOT_SECONDS * 1000;
  while (samples.length > 0 && samples[0].at < since) samples.shift();
  if (samples.length === 0) {
    ctx.fillStyle = '#6b7385';
    ctx.font = `${13 * ratio}px system-ui, sans-serif`;
    ctx.fillText(`waiting for ticks on ${state.channel ?? '…'}`, 12 * ratio, 24 * ratio);
    return;
  }
  let low = Math.min(...samples.map((s) => s.value));
  let high = Math.max(...samples.map((s) => s.value));
  if (high - low < 1e-9) [low, high] = [low - 1, high + 1];
  const pad = 10 * ratio;
  const x = (at) => pad + ((at - since) / (PLOT_SECONDS * 1000)) * (width - 2 * pad);
  const y = (value) => height - pad - ((value - low) / (high - low)) * (height - 2 * pad);
  ctx.strokeStyle = '#2f6fde';
  ctx.lineWidth = 1.5 * ratio;
  ctx.beginPath();
  samples.forEach((s, i) => (i === 0 ? ctx.moveTo(x(s.at), y(s.value)) : ctx.lineTo(x(s.at), y(s.value))));
  ctx.stroke();
  const last = samples[samples.length - 1];
  ctx.fillStyle = '#2f6fde';
  ctx.beginPath();
  ctx.arc(x(last.at), y(last.value), 4 * ratio, 0, 2 * Math.PI);
  ctx.fill();
  ctx.fillStyle = '#6b7385';
  ctx.font = `${11 * ratio}px ui-monospace, monospace`;
  ctx.fillText(String(+high.toPrecision(6)), 4 * ratio, 12 * ratio);
  ctx.fillText(String(+low.toPrecision(6)), 4 * ratio, height - 4 * ratio);
}

/** Redraws the plot and the counters once per frame (at most the display's rate, 60 Hz on most screens). */
function animate(now) {
  drawPlot($('#ticks-canvas'), now);
  const status = $('#status');
  status.textContent = state.status;
  status.dataset.status = state.status;
  $('#transport').textContent = { webtransport: 'over WebTransport', websocket: 'over WebSocket' }[state.transport] ?? '';
  $('#identity').textContent = state.identity ?? '…';
  $('#rtt').textContent = state.rttMs === null ? '–' : `${state.rttMs.toFixed(1)} ms`;
  $('#ticks-received').textContent = state.ticks.received;
  $('#ticks-lost').textContent = state.ticks.lost;
  $('#ticks-stale').textContent = state.ticks.stale;
  $('#tick-latency').textContent = state.latencyMs === null ? '–' : `${state.latencyMs.toFixed(1)} ms`;
  $('#tick-seq').textContent = state.ticks.lastSeq || '–';
  requestAnimationFrame(animate);
}

/** Publishes a sine wave as decimal text at 60 Hz while the box is ticked. */
function setUpTestSignal(client, channel) {
  let publisher = null;
  let timer = null;
  $('#publish').addEventListener('change', async (event) => {
    clearInterval(timer);
    timer = null;
    if (!event.target.checked) return;
    try {
      publisher ??= await client.publisher(channel);
      // Unticked (or ticked again, which started its own) while the claim was on its way: no interval from here.
      if (!event.target.checked || timer !== null) return;
      timer = setInterval(() => publisher.send((Math.sin(performance.now() / 500) * 10 + 100).toFixed(3)), 1000 / 60);
    } catch (err) {
      event.target.checked = false;
      report(err);
    }
  });
}

// ── start ──

async function main() {
  requestAnimationFrame(animate);
  const config = await loadConfig();
  Object.assign(state, { room: config.room, channel: config.channel });
  $('#room-name').textContent = config.room;
  $('#channel-name').textContent = config.channel;
  if (!config.url) throw new Error('no server URL: config.json has none and the page has no ?url=');

  let client = null;
  let room = null;
  let subscription = null;
  $('#send-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('#message');
    const text = input.value.trim();
    if (!text || !client) return;
    input.value = '';
    client.post(config.room, text).catch(report);
  });
  const options = {
    transport: config.transport,
    websocketUrl: config.websocketUrl,
    fallbackTimeoutMs: config.fallbackTimeoutMs,
    onTransport: (transport, fallback) => {
      state.transport = transport;
      state.transportAtMs = Math.round(performance.now()); // since the page began loading (tests check the fallback's)
      if (fallback) showNote(`WebTransport did not get through (${fallback}); using the WebSocket fallback`);
    },
    certHash: config.certHash,
    name: config.name,
    token: freshToken,
    onStatus: (status, why) => {
      state.status = status;
      state.identity = client?.welcome?.identity ?? state.identity;
      if (status === 'reconnecting') showNote(`connection lost (${why?.reason ?? 'unknown'}); reconnecting…`);
      if (status === 'closed' && why && why.code !== 0) report(`closed: ${errorCodeName(why.code)}: ${why.reason}`);
    },
    onNotice: (notice) => {
      if (notice.type === 'goaway') return showNote(`server going away: ${notice.reason}`);
      if (notice.type === 'kicked' && notice.room !== null) return; // told through the room's events
      report(`${notice.type}: ${errorCodeName(notice.code)}: ${notice.reason}`);
    },
  };
  // The client retries only once connected: a first connect that failed for a passing reason (the server busy,
  // restarting, its config.json answering 429) is tried again here, with a growing pause; a refusal is final.
  for (let attempt = 0; ; attempt++) {
    try {
      client = await QuiverClient.connect(config.url, options);
      break;
    } catch (err) {
      if (err?.refused || attempt >= 5) throw err;
      const pauseMs = Math.min(500 * 2 ** attempt, 5000);
      showNote(`connecting failed (${err?.message ?? err}); trying again in ${pauseMs / 1000} s`);
      await new Promise((resolve) => setTimeout(resolve, pauseMs));
    }
  }
  state.status = client.status;
  state.transport = client.transport;
  state.identity = client.welcome.identity;
  window.quiverClient = client;

  room = await retried(client, () => client.join(config.room, { onEvent: (event) => onRoomEvent(room, event) }));
  showMembers(room.members);
  subscription = await retried(client, () => client.subscribe(config.channel, { onTick: (tick) => onTick(subscription, tick) }));
  window.quiverReady = true;

  setUpTestSignal(client, config.channel);
  setInterval(() => {
    if (client.status !== 'connected') return;
    client.ping().then((rtt) => { state.rttMs = rtt; }, (err) => { if (!err.closed) report(err); });
  }, 1000);
}

/** `attempt()` again while it fails only because the connection went before its reply (the client reconnects;
 *  the join or subscribe must then be made on the new connection), until the client closes for good. */
async function retried(client, attempt) {
  for (;;) {
    try {
      return await attempt();
    } catch (err) {
      if (!err?.closed || client.status === 'closed') throw err;
      await new Promise((resolve) => setTimeout(resolve, 100)); // never a tight loop
    }
  }
}

// Anything that goes wrong on the page, including in callbacks, shows up in the state.
window.addEventListener('error', (event) => report(event.error ?? event.message));
window.addEventListener('unhandledrejection', (event) => report(event.reason));

main().catch((err) => {
  state.status = 'closed';
  report(err);
});
