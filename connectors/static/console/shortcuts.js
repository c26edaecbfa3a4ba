/*
 * Keyboard shortcuts (claim, resolve, hand back, release, transfer, next / previous
 * conversation, search, the help overlay that `?` opens) and desktop notifications of new
 * hand-offs (after the agent allows them, only while the console's tab is hidden; a click
 * opens the conversation).
 */

import { $, el } from "../lib/dom.js";
import { readStorage, writeStorage } from "../lib/storage.js";
import { announce } from "./alerts.js";
import { currentConversationId } from "./conversation.js";
import { customerLabel, channelLabel, reasonLabel } from "./format.js";
import { queueOrder } from "./queue.js";
import { selectTab } from "./tabs.js";

const NOTIFY_KEY = "supportbot.console.notifications";

let open = () => {}; // opens a conversation by id (wireShortcuts)
let returnFocus = null; // what had the focus before the help overlay opened

// key -> [what it does, the action]; the help overlay lists them in this order.
const SHORTCUTS = [
  ["c", "Claim the open conversation", () => press("claim")],
  ["r", "Resolve it", () => press("resolve")],
  ["b", "Hand it back to the bot", () => press("handback")],
  ["u", "Release it to the queue", () => press("release")],
  ["t", "Transfer it to a colleague (choose, then Enter)", () => focusTransfer()],
  ["n", "Next conversation in the queue", () => step(1)],
  ["p", "Previous conversation in the queue", () => step(-1)],
  ["e", "Write a reply (Esc leaves the box)", () => focusReply()],
  ["/", "Search conversations", () => openSearch()],
  ["?", "Show or hide these shortcuts", () => toggleHelp()],
];

/** Click a conversation action's button, if the agent may use it now. */
function press(id) {
  const button = $(id);
  if (!currentConversationId() || $("conversation").hidden) {
    announce("Open a conversation first.");
    return;
  }
  if (button.disabled) {
    announce(`${button.textContent} is not possible for this conversation now.`);
    return;
  }
  button.click();
}

function focusTransfer() {
  const select = $("transfer-to");
  if (!currentConversationId() || select.disabled) {
    announce("Nothing to transfer here.");
    return;
  }
  select.focus();
}

function focusReply() {
  const reply = $("reply");
  if (!reply.disabled) reply.focus();
  else announce("Claim the conversation to reply.");
}

/** Open the next (or previous) conversation of the queue, in its order. */
function step(direction) {
  const ids = queueOrder();
  if (!ids.length) {
    announce("The queue is empty.");
    return;
  }
  selectTab($("tab-queue"), false);
  const index = ids.indexOf(currentConversationId());
  const next = index < 0 ? (direction > 0 ? 0 : ids.length - 1) : (index + direction + ids.length) % ids.length;
  open(ids[next]);
  $("transcript").focus();
}

function openSearch() {
  selectTab($("tab-search"), false);
  $("search-q").focus();
}

function toggleHelp(show) {
  const help = $("help");
  const visible = show === undefined ? help.hidden : show;
  if (visible === !help.hidden) return;
  help.hidden = !visible;
  if (visible) {
    returnFocus = document.activeElement;
    $("help-close").focus();
  } else if (returnFocus && document.contains(returnFocus)) {
    returnFocus.focus();
  }
}

function typing(target) {
  return !!target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
  if (!$("approve").hidden) return; // the approval dialog has the keyboard (Esc closes it)
  if (event.key === "Escape") {
    if (!$("help").hidden) {
      event.preventDefault();
      toggleHelp(false);
    } else if (typing(event.target) && event.target.closest(".conversation")) {
      $("transcript").focus();
    }
    return;
  }
  if (typing(event.target)) return;
  if (!$("help").hidden && event.key !== "?") return;
  const shortcut = SHORTCUTS.find(([key]) => key === event.key);
  if (!shortcut) return;
  event.preventDefault();
  shortcut[2]();
}

// -- desktop notifications ------------------------------------------------------------------

function notificationsWanted() {
  return readStorage("localStorage", NOTIFY_KEY) === "on";
}

function renderNotifyButton() {
  const button = $("notifications");
  const supported = "Notification" in window;
  const on = supported && notificationsWanted() && Notification.permission === "granted";
  button.setAttribute("aria-pressed", String(on));
  button.textContent = on ? "Notifications on" : "Notifications off";
  button.disabled = !supported || Notification.permission === "denied";
  button.title = !supported
    ? "This browser cannot show desktop notifications"
    : Notification.permission === "denied"
      ? "Notifications are blocked for this site in the browser's settings"
      : "Desktop notifications of new hand-offs while this tab is hidden";
}

async function toggleNotifications() {
  if (!("Notification" in window)) return;
  if (notificationsWanted() && Notification.permission === "granted") {
    writeStorage("localStorage", NOTIFY_KEY, "off");
  } else {
    const permission = Notification.permission === "granted" ? "granted" : await Notification.requestPermission();
    writeStorage("localStorage", NOTIFY_KEY, permission === "granted" ? "on" : "off");
    if (permission !== "granted") announce("The browser did not allow notifications.");
  }
  renderNotifyButton();
}

/** Tell the agent of new hand-offs on the desktop: only when allowed and the tab is hidden. */
export function notifyArrivals(items) {
  if (!items.length || !document.hidden || !("Notification" in window)) return;
  if (!notificationsWanted() || Notification.permission !== "granted") return;
  for (const item of items.slice(0, 3)) {
    const notification = new Notification(`New hand-off: ${customerLabel(item.customer)}`, {
      body: `${channelLabel(item.channel)} · ${reasonLabel(item.reason)}${item.last_message ? `\n“${item.last_message}”` : ""}`,
      tag: `supportbot-escalation-${item.escalation_id}`,
    });
    notification.addEventListener("click", () => {
      window.focus();
      selectTab($("tab-queue"), false);
      open(item.conversation_id);
      notification.close();
    });
  }
}

export function wireShortcuts(openConversation) {
  open = openConversation;
  $("help-list").replaceChildren(
    ...SHORTCUTS.flatMap(([key, what]) => [el("dt", {}, el("kbd", { text: key })), el("dd", { text: what })]),
    el("dt", {}, el("kbd", { text: "Tab" })),
    el("dd", { text: "In the reply box after /shortcut: insert that canned response" }),
    el("dt", {}, el("kbd", { text: "Esc" })),
    el("dd", { text: "Leave a text box; close this overlay" })
  );
  document.addEventListener("keydown", onKey);
  $("help-open").addEventListener("click", () => toggleHelp(true));
  $("help-close").addEventListener("click", () => toggleHelp(false));
  $("help").addEventListener("click", (event) => {
    if (event.target === $("help")) toggleHelp(false);
  });
  $("notifications").addEventListener("click", toggleNotifications);
  renderNotifyButton();
}
