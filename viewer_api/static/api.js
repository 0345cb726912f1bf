// Shared by the radiologist's pages: the bearer token (kept in this tab's sessionStorage, never
// in a cookie), calls to the API, and elements built from text. Values from the API are only
// ever inserted as text nodes, never parsed as HTML.
"use strict";

const Pacs = (() => {
  const TOKEN_KEY = "pacs.token";

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  // The claims of a JWT, decoded for display only (the server verifies the signature).
  function claims(jwt) {
    try {
      const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      return null;
    }
  }

  // An element: properties (or attributes, for names that are none) set from *attributes*,
  // children appended as text nodes or nodes.
  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "dataset") Object.assign(node.dataset, value);
      else if (name in node) node[name] = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  async function api(path, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    const current = token();
    if (current) headers.Authorization = `Bearer ${current}`;
    const init = { ...options, headers };
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.json);
      delete init.json;
    }
    const response = await fetch(path, init);
    const body = response.headers.get("content-type")?.includes("json")
      ? await response.json()
      : await response.text();
    if (!response.ok) {
      const detail = (body && (body.detail || body.title)) || `HTTP ${response.status}`;
      if (response.status === 401) signOut(false);
      throw new ApiError(response.status, detail);
    }
    return body;
  }

  // OHIF at a study; *at* may name the image to open on (initialSeriesInstanceUID and
  // initialSOPInstanceUID, OHIF's own query parameters).
  function viewerUrl(study, at = {}) {
    const query = new URLSearchParams({ StudyInstanceUIDs: study, ...at });
    const current = token();
    if (current) query.set("token", current);
    return `/viewer?${query}`;
  }

  function reviewUrl(study) {
    return `/review?${new URLSearchParams({ study })}`;
  }

  function signOut(reload = true) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (reload) window.location.reload();
  }

  // The session bar and the sign-in form; calls onSignedIn() once a token is there.
  async function session(onSignedIn) {
    const bar = document.getElementById("session");
    const form = document.getElementById("signin");
    const current = token();
    if (current) {
      const who = claims(current) || {};
      const roles = Array.isArray(who.roles) ? who.roles.join(", ") : "";
      const expires = who.exp ? new Date(who.exp * 1000).toLocaleString() : "";
      bar.replaceChildren(
        el("span", { id: "signed-in-as" }, `Signed in as ${who.sub || "?"}`,
          roles ? ` (${roles})` : "", expires ? ` until ${expires}` : ""),
        " ",
        el("button", { type: "button", id: "sign-out", onclick: () => signOut() }, "Sign out"),
      );
      form.hidden = true;
      onSignedIn();
      return;
    }
    form.hidden = false;
    try {
      const settings = await (await fetch("/ui/settings.json")).json();
      const issuer = settings.oidc_issuer;
      if (issuer) {
        const link = /^https?:\/\//.test(issuer) ? el("a", { href: issuer }, issuer) : issuer;
        document.getElementById("token-source").replaceChildren(
          "Paste an access token issued for this archive by ", link, ".");
      }
    } catch {
      // The default hint (pacs token create) stays.
    }
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const pasted = document.getElementById("token").value.trim().replace(/^Bearer\s+/i, "");
      if (!pasted) return;
      sessionStorage.setItem(TOKEN_KEY, pasted);
      window.location.reload();
    });
  }

  function show(message, kind = "info") {
    const box = document.getElementById("message");
    box.className = kind;
    box.textContent = message;
  }

  function millimetres(value) {
    return typeof value === "number" ? `${value.toFixed(1)} mm` : "—";
  }

  function percent(value) {
    return typeof value === "number" ? `${Math.round(value * 100)} %` : "—";
  }

  // DICOM PN (Family^Given^Middle^Prefix^Suffix) as people read it; DA as YYYY-MM-DD.
  function personName(value) {
    if (!value) return "—";
    const text = typeof value === "string" ? value : value.Alphabetic || "";
    const [family, given, middle] = text.split("=")[0].split("^");
    return [family, [given, middle].filter(Boolean).join(" ")].filter(Boolean).join(", ") || "—";
  }

  function date(value) {
    return /^\d{8}$/.test(value || "")
      ? `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6)}`
      : value || "—";
  }

  return {
    ApiError, api, claims, date, el, millimetres, percent, personName, reviewUrl, session, show,
    token, viewerUrl,
  };
})();
