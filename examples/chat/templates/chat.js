// The chat page: one GroupsClient to /ws (the browser client of asgi_groups), JSON messages in
// and out. Everything the server sends is shown with textContent / createElement, never as HTML.
import { GroupsClient } from "/asgi-groups.js";

const MAX_SHOWN = 500; // messages kept in the list
const MAX_PENDING = 100; // sent messages remembered until the server echoes them back
const HISTORY_LIMIT = 50; // messages per channel loaded after a page load or a lost resume
const CHAT_TYPES = new Set(["broadcast", "group", "direct"]);
// Welcome reasons of channels that have no history to load.
const NOTHING_TO_LOAD = new Set(["no history", "not subscribed"]);

const $ = (id) => document.getElementById(id);
const list = $("messages");
const form = $("composer");
const kind = $("kind");
const groupPicker = $("group");
const userPicker = $("user");
const userName = $("user-name"); // instead of the picker when the hello lists no users
const input = $("text");
const sendButton = $("send");
const status = $("status");

let me = null;
let byName = false; // the directory was too big for the hello: direct messages go by name
let stopped = false;
let opened = false; // the current socket opened (a refused handshake never does)
const presence = new Map(); // group -> [usernames]
const seen = new Set(); // (sender, message id) pairs already shown: a retry's copy is dropped
// Messages this page sent and has not seen come back yet, by id: one whose send failed on the
// server ("unavailable") is sent again once, with the same id.
const pending = new Map(); // id -> { message, retried }
const unloaded = new Set(); // channels whose history could not be loaded yet

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

// Messages are kept in the order of their server time: one loaded from history goes before the
// first shown message that is newer; a live one (the newest) goes last. Notices stay in place.
function place(item, ts) {
  const stick = nearBottom();
  let next = null;
  if (ts !== null) {
    for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
      if (node.dataset.ts === undefined) continue;
      if (Number(node.dataset.ts) <= ts) break;
      next = node;
    }
    item.dataset.ts = String(ts);
  }
  list.insertBefore(item, next);
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
    const key = String(msg.from) + "\u0000" + msg.id;
    if (msg.from === me) pending.delete(msg.id); // it went out
    if (seen.has(key)) return;
    seen.add(key);
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
  place(item, Number.isFinite(msg.ts) ? msg.ts : null);
}

function showNotice(text, className) {
  const item = el("li", "notice " + (className || ""));
  item.append(el("span", "when", clock()), el("span", "text", text));
  place(item, null);
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
        userName.value = name;
        updatePickers();
        input.focus();
      });
      ul.append(li);
    }
    section.append(ul);
    return section;
  }));
}

// -- the chat protocol ------------------------------------------------------------------

function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// A chat message as an object: the server may carry it as JSON text inside an envelope.
function chatJson(data) {
  if (typeof data !== "string") return isObject(data) ? data : null;
  try {
    const value = JSON.parse(data);
    return isObject(value) ? value : null;
  } catch (_) {
    return null;
  }
}

function handle(msg) {
  if (!isObject(msg)) return;
  switch (msg.type) {
    case "hello": {
      me = String(msg.user);
      $("me").textContent = me;
      const groups = Array.isArray(msg.all_groups) ? msg.all_groups.map(String) : [];
      const users = Array.isArray(msg.users) ? msg.users.map(String) : [];
      const mine = Array.isArray(msg.groups) ? msg.groups.map(String) : [];
      fillPicker(groupPicker, groups.length ? groups : mine, true);
      fillPicker(userPicker, users.filter((u) => u !== me), true);
      byName = msg.users_complete === false;
      updatePickers();
      break;
    }
    case "presence":
      if (typeof msg.group === "string" && Array.isArray(msg.users)) {
        presence.set(msg.group, msg.users.map(String));
        renderPresence();
      }
      break;
    case "presence_diff": // a big group's changes since its last update: applied to the list
      if (typeof msg.group === "string" && Array.isArray(msg.joins) && Array.isArray(msg.leaves)) {
        const users = new Set(presence.get(msg.group) || []);
        for (const name of msg.leaves) users.delete(String(name));
        for (const name of msg.joins) users.add(String(name));
        presence.set(msg.group, [...users].sort((a, b) => a.localeCompare(b, undefined, { sensitivity: "base" })));
        renderPresence();
      }
      break;
    case "broadcast":
    case "group":
    case "direct":
      showMessage(msg);
      break;
    case "error":
      if (msg.error === "unavailable" && retry(msg)) break;
      showNotice(String(msg.error) + ": " + String(msg.detail), "error");
      break;
    default:
      break; // newer server, older page: ignore what we do not know
  }
}

// -- connection -------------------------------------------------------------------------

const client = new GroupsClient("/ws", {
  // A refused handshake is told apart by asking the server (checkSession), not by counting.
  maxHandshakeFailures: Infinity,
  offline: "reject",
});

