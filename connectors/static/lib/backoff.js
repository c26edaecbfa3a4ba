/*
 * Reconnect backoff for the WebSockets of the agent console and the web chat widget.
 *
 * Used by the console as an ES module and by the widget through the server, which inlines it
 * at widget.js's `include lib/backoff.js` marker (the widget is embedded on other sites as a
 * classic script, which cannot import). Keep it inlinable, as lib/dom.js explains: no
 * imports, one declaration per export.
 */

/**
 * When to try a dropped connection again: the delay doubles from `minMs` up to `maxMs` with
 * each failed attempt, and goes back to `minMs` once `reset` says the connection works.
 */
export class Backoff {
  constructor(minMs = 500, maxMs = 15000) {
    this.minMs = minMs;
    this.maxMs = maxMs;
    this.attempts = 0; // failed attempts since the connection last worked
    this.timer = null;
  }

  /** Call `retry` after the next delay; returns that delay in milliseconds. */
  schedule(retry) {
    const delay = Math.min(this.maxMs, this.minMs * 2 ** this.attempts);
    this.attempts += 1;
    // Jitter, so that many browsers do not come back at the same instant after a restart.
    const wait = Math.round(delay * (0.75 + Math.random() * 0.5));
    clearTimeout(this.timer);
    this.timer = setTimeout(retry, wait);
    return wait;
  }

  /** Drop a scheduled retry: a connection is being opened now. */
  cancel() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  /** The connection works: the next failure waits `minMs` again. */
  reset() {
    this.attempts = 0;
  }

  /**
   * When the browser says it is back online and `idle()` (no socket open or opening), start
   * over from the shortest delay and call `retry` at once instead of waiting out the timer.
   */
  retryWhenOnline(retry, idle) {
    window.addEventListener("online", () => {
      if (!idle()) return;
      this.reset();
      retry();
    });
  }
}

/** The connection status text while a socket is opening, after `attempts` failed tries. */
export function connectingText(attempts) {
  return attempts ? "Reconnecting…" : "Connecting…";
}

/** The connection status text while waiting `wait` ms to try again. */
export function offlineText(wait) {
  return `Offline: retrying in ${Math.ceil(wait / 1000)} s`;
}
