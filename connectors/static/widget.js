/*
 * supportbot web chat widget. Plain modern JavaScript, no build step.
 *
 * Embed with one tag (the socket and stylesheet URLs derive from this script's own src):
 *   <script src="https://bot.example/widget.js" data-title="Brightcart support" defer></script>
 * Optional: data-color="#0f6e63" (accent colour).
 *
 * The WebSocket protocol is documented in connectors/widget.py.
 *
 * This is a classic script, not a module, so that the one-tag embed works on any site. The
 * helpers it shares with the agent console (static/lib/) are pasted in by the server where an
 * include comment names them (connectors/static_files.py): served as is, without the server,
 * this file does not run.
 */
(() => {
  "use strict";

  /*include lib/dom.js*/
  /*include lib/storage.js*/
  /*include lib/backoff.js*/

  // Replaced by the server with the widget settings when it serves this file.
  const SERVER = /*config*/{"title": "Support", "maxQueued": 50, "maxChars": 4000}/*config*/;

  const script =
    document.currentScript ||
    Array.from(document.querySelectorAll("script[src]")).find((s) =>
      /\/widget\.js([?#]|$)/.test(s.src)
    );
  if (!script || document.getElementById("supportbot-widget")) return;

  const BASE = new URL(".", script.src);
  const SOCKET_URL = new URL("ws", BASE);
  SOCKET_URL.protocol = SOCKET_URL.protocol === "https:" ? "wss:" : "ws:";
  const TITLE = script.dataset.title || SERVER.title;
  const COLOR = script.dataset.color || "";
  const MAX_QUEUED = SERVER.maxQueued;
  const MAX_CHARS = SERVER.maxChars;
  const RETRY_MS = 2000;
  const SESSION_KEY = "supportbot.session";
  const RATED_KEY = "supportbot.rated";
  const OPEN_KEY = "supportbot.open";
  const ICONS = {
    chat: "M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z",
    close: "M6 6l12 12M18 6L6 18",
    send: "M3 11.5L21 3l-8.5 18-2.2-7.3z",
    up: "M7 10v10H4V10zm2 10h8.3a2 2 0 0 0 2-1.6l1.3-6.4a2 2 0 0 0-2-2.4H14l.8-3.8A1.8 1.8 0 0 0 13 3l-4 7z",
    down: "M7 14V4H4v10zm2-10h8.3a2 2 0 0 1 2 1.6l1.3 6.4a2 2 0 0 1-2 2.4H14l.8 3.8A1.8 1.8 0 0 1 13 21l-4-7z",
  };

  // -- storage (a blocked localStorage must not break the page) ------------------------------

  function loadList(key) {
    try {
      const value = JSON.parse(readStorage("localStorage", key) || "[]");
      return Array.isArray(value) ? value : [];
    } catch (_) {
      return [];
    }
  }

  function randomId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID().replace(/-/g, "");
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // -- state ---------------------------------------------------------------------------------

  // The session id is the customer's proof of their conversation: it is sent in the socket's
  // first frame, never in a URL (URLs end up in proxy access logs).
  const SESSION_PATTERN = /^[A-Za-z0-9_-]{8,100}$/;
  let session = readStorage("localStorage", SESSION_KEY);
  if (session && !SESSION_PATTERN.test(session)) session = null; // the server would refuse it
  let socket = null;
  let live = false; // the socket is open and the history has arrived
  const backoff = new Backoff();
  let retryTimer = null;
  let status = "bot";
  let unread = 0;
  // Customer messages not yet acknowledged, oldest first: {clientId, text, el, sent}.
  const outbox = [];
  const shown = new Map(); // message_id -> element
  const rated = new Set(loadList(RATED_KEY)); // message ids already rated in this browser

  // -- DOM -----------------------------------------------------------------------------------

  function icon(name) {
    return svg(
      "svg",
      { viewBox: "0 0 24 24", "aria-hidden": "true", focusable: "false" },
      svg("path", { d: ICONS[name] })
    );
  }

  const host = el("div", { id: "supportbot-widget" });
  host.style.display = "none"; // shown once the stylesheet has loaded
  if (COLOR) host.style.setProperty("--sb-accent", COLOR);
  const root = host.attachShadow({ mode: "open" });
  const stylesheet = el("link", { rel: "stylesheet", href: new URL("widget.css", BASE).href });
  stylesheet.addEventListener("load", () => (host.style.display = ""));
  stylesheet.addEventListener("error", () => (host.style.display = ""));

  const badge = el("span", { class: "badge", hidden: "" });
  const launcher = el(
    "button",
    {
      type: "button",
      class: "launcher",
      "aria-label": `Chat with us: ${TITLE}`,
      "aria-expanded": "false",
      "aria-controls": "sb-panel",
    },
    icon("chat"),
    badge
  );

  const connection = el("span", { class: "connection" }, "Connecting…");
  const closeButton = el(
    "button",
    { type: "button", class: "close", "aria-label": "Close chat" },
    icon("close")
  );
  const header = el(
    "div",
    { class: "header" },
    el("div", { class: "heading" }, el("h2", { id: "sb-title" }, TITLE), connection),
    closeButton
  );
  // Who is in charge, said honestly: "waiting" until an agent claims, then who joined.
  const bannerTitle = el("strong", {});
  const bannerText = el("span", {});
  const banner = el("div", { class: "banner", role: "status", hidden: "" }, bannerTitle, bannerText);
  const list = el("div", {
    class: "messages",
    role: "log",
    "aria-live": "polite",
    "aria-label": "Conversation",
    tabindex: "0",
  });
  const typing = el(
    "div",
    { class: "typing", hidden: "" },
    el("span", { class: "dots", "aria-hidden": "true" }, el("i"), el("i"), el("i")),
    el("span", { class: "visually-hidden" }, "The assistant is typing")
  );
  const notice = el("div", { class: "notice", role: "alert", hidden: "" });
  const input = el("input", {
    type: "text",
    class: "input",
    "aria-label": "Your message",
    placeholder: "Type your message…",
    maxlength: String(MAX_CHARS),
    autocomplete: "off",
  });
  const sendButton = el("button", { type: "submit", class: "send", "aria-label": "Send" }, icon("send"));
  const form = el("form", { class: "composer" }, input, sendButton);
  const panel = el(
    "div",
    { class: "panel", id: "sb-panel", role: "dialog", "aria-label": TITLE, hidden: "" },
    header,
    banner,
    list,
    typing,
    notice,
    form
  );
  root.append(stylesheet, panel, launcher);

  // -- panel ---------------------------------------------------------------------------------

  function isOpen() {
    return !panel.hidden;
  }

  function open() {
    panel.hidden = false;
    launcher.setAttribute("aria-expanded", "true");
    writeStorage("sessionStorage", OPEN_KEY, "1");
    unread = 0;
    updateBadge();
    ensureSession();
    connect();
    scrollToEnd();
    input.focus();
  }

  function close() {
    panel.hidden = true;
    launcher.setAttribute("aria-expanded", "false");
    writeStorage("sessionStorage", OPEN_KEY, "0");
    launcher.focus();
  }

  function updateBadge() {
    badge.hidden = unread === 0;
    badge.textContent = unread > 9 ? "9+" : String(unread);
  }

  function scrollToEnd() {
    list.scrollTop = list.scrollHeight;
  }

  function showNotice(text) {
    notice.textContent = text;
    notice.hidden = !text;
  }

  function updateTyping() {
    typing.hidden = !(live && outbox.some((item) => item.sent));
    scrollToEnd();
  }

  function setStatus(value, agent) {
    status = value;
    banner.dataset.state = status;
    if (status === "claimed") {
      bannerTitle.textContent = agent ? `${agent} joined` : "An agent joined";
      bannerText.textContent = "You're chatting with a person from our team.";
    } else if (status === "waiting") {
      bannerTitle.textContent = "Waiting for an agent";
      bannerText.textContent = "You're in the queue. Write anything you'd like them to know.";
    }
    const hidden = !(status === "waiting" || status === "claimed");
    if (banner.hidden !== hidden) {
      banner.hidden = hidden;
      scrollToEnd(); // the banner takes room from the list: keep the newest message in view
    }
  }

  // -- rendering (message text only ever goes through textContent) ---------------------------

  function bubble(role, text) {
    const item = el("div", { class: `message ${role}` });
    if (role === "agent") item.append(el("span", { class: "author" }, "Agent"));
    const body = el("p", { class: "text" });
    body.textContent = text;
    item.append(body);
    return item;
  }

  function feedbackButtons(messageId) {
    const box = el("div", { class: "feedback" });
    const up = el("button", { type: "button", "aria-label": "Helpful", title: "Helpful" }, icon("up"));
    const down = el(
      "button",
      { type: "button", "aria-label": "Not helpful", title: "Not helpful" },
      icon("down")
    );
    const thanks = el("span", { class: "thanks", hidden: "" }, "Thanks for your feedback!");
    const rate = (rating, button) => {
      if (!sendFrame({ type: "feedback", message_id: messageId, rating })) {
        showNotice("You're offline; rate this answer again once the chat has reconnected.");
        return;
      }
      button.setAttribute("aria-pressed", "true");
      // Disabling the focused button would drop focus to <body>, outside the panel, where
      // Escape no longer closes it: keep focus in the panel, on the message box.
      input.focus();
      up.disabled = down.disabled = true;
    };
    up.addEventListener("click", () => rate("up", up));
    down.addEventListener("click", () => rate("down", down));
    if (rated.has(messageId)) {
      up.disabled = down.disabled = true;
      thanks.hidden = false;
    }
    box.append(up, down, thanks);
    return box;
  }

  // Removing the focused element drops focus to <body>, out of the panel (Escape then no
  // longer closes it): where the list changes under focus, focus moves to the message box.
  function keepingFocus(change) {
    const focused = root.activeElement;
    const inList = Boolean(focused && list.contains(focused));
    change();
    if (inList && !list.contains(root.activeElement)) input.focus();
  }

  function clearQuickReplies() {
    keepingFocus(() => {
      for (const node of list.querySelectorAll(".quick-replies")) node.remove();
    });
  }

  function quickReplies(choices) {
    const box = el("div", { class: "quick-replies", role: "group", "aria-label": "Suggested replies" });
    for (const choice of choices) {
      const button = el("button", { type: "button" });
      button.textContent = choice;
      button.addEventListener("click", () => {
        submit(choice);
        input.focus(); // the clicked button is gone with the choices
      });
      box.append(button);
    }
    return box;
  }

  function renderMessage(message, isLatest) {
    const item = bubble(message.role, message.text);
    item.dataset.messageId = String(message.message_id);
    if (message.role !== "customer" && message.rateable) item.append(feedbackButtons(message.message_id));
    shown.set(message.message_id, item);
    list.append(item);
    if (isLatest && message.role !== "customer" && message.quick_replies && message.quick_replies.length) {
      clearQuickReplies();
      list.append(quickReplies(message.quick_replies));
    }
    return item;
  }

  function renderPending(item) {
    item.el = bubble("customer", item.text);
    item.el.classList.add("pending");
    list.append(item.el);
  }

  function replaceTranscript(messages) {
    keepingFocus(() => renderTranscript(messages));
  }

  function renderTranscript(messages) {
    list.replaceChildren();
    shown.clear();
    const byClientId = new Map();
    messages.forEach((message, index) => {
      const node = renderMessage(message, index === messages.length - 1);
      if (message.client_id) byClientId.set(message.client_id, node);
    });
    // Messages still waiting for an ack stay visible once: attached to their stored copy
    // when the server already has them, as a pending bubble otherwise.
    for (const item of outbox) {
      const stored = byClientId.get(item.clientId);
      if (stored) item.el = stored;
      else renderPending(item);
    }
    scrollToEnd();
  }

  // -- socket --------------------------------------------------------------------------------

  function ensureSession() {
    if (!session) {
      session = randomId();
      writeStorage("localStorage", SESSION_KEY, session);
    }
  }

  function setConnection(text, state) {
    connection.textContent = text;
    connection.dataset.state = state;
  }

  function connect() {
    if (!session || socket) return;
    backoff.cancel();
    setConnection(connectingText(backoff.attempts), "connecting");
    const ws = new WebSocket(SOCKET_URL);
    socket = ws;
    ws.addEventListener("open", () => {
      // First frame: which conversation this socket speaks for. The history is the answer.
      if (socket === ws) ws.send(JSON.stringify({ type: "hello", session }));
    });
    ws.addEventListener("message", (event) => {
      if (socket === ws) receive(event.data);
    });
    ws.addEventListener("close", () => {
      if (socket !== ws) return;
      socket = null;
      live = false;
      updateTyping();
      for (const item of outbox) item.sent = false;
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    setConnection(offlineText(backoff.schedule(connect)), "offline");
  }

  function sendFrame(frame) {
    if (!live) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  function flush() {
    for (const item of outbox) {
      if (!item.sent && sendFrame({ type: "message", text: item.text, client_id: item.clientId })) {
        item.sent = true;
      }
    }
    updateTyping();
  }

  function receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (_) {
      return;
    }
    switch (frame.type) {
      case "history":
        live = true;
        backoff.reset();
        setConnection("Online", "online");
        showNotice("");
        replaceTranscript(frame.messages || []);
        setStatus(frame.status, frame.agent);
        flush();
        break;
      case "ack": {
        const index = outbox.findIndex((item) => item.clientId === frame.client_id);
        if (index === -1) break;
        const [item] = outbox.splice(index, 1);
        item.el.classList.remove("pending");
        item.el.dataset.messageId = String(frame.message_id);
        shown.set(frame.message_id, item.el);
        updateTyping();
        break;
      }
      case "reply":
        if (shown.has(frame.message_id)) break; // already shown (history, or a resent message)
        renderMessage(frame, true);
        scrollToEnd();
        if (!isOpen()) {
          unread += 1;
          updateBadge();
        }
        break;
      case "status":
        setStatus(frame.status, frame.agent);
        break;
      case "feedback_ok": {
        rated.add(frame.message_id);
        writeStorage("localStorage", RATED_KEY, JSON.stringify(Array.from(rated).slice(-200)));
        const node = shown.get(frame.message_id);
        const thanks = node && node.querySelector(".thanks");
        if (thanks) thanks.hidden = false;
        break;
      }
      case "error":
        handleError(frame);
        break;
      default:
        break;
    }
  }

  function handleError(frame) {
    const index = frame.client_id ? outbox.findIndex((item) => item.clientId === frame.client_id) : -1;
    if (index === -1) {
      showNotice(frame.error);
      return;
    }
    const item = outbox[index];
    if (frame.retry) {
      // Not stored on the server side: keep it and send it again shortly.
      item.sent = false;
      clearTimeout(retryTimer);
      retryTimer = setTimeout(flush, RETRY_MS);
    } else {
      // Refused for good (invalid text, too long, ...): never resend it, say so, and give the
      // text back so the customer can fix it. Later messages do not wait for it.
      outbox.splice(index, 1);
      item.el.classList.remove("pending");
      item.el.classList.add("failed");
      item.el.append(el("span", { class: "error" }, `Not sent: ${frame.error}`));
      if (!input.value) input.value = item.text;
      showNotice("Your message was not sent; edit it below and send it again.");
    }
    updateTyping();
  }

  function submit(text) {
    text = text.trim();
    if (!text) return;
    if (outbox.length >= MAX_QUEUED) {
      showNotice(`${outbox.length} messages are waiting to be sent; please wait until you are back online.`);
      return;
    }
    showNotice("");
    ensureSession();
    clearQuickReplies();
    const item = { clientId: `${Date.now().toString(36)}-${randomId().slice(0, 12)}`, text, el: null, sent: false };
    outbox.push(item);
    renderPending(item);
    scrollToEnd();
    connect();
    flush();
  }

  // -- events --------------------------------------------------------------------------------

  launcher.addEventListener("click", () => (isOpen() ? close() : open()));
  closeButton.addEventListener("click", close);
  panel.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      close();
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value;
    input.value = "";
    submit(text);
  });
  input.addEventListener("input", () => {
    // The protocol's typing frame: accepted by the server, used for nothing yet.
    if (live && input.value.length === 1) sendFrame({ type: "typing" });
  });
  backoff.retryWhenOnline(connect, () => !socket);

  function start() {
    document.body.append(host);
    // A returning visitor reconnects at once: the transcript comes back and agent replies
    // can arrive while the panel is closed. New visitors connect when they open the chat.
    if (session) connect();
    if (readStorage("sessionStorage", OPEN_KEY) === "1") {
      panel.hidden = false;
      launcher.setAttribute("aria-expanded", "true");
    }
  }

  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start);
})();
