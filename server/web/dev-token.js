// Where the demo page may send the dev server's token. The dev server hands a token with every right to the page
// on its loopback address; the page's query parameters can point it at another server (?url=, ?websocketUrl=),
// and a link from any site can set those. So the token goes only where it stays on this machine: to the server
// named by config.json (the one that minted it) or to a loopback host. Elsewhere the page sends `?token=` or none.

/** True for a host name or address that is this machine: `localhost`, 127.0.0.0/8, `[::1]`. */
export function isLoopbackHost(hostname) {
  const host = hostname.toLowerCase();
  if (host === 'localhost' || host === '[::1]') return true;
  const octets = host.split('.');
  return octets.length === 4 && octets[0] === '127' && octets.every((o) => /^\d{1,3}$/.test(o) && Number(o) <= 255);
}

/** True when the dev token may go with a connection configured by these query parameters: every URL they set
 *  (`url`, `websocketUrl`) is a loopback one. A URL that does not parse counts as elsewhere. */
export function devTokenMayGo(params) {
  return ['url', 'websocketUrl'].every((key) => {
    const value = params.get(key);
    if (!value) return true;
    try {
      return isLoopbackHost(new URL(value).hostname);
    } catch {
      return false;
    }
  });
}
