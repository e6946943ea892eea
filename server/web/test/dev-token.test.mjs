// The demo page's rule for where the dev server's token may go (server/web/dev-token.js).

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { PAGE_KEY, configUrl, devTokenMayGo, isLoopbackHost, pageKey } from '../dev-token.js';

const query = (text) => new URLSearchParams(text);

test('the dev token goes with the configured server or a loopback one, never to a server a link names', () => {
  assert.ok(devTokenMayGo(query('name=alice')), 'config.json\'s own server');
  assert.ok(devTokenMayGo(query('url=https://localhost:4433/quiver&name=alice')));
  assert.ok(devTokenMayGo(query('url=https://127.0.0.1:4433/quiver&websocketUrl=ws://[::1]:4434/quiver')));
  assert.ok(devTokenMayGo(query('websocketUrl=ws://LOCALHOST:4434/quiver')));
  for (const elsewhere of [
    'url=https://evil.example/quiver',
    'url=https://localhost.evil.example/quiver',
    'url=https://127.0.0.1.evil.example/quiver',
    'url=https://192.168.1.20:4433/quiver',
    'url=https://localhost:4433/quiver&websocketUrl=wss://evil.example/quiver',
    'websocketUrl=ws://10.0.0.1:4434/quiver',
    'url=not a url',
  ]) {
    assert.equal(devTokenMayGo(query(elsewhere)), false, elsewhere);
  }
});

test('loopback hosts: localhost, 127.0.0.0/8 and [::1] only', () => {
  for (const host of ['localhost', '127.0.0.1', '127.1.2.3', '[::1]']) assert.ok(isLoopbackHost(host), host);
  for (const host of ['localhost.', 'example.com', '128.0.0.1', '127.0.0', '127.0.0.256', '[::2]', '']) {
    assert.equal(isLoopbackHost(host), false, host);
  }
});

/** A localStorage stand-in. */
function storage(fails = false) {
  const items = new Map();
  return {
    items,
    getItem: (key) => {
      if (fails) throw new Error('denied');
      return items.get(key) ?? null;
    },
    setItem: (key, value) => {
      if (fails) throw new Error('denied');
      items.set(key, value);
    },
  };
}

test('the page key comes from the printed URL\'s #key= and is remembered for the origin', () => {
  const stored = storage();
  assert.equal(pageKey('', stored), null, 'none yet');
  assert.equal(pageKey('#key=abc123', stored), 'abc123');
  assert.equal(stored.items.get(PAGE_KEY), 'abc123');
  assert.equal(pageKey('', stored), 'abc123', 'opened again without it');
  assert.equal(pageKey('#key=def456', stored), 'def456', 'a new key replaces the old');
  assert.equal(pageKey('#key=xyz', storage(true)), 'xyz', 'storage that throws only loses the memory');
  assert.equal(pageKey('', storage(true)), null);
});

test('config.json is asked with the name and the page key', () => {
  assert.equal(configUrl(query(''), null), 'config.json');
  assert.equal(configUrl(query('name=ann b'), null), 'config.json?name=ann+b');
  assert.equal(configUrl(query('name=ann&room=r'), 'k1'), 'config.json?name=ann&key=k1');
  assert.equal(configUrl(query('room=r'), 'k1'), 'config.json?key=k1');
});
