/*
 * Live updates from the events WebSocket. Events are only hints: on each one the page
 * refetches what it shows (the queue, and the open conversation when the event is about it),
 * so a missed event costs nothing but a moment's delay.
 */

import { $ } from "../lib/dom.js";
import { Backoff, connectingText, offlineText } from "../lib/backoff.js";
import { API, api } from "./api.js";
import { currentConversationId, loadConversation } from "./conversation.js";
import { libraryChanged } from "./library.js";
import { loadQueue } from "./queue.js";

const REFRESH_DELAY_MS = 120; // events in a burst cause one refetch
const EVENTS_URL = new URL("events", API);
EVENTS_URL.protocol = EVENTS_URL.protocol === "https:" ? "wss:" : "ws:";

const backoff = new Backoff();
let socket = null;
let refreshTimer = null;
let pending = { queue: false, conversation: false };
let refreshing = false;

function setConnection(text, state) {
  const node = $("connection");
  node.textContent = text;
  node.dataset.state = state;
}

/** Open the events socket (unless it is open); it reopens by itself when it drops. */
export function connect() {
  if (socket) return;
  backoff.cancel();
  setConnection(connectingText(backoff.attempts), "connecting");
  const ws = new WebSocket(EVENTS_URL);
  socket = ws;
  ws.addEventListener("message", (event) => {
    if (socket !== ws) return;
    let data;
    try {
      data = JSON.parse(event.data);
    } catch (_) {
      return;
    }
    receive(data);
  });
  ws.addEventListener("close", () => {
    if (socket !== ws) return;
    socket = null;
    scheduleReconnect();
  });
}

function scheduleReconnect() {
  const wait = backoff.schedule(connect);
  setConnection(offlineText(wait), "offline");
  // A refused handshake looks like any dropped socket: if the session expired, /me says so.
  if (backoff.attempts > 1) api("GET", "me").catch(() => {});
}

function receive(event) {
  switch (event.type) {
    case "hello":
      backoff.reset();
      setConnection("Live", "online");
      // Whatever happened while the socket was down: reload it all.
      refresh({ queue: true, conversation: true });
      break;
    case "lagged":
      refresh({ queue: true, conversation: true });
      break;
    case "answer.changed":
      libraryChanged();
      break;
    default: {
      const current = currentConversationId();
      refresh({ queue: true, conversation: !!current && event.conversation_id === current });
    }
  }
}

/** Coalesce refetches: a burst of events costs one queue and one conversation fetch. */
function refresh(what) {
  pending.queue = pending.queue || what.queue;
  pending.conversation = pending.conversation || what.conversation;
  if (refreshTimer || refreshing) return;
  refreshTimer = setTimeout(runRefresh, REFRESH_DELAY_MS);
}

async function runRefresh() {
  refreshTimer = null;
  refreshing = true;
  const what = pending;
  pending = { queue: false, conversation: false };
  try {
    await Promise.all([what.queue ? loadQueue() : null, what.conversation ? loadConversation() : null]);
  } finally {
    refreshing = false;
    if (pending.queue || pending.conversation) refreshTimer = setTimeout(runRefresh, REFRESH_DELAY_MS);
  }
}

/** Reconnect at once when the browser comes back online. */
export function wireEvents() {
  backoff.retryWhenOnline(connect, () => !socket);
}
