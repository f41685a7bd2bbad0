// What both pages share: requests to their own origin with the key or token, the key prompt, errors as text.

/** A key kept for this tab only: sessionStorage, never localStorage or a cookie. */
export class Credential {
  constructor(storageName) {
    this.storageName = storageName;
  }
  get value() {
    return sessionStorage.getItem(this.storageName) || "";
  }
  set value(token) {
    if (token) sessionStorage.setItem(this.storageName, token);
    else sessionStorage.removeItem(this.storageName);
  }
}

/** A failed request, as the page shows it: the server's message, its status and code, and when to retry. */
export class ApiError extends Error {
  constructor(message, { status = 0, code = null, retryAfter = null } = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  get text() {
    const parts = [this.status ? `${this.status}: ${this.message}` : this.message];
    if (this.retryAfter !== null) parts.push(`retry in ${this.retryAfter} s`);
    return parts.join(" · ");
  }

  /** The error of a response that is not 2xx, from its OpenAI-shaped body. */
  static async of(response) {
    let message = response.statusText || "request failed";
    let code = null;
    try {
      const body = await response.json();
      if (body && body.error) {
        message = String(body.error.message || message);
        code = body.error.code || null;
      }
    } catch {
      // Not JSON: the status says it.
    }
    const retry = response.headers.get("Retry-After");
    return new ApiError(message, { status: response.status, code, retryAfter: retry === null ? null : Number(retry) });
  }

  /** An error event inside a stream that had started: ``{"error": {...}}``. */
  static inStream(error) {
    return new ApiError(String(error.message || "the answer failed"), { code: error.code || null });
  }
}

/** ``fetch`` to this page's own server, with the credential; JSON bodies only (the server refuses others). */
export async function request(credential, path, { method = "GET", body = undefined, signal = undefined } = {}) {
  const headers = {};
  if (credential.value) headers.Authorization = `Bearer ${credential.value}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
    credentials: "omit",
  });
}

/** The form that asks for a credential (``label``: "API key", "admin token"), hidden, placed under the page's header. */
export function credentialForm(id, label) {
  const title = label[0].toUpperCase() + label.slice(1);
  const input = el("input", { type: "password", name: "credential", autocomplete: "off" });
  input.setAttribute("aria-label", title);
  const form = el(
    "form",
    { id, className: "credential", hidden: true },
    el("p", { className: "why" }),
    el("label", {}, `${title} `, input),
    el("button", { type: "submit" }, `Use this ${label}`),
    el("p", { className: "note" }, "Kept in this tab only (session storage)."),
  );
  document.querySelector("header").after(form);
  return form;
}

/**
 * Shows ``form`` (``credentialForm``'s) until a key is entered; resolves with it.
 * ``message`` says why (no key, or a wrong one).
 */
export function askFor(credential, form, message) {
  const input = form.querySelector("input");
  const note = form.querySelector(".why");
  note.textContent = message;
  form.hidden = false;
  input.value = "";
  input.focus();
  return new Promise((resolve) => {
    form.addEventListener(
      "submit",
      (event) => {
        event.preventDefault();
        credential.value = input.value.trim();
        form.hidden = true;
        resolve(credential.value);
      },
      { once: true },
    );
  });
}

/** ``request``, asking for the credential with ``form`` for as long as the server answers 401. */
export async function authorized(credential, form, path, options = {}) {
  for (;;) {
    const response = await request(credential, path, options);
    if (response.status !== 401) return response;
    const error = await ApiError.of(response);
    await askFor(credential, form, credential.value ? `Not accepted: ${error.message}` : error.message);
  }
}

/** A DOM element: ``el("div", {className: "x"}, "text", child)``; text is always text, never HTML. */
export function el(tag, properties = {}, ...children) {
  const element = document.createElement(tag);
  Object.assign(element, properties);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}
