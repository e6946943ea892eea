// The demo page's rule for where the dev server's token may go (server/web/dev-token.js).

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  configUrl, devTokenMayGo, fetchDevToken, isLoopbackHost, keyFromHash, pageKey, settlePageKey,
} from '../dev-token.js';

const query = (text) => new URLSearchParams(text);

test('the dev token goes with the configured server, or a loopback one showing its certificate, never elsewhere', () => {
  const hash = 'ab'.repeat(32);
  const served = { url: 'https://localhost:4433/quiver', certHash: hash, websocketUrl: 'ws://localhost:4433/quiver' };
  const wt = 'webtransport'; // the page's transport for another node named by ?url= alone (app.js)
  assert.ok(devTokenMayGo(query('name=alice'), served), 'config.json\'s own server');
  assert.ok(devTokenMayGo(query('url=https://localhost:4433/quiver&name=alice'), served), 'config.json\'s own URL');
  assert.ok(devTokenMayGo(query('url=https://LOCALHOST:4433/quiver'), served), 'written otherwise');
  assert.ok(devTokenMayGo(query('url=https://127.0.0.1:4434/quiver'), served, wt), 'another node with the dev files');
  assert.ok(devTokenMayGo(query(`url=https://[::1]:4434/quiver&certHash=${hash.toUpperCase()}`), served, wt));
  const colons = hash.toUpperCase().match(/../g).join(':');
  assert.ok(devTokenMayGo(query(`url=https://[::1]:4434/quiver&certHash=${colons}`), served, wt), 'as the client reads it');
  assert.ok(devTokenMayGo(query('websocketUrl=ws://LOCALHOST:4433/quiver'), served), 'config.json\'s WebSocket');
  const fallback = 'url=https://localhost:9/quiver&websocketUrl=ws://localhost:4433/quiver';
  assert.ok(devTokenMayGo(query(fallback), served), 'WebTransport elsewhere on this machine, config.json\'s WebSocket');
  // config.json's own URL without a certificate hash to check (a certificate browsers validate themselves).
  const validated = { url: 'https://localhost:4433/quiver', certHash: null, websocketUrl: null };
  assert.ok(devTokenMayGo(query('url=https://localhost:4433/quiver'), validated));
  assert.equal(devTokenMayGo(query('url=https://localhost:4434/quiver'), validated, wt), false);
  for (const elsewhere of [
    'url=https://evil.example/quiver',
    'url=https://localhost.evil.example/quiver',
    'url=https://127.0.0.1.evil.example/quiver',
    'url=https://192.168.1.20:4433/quiver',
    'url=https://localhost:4433/quiver&websocketUrl=wss://evil.example/quiver',
    'websocketUrl=ws://10.0.0.1:4434/quiver',
    'url=not a url',
    // A loopback port of someone else's (another user of the machine): its own certificate, or a WebSocket URL
    // other than config.json's.
    `url=https://127.0.0.1:9999/quiver&certHash=${'cd'.repeat(32)}`,
    'websocketUrl=ws://127.0.0.1:9999/quiver&transport=websocket',
    'url=https://127.0.0.1:4433/quiver&websocketUrl=ws://[::1]:4434/quiver',
    // A link's own certificate hash with config.json's own URL, or alone.
    `url=https://localhost:4433/quiver&certHash=${'cd'.repeat(32)}`,
    `certHash=${'cd'.repeat(32)}`,
  ]) {
    assert.equal(devTokenMayGo(query(elsewhere), served, wt), false, elsewhere);
  }
  // Another loopback node over a transport that may fall back to the WebSocket URL derived from it (wss:, checked
  // by no certificate the page knows).
  for (const transport of ['auto', 'websocket']) {
    assert.equal(devTokenMayGo(query('url=https://127.0.0.1:4434/quiver'), served, transport), false, transport);
  }
  // No config.json (a page served elsewhere): nothing to check a loopback server with.
  assert.equal(devTokenMayGo(query('url=https://localhost:4433/quiver'), {}), false);
});

