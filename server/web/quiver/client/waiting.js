// Waiting that ends with the client: `Timers`, whose sleeps all resolve at once when the client closes (so no
// reconnect loop or request is left sleeping), and `Signal`, which wakes whoever waits for a change.

/** Sleeps that all end when the client ends. */
export class Timers {
  constructor() {
    this.sleeping = new Map(); // setTimeout handle -> resolve
    this.stopped = false;
  }

  /** Resolves after `ms`, or at `stop`, whichever comes first. */
  sleep(ms) {
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const handle = setTimeout(() => {
        this.sleeping.delete(handle);
        resolve();
      }, ms);
      this.sleeping.set(handle, resolve);
    });
  }

  /** Ends every sleep now and every later one at once. */
  stop() {
    this.stopped = true;
    for (const [handle, resolve] of this.sleeping) {
      clearTimeout(handle);
      resolve();
    }
    this.sleeping.clear();
  }
}

/** Wakes whoever waits for something to change (the client's session, when one opens or is lost). */
export class Signal {
  constructor() {
    this.waiters = [];
  }

  /** Resolves at the next `notify`. */
  next() {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  notify() {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}
