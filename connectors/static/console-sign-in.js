/*
 * supportbot console: the sign-in page. Plain modern JavaScript, no build step.
 *
 * POST /console/api/session {"name", "password"}; on success go to ?next= (a path on this
 * site only, never another origin), else /console. The API is described in docs/console.md.
 */
(() => {
  "use strict";

  const script = document.currentScript;
  const API = new URL("../api/", script ? script.src : location.href.replace(/[^/]*$/, "static/"));
  const HOME = new URL("..", API).pathname.replace(/\/$/, "") || "/console";

  const form = document.getElementById("sign-in-form");
  const nameInput = document.getElementById("name");
  const passwordInput = document.getElementById("password");
  const button = document.getElementById("sign-in-button");
  const error = document.getElementById("sign-in-error");
  let unlockTimer = null;

  // Browsers drop tabs and line breaks from a URL and read a backslash as "/": with any of
  // them after the first "/", a path such as "/%09/evil.example" leads to another site.
  const UNSAFE = /[\\\u0000-\u001f\u007f-\u009f]/;

  /**
   * Where to go after signing in: a path on this site only (no open redirect), the same rule
   * as the server's (`safe_next` in connectors/console.py).
   */
  function nextPath() {
    const next = new URLSearchParams(location.search).get("next") || "";
    if (!next.startsWith("/") || next.startsWith("//") || UNSAFE.test(next)) return HOME;
    let url;
    try {
      url = new URL(next, location.origin);
    } catch (_) {
      return HOME;
    }
    if (url.origin !== location.origin) return HOME;
    return url.pathname + url.search + url.hash;
  }

  function showError(text, field) {
    error.textContent = text;
    for (const input of [nameInput, passwordInput]) input.removeAttribute("aria-invalid");
    if (field) field.setAttribute("aria-invalid", "true");
  }

  function describeWait(seconds) {
    if (seconds < 60) return `${seconds} seconds`;
    const minutes = Math.ceil(seconds / 60);
    return minutes === 1 ? "1 minute" : `${minutes} minutes`;
  }

  // The limit is per name (and, looser, per address): another name may still sign in.
  let lockedName = null;

  function updateLock() {
    button.disabled = lockedName !== null && nameInput.value.trim() === lockedName;
  }

  function lockFor(name, seconds) {
    lockedName = name;
    updateLock();
    clearTimeout(unlockTimer);
    unlockTimer = setTimeout(() => {
      lockedName = null;
      updateLock();
    }, seconds * 1000);
  }

  nameInput.addEventListener("input", updateLock);

  async function errorOf(response) {
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") return body.error;
    } catch (_) {
      /* not JSON: fall through to the status line */
    }
    return `${response.status} ${response.statusText}`.trim();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = nameInput.value.trim();
    const password = passwordInput.value;
    if (!name) {
      showError("Enter your name.", nameInput);
      nameInput.focus();
      return;
    }
    if (!password) {
      showError("Enter your password.", passwordInput);
      passwordInput.focus();
      return;
    }
    button.disabled = true;
    showError("");
    let response;
    try {
      response = await fetch(new URL("session", API), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        credentials: "same-origin",
        body: JSON.stringify({ name, password }),
      });
    } catch (_) {
      updateLock();
      showError("The console cannot be reached. Check your connection and try again.");
      return;
    }
    if (response.ok) {
      location.assign(nextPath());
      return;
    }
    updateLock();
    if (response.status === 429) {
      const wait = parseInt(response.headers.get("Retry-After") || "60", 10) || 60;
      showError(`Too many failed sign-ins. Try again in ${describeWait(wait)}.`);
      lockFor(name, Math.min(wait, 3600));
      return;
    }
    if (response.status === 401) {
      showError("Wrong name or password.", passwordInput);
      passwordInput.select();
      passwordInput.focus();
      return;
    }
    showError(`Sign-in failed: ${await errorOf(response)}`);
  });
})();
