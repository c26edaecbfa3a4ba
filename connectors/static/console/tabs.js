/*
 * The Queue, Search, Canned responses, Answer library and Dashboard tabs (WAI-ARIA tabs: arrow keys, Home and End move between them).
 * The dashboard is reloaded each time its tab is shown, and #dashboard in the address keeps
 * it across reloads.
 */

import { $ } from "../lib/dom.js";
import { currentConversationId } from "./conversation.js";
import { loadDashboard } from "./dashboard.js";
import { loadCanned } from "./canned.js";
import { loadLibrary } from "./library.js";

function tabs() {
  return Array.from(document.querySelectorAll('[role="tab"]')).filter((tab) => !tab.hidden);
}

export function selectTab(tab, focus) {
  for (const other of tabs()) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !selected;
  }
  if (focus) tab.focus();
  if (tab.id === "tab-canned") loadCanned(currentConversationId());
  if (tab.id === "tab-library") loadLibrary(1);
  if (tab.id === "tab-dashboard") {
    loadDashboard();
    if (!currentConversationId()) history.replaceState(null, "", "#dashboard");
  } else if (location.hash === "#dashboard") {
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function tabKeys(event) {
  const all = tabs();
  const index = all.indexOf(event.target);
  let target = null;
  if (event.key === "ArrowRight") target = all[(index + 1) % all.length];
  else if (event.key === "ArrowLeft") target = all[(index - 1 + all.length) % all.length];
  else if (event.key === "Home") target = all[0];
  else if (event.key === "End") target = all[all.length - 1];
  if (target) {
    event.preventDefault();
    selectTab(target, true);
  }
}

export function wireTabs() {
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    tab.addEventListener("click", () => selectTab(tab, false));
    tab.addEventListener("keydown", tabKeys);
  }
}
