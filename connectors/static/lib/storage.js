/*
 * Web storage that never breaks the page: a blocked or full localStorage or sessionStorage
 * (private mode, storage disabled) reads as empty and forgets what is written.
 *
 * Used by the console as an ES module and by the widget through the server, which inlines it
 * at widget.js's `include lib/storage.js` marker (the widget is embedded on other sites as a
 * classic script, which cannot import). Keep it inlinable, as lib/dom.js explains: no
 * imports, one declaration per export.
 */

/** `window[area].getItem(key)` ("localStorage" or "sessionStorage"), or null without storage. */
export function readStorage(area, key) {
  try {
    // window[area] inside the try: merely touching a blocked storage throws in some browsers.
    return window[area].getItem(key);
  } catch (_) {
    return null;
  }
}

/** `window[area].setItem(key, value)`; without storage the value lasts for this page view. */
export function writeStorage(area, key, value) {
  try {
    window[area].setItem(key, value);
  } catch (_) {
    /* storage disabled: the caller keeps the value in memory */
  }
}
