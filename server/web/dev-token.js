// Where the demo page may send the dev server's token, and how it asks for one. The dev server hands a token with
// every right to the page on its loopback address that shows its page key (the `#key=` of the URL it printed); the page's query parameters can point it at another server (?url=, ?websocketUrl=),
// and a link from any site can set those. So the token goes only where it stays with the server that minted it: to
// the server config.json names, or over WebTransport to a loopback host that must show config.json's certificate
// (another node sharing the dev files, as in docs/cluster.md); a link's own ?certHash= or a WebSocket URL other than
// config.json's gets none (another user of the machine listening on a loopback port would get it: a loopback
// address alone does not say whose server it is). Elsewhere the page sends `?token=` or none.

/** True for a host name or address that is this machine: `localhost`, 127.0.0.0/8, `[::1]`. */
export function isLoopbackHost(hostname) {
  const host = hostname.toLowerCase();
  if (host === 'localhost' || host === '[::1]') return true;
  const octets = host.split('.');
  return octets.length === 4 && octets[0] === '127' && octets.every((o) => /^\d{1,3}$/.test(o) && Number(o) <= 255);
}

/** True when the dev token may go with a connection configured by these query parameters, `served` being what
 *  config.json said (`url`, `certHash`, `websocketUrl`; `{}` without one) and `transport` the one the page uses: a
 *  `url` other than config.json's only to a loopback host, checked with config.json's certificate (a link's
 *  `certHash` other than it, or none to check with, gets no token), and over WebTransport alone unless a
 *  `websocketUrl` is given (the WebSocket URL a client derives from it is checked by no certificate the page
 *  knows); a `websocketUrl` only if it is config.json's own. A URL that does not parse counts as elsewhere. */
export function devTokenMayGo(params, served = {}, transport = params.get('transport') || 'auto') {
  const same = (a, b) => {
    try {
      return Boolean(a && b) && new URL(a).href === new URL(b).href;
    } catch {
      return false;
    }
  };
  // As the client reads a hash: hex digits, colons and spaces between them allowed.
  const hashOf = (hash) => (hash ?? '').replace(/[\s:]/g, '').toLowerCase();
  const url = params.get('url');
  const websocketUrl = params.get('websocketUrl');
  // A link's own certificate hash, whatever the URL (config.json's own included): the client pins it, so whoever
  // shows that certificate at the address would get the token.
  if (params.get('certHash') && hashOf(params.get('certHash')) !== hashOf(served.certHash)) return false;
  if (url && !same(url, served.url)) {
    let loopback = false;
    try {
      loopback = isLoopbackHost(new URL(url).hostname);
    } catch {
      return false;
    }
    const minted = hashOf(served.certHash);
    if (!loopback || !minted || hashOf(params.get('certHash') || served.certHash) !== minted) return false;
    if (!websocketUrl && transport !== 'webtransport') return false;
  }
  return !websocketUrl || same(websocketUrl, served.websocketUrl);
}

/** Where a tab remembers the dev server's page key (session storage: this tab, this run of the page). */
export const PAGE_KEY = 'quiver-page-key';

/** The page key in a URL fragment (`#key=…`, the URL quiver-server printed at start), or null. */
export function keyFromHash(hash) {
  return new URLSearchParams(hash.replace(/^#/, '')).get('key') || null;
}

/** The page key to ask with: the URL's, else the one this tab remembered (`storage`, the tab's sessionStorage;
 *  null, or one that throws, remembers nothing). */
export function pageKey(fromUrl, storage) {
  if (fromUrl) return fromUrl;
  try {
    return storage.getItem(PAGE_KEY);
  } catch {
    return null;
  }
}

/** After config.json answered with `key`: remember it if it got a token (a reload of the tab still works), forget
 *  it if it was refused (the server restarted: a new run has a new key). A key only a link set, never confirmed,
 *  is not kept. */
export function settlePageKey(storage, key, gotToken) {
  try {
    if (gotToken) storage.setItem(PAGE_KEY, key);
    else storage.removeItem(PAGE_KEY);
  } catch {
    // storage unavailable: only the memory is lost
  }
}

/** config.json's URL, asking for a dev token in `params`' name with `key` (the dev server mints one for its page
 *  key only; others send none). */
export function configUrl(params, key) {
  const query = new URLSearchParams();
  if (params.get('name')) query.set('name', params.get('name'));
  if (key) query.set('key', key);
  const text = query.toString();
  return text ? `config.json?${text}` : 'config.json';
}

/** Answers of config.json that mean "not now" (a busy server): the connect fails and is tried again. */
const PASSING = new Set([429, 503]);

/** Asks the dev server for a token for `params`' name with `key` (`fetchFn`: the browser's fetch) and settles the
 *  key in `storage`: the token, or null where none is for this page (`hint(text)` hears why). A refusal (403: a
 *  wrong key, the server restarted, a peer elsewhere) forgets the key; a busy server's 429 or 503, or a network
 *  error, throws with the key kept, so that the connect fails as a passing failure and is tried again (a 429
 *  once made the page forget its key and connect without a token, which the server refused for good); any other
 *  answer (no config.json at all: a page served elsewhere, pointed at a server by `?url=`) means no token. */
export async function fetchDevToken(fetchFn, params, key, storage, hint) {
  const response = await fetchFn(configUrl(params, key), { cache: 'no-store' });
  if (response.status === 403) {
    if (key) settlePageKey(storage, key, false);
    hint(`no dev token: ${(await response.text()).trim()}`);
    return null;
  }
  if (PASSING.has(response.status)) throw new Error(`config.json: HTTP ${response.status}`);
  if (!response.ok) return null;
  const config = await response.json();
  if (key) settlePageKey(storage, key, Boolean(config.token));
  if (config.devTokens && !config.token) {
    hint('no dev token: open the page with the URL quiver-server printed at start (it ends in #key=…)');
  }
  return config.token ?? null;
}
