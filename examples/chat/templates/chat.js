// The chat page: one WebSocket to /ws, JSON messages in and out.
// Everything the server sends is shown with textContent / createElement, never as HTML.
(() => {
  "use strict";

  const STOP_CODES = new Set([1008, 4401, 4403]); // terminal: do not reconnect
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_MAX_MS = 30000;
  const MAX_SHOWN = 500; // messages kept in the list

  const $ = (id) => document.getElementById(id);
  const list = $("messages");
  const form = $("composer");
  const kind = $("kind");
  const groupPicker = $("group");
  const userPicker = $("user");
  const input = $("text");
  const sendButton = $("send");
  const status = $("status");

  let socket = null;
  let me = null;
  let attempt = 0;
  let stopped = false;
  let retryTimer = null;
  const presence = new Map(); // group -> [usernames]
  const seen = new Set(); // message ids already shown

  // -- small DOM helpers ------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setStatus(state, text) {
    status.dataset.state = state;
    status.textContent = text;
    sendButton.disabled = state !== "online";
  }

  function fillPicker(select, values, keep) {
    const previous = keep ? select.value : null;
    select.replaceChildren(...values.map((v) => {
      const option = el("option", null, v);
      option.value = v;
      return option;
    }));
    if (previous && values.includes(previous)) select.value = previous;
  }

  function nearBottom() {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }

  function append(item) {
    const stick = nearBottom();
    list.append(item);
    while (list.childElementCount > MAX_SHOWN) list.firstElementChild.remove();
    if (stick) list.scrollTop = list.scrollHeight;
  }

  function clock(ts) {
    const when = typeof ts === "number" ? new Date(ts * 1000) : new Date();
    return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  // -- rendering --------------------------------------------------------------------------

  function showMessage(msg) {
    if (typeof msg.id === "string") {
      if (seen.has(msg.id)) return;
      seen.add(msg.id);
      if (seen.size > MAX_SHOWN * 2) seen.delete(seen.values().next().value);
    }
    const item = el("li", "message " + msg.type + (msg.from === me ? " mine" : ""));
    const meta = el("div", "meta");
    meta.append(el("span", "from", String(msg.from)));
    let where = "to everyone";
    if (msg.type === "group") where = "to " + String(msg.group);
    if (msg.type === "direct") where = "to " + String(msg.to) + " (direct)";
    meta.append(el("span", "where", where));
    meta.append(el("time", "when", clock(msg.ts)));
    item.append(meta, el("p", "text", String(msg.text)));
    append(item);
  }

  function showNotice(text, className) {
    const item = el("li", "notice " + (className || ""));
    item.append(el("span", "when", clock()), el("span", "text", text));
    append(item);
  }

  function renderPresence() {
    const box = $("presence");
    const groups = [...presence.keys()].sort();
    if (groups.length === 0) {
      box.replaceChildren(el("p", "muted", "You are in no group."));
      return;
    }
    box.replaceChildren(...groups.map((group) => {
      const section = el("section", "presence-group");
      const users = presence.get(group);
      section.append(el("h3", null, group + " · " + users.length));
      const ul = el("ul");
      for (const name of users) {
        const li = el("li", name === me ? "me" : null, name);
        li.title = "Send a direct message to " + name;
        li.addEventListener("click", () => {
          kind.value = "Direct";
          userPicker.value = name;
          updatePickers();
          input.focus();
        });
        ul.append(li);
      }
      section.append(ul);
      return section;
    }));
  }

  // -- protocol ---------------------------------------------------------------------------

  function handle(msg) {
    if (!msg || typeof msg !== "object") return;
    switch (msg.type) {
      case "hello": {
        me = String(msg.user);
        $("me").textContent = me;
        const groups = Array.isArray(msg.all_groups) ? msg.all_groups.map(String) : [];
        const users = Array.isArray(msg.users) ? msg.users.map(String) : [];
        fillPicker(groupPicker, groups.length ? groups : (msg.groups || []).map(String), true);
        fillPicker(userPicker, users.filter((u) => u !== me), true);
        break;
      }
      case "presence":
        if (typeof msg.group === "string" && Array.isArray(msg.users)) {
          presence.set(msg.group, msg.users.map(String));
          renderPresence();
        }
        break;
      case "broadcast":
      case "group":
      case "direct":
        showMessage(msg);
        break;
      case "error":
        showNotice(String(msg.error) + ": " + String(msg.detail), "error");
        break;
      default:
        break; // newer server, older page: ignore what we do not know
    }
  }

  function onData(data) {
    if (typeof data !== "string") return;
    // A server may put several JSON messages in one frame, one per line.
    for (const line of data.split("\n")) {
      if (!line.trim()) continue;
      try {
        handle(JSON.parse(line));
      } catch (_) {
        showNotice("unreadable message from the server", "error");
      }
    }
  }

  // -- connection -------------------------------------------------------------------------

  function url() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  }

  function connect() {
    retryTimer = null;
    if (stopped) return;
    setStatus("connecting", attempt ? "reconnecting…" : "connecting…");
    let opened = false;
    const ws = new WebSocket(url());
    socket = ws;
    ws.addEventListener("open", () => {
      opened = true;
      attempt = 0;
      setStatus("online", "online");
    });
    ws.addEventListener("message", (event) => onData(event.data));
    ws.addEventListener("close", (event) => {
      if (socket === ws) socket = null;
      presence.clear();
      renderPresence();
      if (stopped) return;
      if (STOP_CODES.has(event.code)) {
        stop(event.code === 4403 ? "not allowed here" : "signed out");
        return;
      }
      if (!opened) {
        checkSession(); // a refused handshake (403) looks like 1006 to the page
      }
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    // Exponential backoff with full jitter, so many pages do not come back in lockstep.
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
    const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    attempt += 1;
    setStatus("offline", "offline, retrying in " + Math.ceil(delay / 1000) + " s");
    retryTimer = setTimeout(connect, delay);
  }

  async function checkSession() {
    try {
      const response = await fetch("/", { redirect: "manual", cache: "no-store" });
      if (response.type === "opaqueredirect" || response.status === 401) {
        stop("signed out");
        window.location.assign("/login");
      }
    } catch (_) { /* server down: keep retrying */ }
  }

  function stop(reason) {
    stopped = true;
    if (retryTimer !== null) clearTimeout(retryTimer);
    setStatus("stopped", reason);
    if (reason === "signed out") showNotice("You are signed out.", "error");
  }

  // -- sending ----------------------------------------------------------------------------

  function updatePickers() {
    groupPicker.hidden = kind.value !== "Group";
    userPicker.hidden = kind.value !== "Direct";
  }

  kind.addEventListener("change", updatePickers);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value;
    if (!text.trim() || !socket || socket.readyState !== WebSocket.OPEN) return;
    const message = { type: kind.value, text };
    if (kind.value === "Group") message.group = groupPicker.value;
    if (kind.value === "Direct") message.user_name = userPicker.value;
    socket.send(JSON.stringify(message));
    input.value = "";
    input.focus();
  });

  $("logout").addEventListener("click", async () => {
    stopped = true;
    if (retryTimer !== null) clearTimeout(retryTimer);
    try {
      await fetch("/logout", { method: "POST", credentials: "same-origin" });
    } finally {
      if (socket) socket.close(1000, "logged out");
      window.location.assign("/login");
    }
  });

  updatePickers();
  connect();
})();
