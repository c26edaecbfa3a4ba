/*
 * supportbot agent console: the entry module. Native ES modules, no build step, no libraries.
 *
 * Talks to the JSON API under /console/api and listens on its events WebSocket; the contract
 * is docs/console.md. The parts are in console/ (api, queue, conversation, search and
 * history, canned responses, the answer library and the approval dialog, shortcuts and notifications, events, dashboard and charts, tabs,
 * alerts, format) and the code shared with the chat widget in lib/. All
 * text from the API is rendered as text, never as HTML.
 */

import { $ } from "./lib/dom.js";
import { wireAlerts } from "./console/alerts.js";
import { loadCanned, wireCanned } from "./console/canned.js";
import { api, loadAgent, SIGN_IN } from "./console/api.js";
import { loadColleagues, loadIntents, openConversation, wireConversation } from "./console/conversation.js";
import { wireApproval } from "./console/approval.js";
import { wireDashboard } from "./console/dashboard.js";
import { connect, wireEvents } from "./console/events.js";
import { loadQueue, wireQueue } from "./console/queue.js";
import { wireLibrary } from "./console/library.js";
import { wireSearch } from "./console/search.js";
import { wireShortcuts } from "./console/shortcuts.js";
import { selectTab, wireTabs } from "./console/tabs.js";

function wire() {
  wireTabs();
  wireQueue(openConversation);
  wireConversation();
  wireDashboard();
  wireSearch(openConversation);
  wireCanned();
  wireLibrary();
  wireApproval();
  wireShortcuts(openConversation);
  wireAlerts();
  wireEvents();
  $("sign-out").addEventListener("click", async () => {
    try {
      await api("DELETE", "session");
    } catch (_) {
      /* signed out already, or the server is away: the sign-in page is the way on either way */
    }
    location.assign(SIGN_IN.pathname);
  });
}

async function start() {
  let me;
  try {
    me = await loadAgent();
  } catch (error) {
    if (error.status !== 401) {
      $("queue-error").textContent = `The console could not start: ${error.message}. Retrying…`;
      setTimeout(start, 3000);
    }
    return;
  }
  $("agent-name").textContent = me.name;
  $("agent-role").textContent = me.role;
  $("tab-dashboard").hidden = me.role !== "operator";
  await Promise.all([loadIntents(), loadQueue(), loadCanned(null), loadColleagues()]);
  const match = /^#conversation=(.+)$/.exec(location.hash);
  if (match) openConversation(decodeURIComponent(match[1]));
  else if (location.hash === "#dashboard" && me.role === "operator") selectTab($("tab-dashboard"), false);
  connect();
}

// A module runs once, after the document is parsed; start() may run again after a failed /me.
wire();
start();