// The recent messages of a channel, merged into what is shown (by id, in time order).
async function loadHistory(channel) {
  unloaded.add(channel);
  let result;
  try {
    result = await client.history(channel, HISTORY_LIMIT);
  } catch (error) {
    if (error.code !== "disconnected" && error.code !== "closed") {
      showNotice("earlier messages could not be loaded (" + error.code + ")", "error");
    }
    return; // still unloaded: tried again after the next welcome
  }
  unloaded.delete(channel);
  for (const { data } of result.messages) {
    const msg = chatJson(data);
    if (msg !== null && CHAT_TYPES.has(msg.type)) showMessage(msg); // not stale presence
  }
}

client.on("open", () => {
  opened = true;
});

client.on("message", ({ data }) => {
  // ag.message data (channel set) and the frames sent to this socket alone (channel null)
  // are the same chat JSON.
  const msg = chatJson(data);
  if (msg === null) showNotice("unreadable message from the server", "error");
  else handle(msg);
});

client.on("welcome", (welcome) => {
  const channels = isObject(welcome.channels) ? welcome.channels : {};
  let missing = false;
  for (const [channel, info] of Object.entries(channels)) {
    if (!isObject(info)) continue;
    const reason = typeof info.reason === "string" ? info.reason : null;
    if (info.recovered === true) {
      if (unloaded.has(channel)) loadHistory(channel);
      continue;
    }
    if (NOTHING_TO_LOAD.has(reason)) continue;
    if (reason !== "no position") missing = true; // the page had a position: a gap
    loadHistory(channel);
  }
  if (missing) showNotice("some messages may be missing — reloaded", "warning");
});

client.on("online", () => {
  setStatus("online", "online");
});

client.on("close", ({ code, willReconnect }) => {
  const refused = !opened;
  opened = false;
  presence.clear();
  renderPresence();
  if (stopped) return;
  if (!willReconnect) {
    stop(code === 4403 ? "not allowed here" : code === 1000 ? "disconnected" : "signed out");
    return;
  }
  if (refused) checkSession(); // a refused handshake (403) looks like 1006 to the page
  setStatus("offline", "offline, reconnecting…");
});

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
  client.close();
  setStatus("stopped", reason);
  if (reason === "signed out") showNotice("You are signed out.", "error");
}

// -- sending ----------------------------------------------------------------------------

// A message id: this page's random prefix and a counter (the server accepts up to 64 of
// A-Z a-z 0-9 _ -). Unique for the page's purpose, and, unlike 32 random digits per message,
// cheap for every recipient's compression.
const idPrefix = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) =>
  b.toString(16).padStart(2, "0"),
).join("");
let idCounter = 0;
function newId() {
  idCounter += 1;
  return `${idPrefix}-${idCounter.toString(16)}`;
}

function send(message) {
  pending.set(message.id, { message, retried: false });
  if (pending.size > MAX_PENDING) pending.delete(pending.keys().next().value);
  client.send(message);
}

// The server could not send one of our messages ("delivered": false) or does not know whether
// it did ("unknown"): send it again once, after "retry_after" seconds, with the same id, so
// that pages which got it already drop the copy. True when a retry was scheduled.
function retry(error) {
  if (typeof error.id !== "string") return false;
  if (seen.has(String(me) + "\u0000" + error.id)) return true; // its copy came back: it went out
  const entry = pending.get(error.id);
  if (entry === undefined || entry.retried) {
    if (entry !== undefined) pending.delete(error.id);
    return false;
  }
  entry.retried = true;
  const seconds = Number.isFinite(error.retry_after) ? Math.min(error.retry_after, 30) : 2;
  const delay = seconds * 1000 * (1 + Math.random() / 2); // jitter: not every page at once
  showNotice("not sent yet, trying again in " + Math.ceil(delay / 1000) + " s", "warning");
  setTimeout(() => {
    if (!pending.has(entry.message.id) || stopped) return;
    try {
      client.send(entry.message);
    } catch (_) {
      pending.delete(entry.message.id);
      showNotice("message not sent: offline", "error");
    }
  }, delay);
  return true;
}

function updatePickers() {
  groupPicker.hidden = kind.value !== "Group";
  userPicker.hidden = byName || kind.value !== "Direct";
  userName.hidden = !byName || kind.value !== "Direct";
}

kind.addEventListener("change", updatePickers);

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value;
  if (!text.trim() || client.state !== "open") return;
  const message = { type: kind.value, text, id: newId() };
  if (kind.value === "Group") message.group = groupPicker.value;
  if (kind.value === "Direct") message.user_name = byName ? userName.value.trim() : userPicker.value;
  send(message);
  input.value = "";
  input.focus();
});

$("logout").addEventListener("click", async () => {
  stopped = true;
  try {
    await fetch("/logout", { method: "POST", credentials: "same-origin" });
  } finally {
    client.close();
    window.location.assign("/login");
  }
});

updatePickers();
setStatus("connecting", "connecting…");
client.connect();
