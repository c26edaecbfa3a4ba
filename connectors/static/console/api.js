/*
 * The console's HTTP client: JSON calls to /console/api with the session's CSRF token, and
 * the way back to the sign-in page when the session is gone. The API is docs/console.md.
 */

// This file is /console/static/console/api.js; the API is /console/api/.
export const API = new URL("../../api/", import.meta.url);
export const SIGN_IN = new URL("../sign-in", API);

let me = null; // the signed-in agent: {name, role, csrf_token}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The signed-in agent ({name, role, csrf_token}), once `loadAgent` has fetched it. */
export function agent() {
  return me;
}

/** Fetch who is signed in; from then on changes carry the session's CSRF token. */
export async function loadAgent() {
  me = await api("GET", "me");
  return me;
}

function goToSignIn() {
  const next = location.pathname + location.search + location.hash;
  location.assign(`${SIGN_IN.pathname}?next=${encodeURIComponent(next)}`);
}

/** One API call; JSON in and out. Throws ApiError with the server's message. */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && me) headers["X-CSRF-Token"] = me.csrf_token;
  let response;
  try {
    response = await fetch(new URL(path, API), {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (_) {
    throw new ApiError(0, "the console cannot reach the server; check the connection");
  }
  if (response.status === 401) {
    goToSignIn();
    throw new ApiError(401, "signed out");
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return data;
}