test('loopback hosts: localhost, 127.0.0.0/8 and [::1] only', () => {
  for (const host of ['localhost', '127.0.0.1', '127.1.2.3', '[::1]']) assert.ok(isLoopbackHost(host), host);
  for (const host of ['localhost.', 'example.com', '128.0.0.1', '127.0.0', '127.0.0.256', '[::2]', '']) {
    assert.equal(isLoopbackHost(host), false, host);
  }
});

/** A sessionStorage stand-in. */
function storage(fails = false) {
  const items = new Map();
  const guard = () => {
    if (fails) throw new Error('denied');
  };
  return {
    items,
    getItem: (key) => (guard(), items.get(key) ?? null),
    setItem: (key, value) => (guard(), items.set(key, value)),
    removeItem: (key) => (guard(), items.delete(key)),
  };
}

test('the page key comes from the printed URL\'s #key=, and a tab keeps it only once it got a token', () => {
  assert.equal(keyFromHash('#key=abc123'), 'abc123');
  assert.equal(keyFromHash(''), null);
  assert.equal(keyFromHash('#key='), null);
  const stored = storage();
  assert.equal(pageKey(null, stored), null, 'none yet');
  assert.equal(pageKey('abc123', stored), 'abc123', 'the URL\'s');
  assert.equal(stored.items.size, 0, 'not kept before the server confirmed it (a link may have set it)');
  settlePageKey(stored, 'abc123', true);
  assert.equal(pageKey(null, stored), 'abc123', 'the tab reloaded without it');
  settlePageKey(stored, 'abc123', false);
  assert.equal(pageKey(null, stored), null, 'refused (a new run of the server): forgotten');
  assert.equal(pageKey(null, storage(true)), null, 'storage that throws remembers nothing');
  assert.equal(pageKey(null, null), null);
  settlePageKey(storage(true), 'k', true); // does not throw
  settlePageKey(null, 'k', true);
});

test('config.json is asked with the name and the page key', () => {
  assert.equal(configUrl(query(''), null), 'config.json');
  assert.equal(configUrl(query('name=ann b'), null), 'config.json?name=ann+b');
  assert.equal(configUrl(query('name=ann&room=r'), 'k1'), 'config.json?name=ann&key=k1');
  assert.equal(configUrl(query('room=r'), 'k1'), 'config.json?key=k1');
});

test('only a refusal forgets the page key: a busy server or a network error fails the connect, to be tried again', async () => {
  const answer = (status, body) => async () => ({
    status,
    ok: status >= 200 && status < 300,
    text: async () => body,
    json: async () => JSON.parse(body),
  });
  const hints = [];
  const hint = (text) => hints.push(text);
  const kept = () => {
    const stored = storage();
    settlePageKey(stored, 'k1', true);
    return stored;
  };
  // A token: the key stays kept.
  let stored = kept();
  const token = await fetchDevToken(answer(200, '{"token":"t1","devTokens":true}'), query(''), 'k1', stored, hint);
  assert.equal(token, 't1');
  assert.equal(pageKey(null, stored), 'k1');
  // Rate-limited, unavailable, or no answer at all: thrown (the client tries again), the key still kept.
  const failures = [
    [answer(429, 'slow down'), /config\.json: HTTP 429/],
    [answer(503, 'busy'), /config\.json: HTTP 503/],
    [async () => { throw new TypeError('offline'); }, /offline/],
  ];
  for (const [fetchFn, why] of failures) {
    stored = kept();
    await assert.rejects(fetchDevToken(fetchFn, query(''), 'k1', stored, hint), why);
    assert.equal(pageKey(null, stored), 'k1', 'a passing failure does not forget the key');
  }
  // No config.json (a page served elsewhere, pointed at a server by ?url=): no token, nothing thrown.
  stored = kept();
  assert.equal(await fetchDevToken(answer(404, 'not found'), query(''), 'k1', stored, hint), null);
  // Refused (the server restarted with a new key): forgotten, and the page is told why.
  stored = kept();
  assert.equal(await fetchDevToken(answer(403, 'wrong key\n'), query(''), 'k1', stored, hint), null);
  assert.equal(pageKey(null, stored), null);
  assert.equal(hints.at(-1), 'no dev token: wrong key');
});
