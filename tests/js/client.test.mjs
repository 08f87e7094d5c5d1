// The browser client's view of the recoverable protocol: hello, welcome, positions, messages.

import assert from "node:assert/strict";
import { test } from "node:test";

import GroupsClientDefault, {
  GroupsClient,
  GroupsError,
  ServerError,
} from "../../asgi_groups/static/asgi-groups.js";
import { FakeStorage, fakeWebSocket, message, start, URL_, welcome } from "./fakes.mjs";

test("the default export is the GroupsClient class", () => {
  assert.equal(GroupsClientDefault, GroupsClient);
});

test("the first frame is a hello without positions; the welcome opens the client", (t) => {
  const { client, socket, of } = start(t);
  assert.equal(client.state, "connecting");
  assert.equal(socket.url, URL_);
  socket.accept();
  assert.deepEqual(socket.frames, [{ type: "ag.hello", positions: {} }]);
  assert.equal(of("open").length, 1);
  assert.equal(client.state, "connecting", "not usable before the welcome");
  const hello = welcome({
    "g:room": { epoch: "e1", offset: 3, recovered: false, reason: "no position" },
  });
  socket.receive(hello);
  assert.equal(client.state, "open");
  assert.deepEqual(of("welcome"), [hello]);
  assert.deepEqual(of("online"), [null]);
  assert.deepEqual(client.positions, { "g:room": { epoch: "e1", offset: 3 } });
});

test("after a reconnect the hello carries the last position seen per channel", (t) => {
  const { client, sockets, socket, nextSocketAfter } = start(t);
  socket.accept().receive(
    welcome({
      "g:room": { epoch: "e1", offset: 3, recovered: false, reason: "no position" },
      "u:42": { epoch: "e9", offset: 70, recovered: false, reason: "no position" },
      "*": { recovered: false, reason: "no history" },
    }),
    message("g:room", "e1", 4, { text: "a" }),
    message("g:room", "e1", 5, { text: "b" }),
    { type: "ag.message", channel: "*", data: "broadcast without history" },
  );
  socket.drop(1006);
  assert.equal(client.state, "reconnecting");
  assert.notEqual(nextSocketAfter(), null);
  sockets[1].accept();
  assert.deepEqual(sockets[1].hello, {
    type: "ag.hello",
    positions: { "g:room": { epoch: "e1", offset: 5 }, "u:42": { epoch: "e9", offset: 70 } },
  });
});

test("a message at or before the held offset of its epoch is a duplicate, dropped", (t) => {
  const { client, socket, of } = start(t);
  socket.accept().receive(welcome({ "g:room": { epoch: "e1", offset: 3, recovered: true } }));
  for (const offset of [2, 3, 4, 4, 5, 3]) socket.receive(message("g:room", "e1", offset, offset));
  assert.deepEqual(of("message"), [
    { channel: "g:room", data: 4, epoch: "e1", offset: 4 },
    { channel: "g:room", data: 5, epoch: "e1", offset: 5 },
  ]);
  assert.deepEqual(client.positions, { "g:room": { epoch: "e1", offset: 5 } });
});

test("a message of another epoch is taken, and its position replaces the held one", (t) => {
  const { client, socket, of } = start(t);
  socket.accept().receive(welcome({ "g:room": { epoch: "e1", offset: 10, recovered: true } }));
  socket.receive(
    message("g:room", "e2", 1, "first of the new history"),
    message("g:room", "e2", 1, "duplicate"),
    message("g:room", "e2", 2, "second"),
  );
  assert.deepEqual(
    of("message").map((m) => m.data),
    ["first of the new history", "second"],
  );
  assert.deepEqual(client.positions, { "g:room": { epoch: "e2", offset: 2 } });
});

test("channels are independent: the same offset on two channels is no duplicate", (t) => {
  const { socket, of } = start(t);
  socket.accept().receive(welcome({}));
  socket.receive(message("g:a", "e1", 1, "a"), message("g:b", "e1", 1, "b"));
  assert.deepEqual(
    of("message").map((m) => m.channel),
    ["g:a", "g:b"],
  );
});

test("a welcome that could not recover fires recovered:false with each channel's reason", (t) => {
  const storage = new FakeStorage();
  storage.setItem(
    `asgi-groups:positions:${URL_}`,
    JSON.stringify({ "g:room": { epoch: "e1", offset: 5 }, "g:left": { epoch: "e1", offset: 2 } }),
  );
  const { client, socket, of } = start(t, { storage });
  socket.accept();
  assert.deepEqual(Object.keys(socket.hello.positions).sort(), ["g:left", "g:room"]);
  socket.receive(
    welcome(
      {
        "g:room": { epoch: "e2", offset: 9, recovered: false, reason: "epoch changed" },
        "u:42": { epoch: "e3", offset: 1, recovered: true },
        "*": { recovered: false, reason: "no history" },
      },
      false,
    ),
  );
  assert.deepEqual(of("recovered"), [
    {
      recovered: false,
      channels: {
        "g:room": { recovered: false, reason: "epoch changed" },
        "u:42": { recovered: true, reason: null },
        "*": { recovered: false, reason: "no history" },
      },
    },
  ]);
  assert.deepEqual(
    client.positions,
    { "g:room": { epoch: "e2", offset: 9 }, "u:42": { epoch: "e3", offset: 1 } },
    "the welcome's positions replace the held ones; a channel no longer listed is forgotten",
  );
});

test("a channel the welcome lists without a position keeps the position held", (t) => {
  const storage = new FakeStorage({
    [`asgi-groups:positions:${URL_}`]: JSON.stringify({ "g:room": { epoch: "e1", offset: 5 } }),
  });
  const { client, socket } = start(t, { storage });
  socket.accept().receive(welcome({ "g:room": { recovered: false, reason: "no history" } }, false));
  assert.deepEqual(client.positions, { "g:room": { epoch: "e1", offset: 5 } });
});

test("a channel the connection no longer receives is forgotten, so hellos stay small", (t) => {
  const storage = new FakeStorage({
    [`asgi-groups:positions:${URL_}`]: JSON.stringify({ "g:old": { epoch: "e1", offset: 5 } }),
  });
  const { client, socket } = start(t, { storage });
  socket.accept().receive(welcome({ "g:old": { recovered: false, reason: "not subscribed" } }, false));
  assert.deepEqual(client.positions, {});
});

test("every welcome fires recovered, true when the server recovered everything", (t) => {
  const { socket, sockets, of, nextSocketAfter } = start(t);
  socket.accept().receive(welcome({ "g:room": { epoch: "e1", offset: 1, recovered: true } }));
  socket.drop(1012);
  nextSocketAfter();
  sockets[1].accept().receive(welcome({ "g:room": { epoch: "e1", offset: 1, recovered: true } }));
  assert.deepEqual(of("recovered"), [
    { recovered: true, channels: { "g:room": { recovered: true, reason: null } } },
    { recovered: true, channels: { "g:room": { recovered: true, reason: null } } },
  ]);
});

test("frames joined by newlines are split, each handled in order", (t) => {
  const { client, socket, of } = start(t);
  socket.accept().receive(welcome({ "g:room": { epoch: "e1", offset: 0, recovered: true } }));
  const joined = [
    message("g:room", "e1", 1, "one"),
    message("g:room", "e1", 2, "two"),
    { kind: "app frame" },
  ]
    .map((doc) => JSON.stringify(doc))
    .join("\n");
  socket.receive(joined);
  assert.deepEqual(of("message"), [
    { channel: "g:room", data: "one", epoch: "e1", offset: 1 },
    { channel: "g:room", data: "two", epoch: "e1", offset: 2 },
    { channel: null, data: { kind: "app frame" }, epoch: null, offset: null },
  ]);
  assert.deepEqual(client.positions, { "g:room": { epoch: "e1", offset: 2 } });
});

test("a joined frame with a protocol frame and plain text is split too", (t) => {
  const { socket, of } = start(t);
  socket.accept().receive(welcome({}));
  socket.receive(`${JSON.stringify(message("g:room", "e1", 1, "x"))}\nplain text`);
  assert.deepEqual(
    of("message").map((m) => [m.channel, m.data]),
    [
      ["g:room", "x"],
      [null, "plain text"],
    ],
  );
});

test("app frames joined by newlines are split too", (t) => {
  const { socket, of } = start(t);
  socket.accept().receive(welcome({}));
  socket.receive('{"a":1}\n{"b":2}');
  assert.deepEqual(
    of("message").map((m) => m.data),
    [{ a: 1 }, { b: 2 }],
  );
});

test("text that is not JSON, or one multi-line document, reaches the app whole", (t) => {
  const { socket, of } = start(t);
  socket.accept().receive(welcome({}));
  socket.receive("hello", "line 1\nline 2", '{\n  "pretty": true\n}');
  assert.deepEqual(of("message"), [
    { channel: null, data: "hello", epoch: null, offset: null },
    { channel: null, data: "line 1\nline 2", epoch: null, offset: null },
    { channel: null, data: { pretty: true }, epoch: null, offset: null },
  ]);
});

test("base64 message data is decoded to bytes; binary frames arrive as bytes", (t) => {
  const { socket, of } = start(t);
  socket.accept().receive(welcome({}));
  socket.receive({ ...message("g:room", "e1", 1, "AAEC/w=="), encoding: "base64" });
  socket.receive(new Uint8Array([7, 8]).buffer);
  const [decoded, binary] = of("message");
  assert.ok(decoded.data instanceof Uint8Array);
  assert.deepEqual([...decoded.data], [0, 1, 2, 255]);
  assert.equal(decoded.channel, "g:room");
  assert.ok(binary.data instanceof Uint8Array);
  assert.deepEqual([...binary.data], [7, 8]);
  assert.equal(binary.channel, null);
});

test("bad base64 is reported as an error event, not delivered", (t) => {
  const { socket, of } = start(t);
  socket.accept().receive(welcome({}));
  socket.receive({ ...message("g:room", "e1", 1, "not base64!"), encoding: "base64" });
  assert.deepEqual(of("message"), []);
  const [error] = of("error");
  assert.ok(error instanceof ServerError);
  assert.equal(error.code, "invalid");
});

test("an ag.error that answers no request is an error event", (t) => {
  const { socket, of } = start(t);
  socket.accept().receive(welcome({}));
  socket.receive({ type: "ag.error", error: "invalid", detail: "second hello" });
  const [error] = of("error");
  assert.ok(error instanceof ServerError && error instanceof GroupsError);
  assert.equal(error.name, "ServerError");
  assert.deepEqual([error.code, error.detail, error.id], ["invalid", "second hello", null]);
});

test("unknown protocol frames are not passed to the app", (t) => {
  const { socket, of } = start(t);
  socket.accept().receive(welcome({}), { type: "ag.future", x: 1 });
  assert.deepEqual(of("message"), []);
});

test("positions are kept in storage and a new client (a page reload) resumes from them", (t) => {
  const storage = new FakeStorage();
  const first = start(t, { storage });
  first.socket.accept().receive(welcome({ "g:room": { epoch: "e1", offset: 3, recovered: true } }));
  first.socket.receive(message("g:room", "e1", 4, "seen before the reload"));
  assert.deepEqual(JSON.parse(storage.getItem(`asgi-groups:positions:${URL_}`)), {
    "g:room": { epoch: "e1", offset: 4 },
  });

  const reloaded = start(t, { storage }, { mockTimers: false });
  assert.deepEqual(reloaded.client.positions, { "g:room": { epoch: "e1", offset: 4 } });
  reloaded.socket.accept();
  assert.deepEqual(reloaded.socket.hello.positions, { "g:room": { epoch: "e1", offset: 4 } });
});

test("storageKey names the entry; a query string does not change the default key", (t) => {
  const storage = new FakeStorage();
  const WebSocket = fakeWebSocket();
  const client = new GroupsClient(`${URL_}?token=abc`, { WebSocket, storage, network: null });
  client.connect();
  WebSocket.sockets[0]
    .accept()
    .receive(welcome({ "g:a": { epoch: "e", offset: 1, recovered: true } }));
  assert.deepEqual([...storage.map.keys()], [`asgi-groups:positions:${URL_}`]);
  client.close();

  const named = start(t, { storage, storageKey: "mine" });
  named.socket.accept().receive(welcome({ "g:b": { epoch: "e", offset: 2, recovered: true } }));
  assert.deepEqual(JSON.parse(storage.getItem("mine")), { "g:b": { epoch: "e", offset: 2 } });
});

test("unreadable or malformed stored positions are ignored", (t) => {
  const key = `asgi-groups:positions:${URL_}`;
  for (const stored of ["not json", "[1,2]", '{"g:a": {"epoch": 1, "offset": "x"}, "g:b": 5}']) {
    const storage = new FakeStorage({ [key]: stored });
    const { socket, client } = start(t, { storage }, { mockTimers: false });
    socket.accept();
    assert.deepEqual(socket.hello.positions, {}, stored);
    client.close();
  }
  const throwing = {
    getItem() {
      throw new Error("SecurityError");
    },
    setItem() {
      throw new Error("QuotaExceededError");
    },
  };
  const { socket, client } = start(t, { storage: throwing }, { mockTimers: false });
  socket.accept().receive(welcome({ "g:a": { epoch: "e", offset: 1, recovered: true } }));
  assert.deepEqual(client.positions, { "g:a": { epoch: "e", offset: 1 } });
});

test("the positions getter returns a copy", (t) => {
  const { client, socket } = start(t);
  socket.accept().receive(welcome({ "g:a": { epoch: "e", offset: 1, recovered: true } }));
  const copy = client.positions;
  copy["g:a"].offset = 99;
  copy["g:b"] = { epoch: "x", offset: 1 };
  assert.deepEqual(client.positions, { "g:a": { epoch: "e", offset: 1 } });
});

test("a relative URL resolves against the page, http becoming ws and https wss", (t) => {
  const WebSocket = fakeWebSocket();
  t.after(() => {
    delete globalThis.location;
  });
  globalThis.location = { href: "https://example.test/app/page" };
  assert.equal(new GroupsClient("/ws", { WebSocket }).url, "wss://example.test/ws");
  assert.equal(new GroupsClient("socket", { WebSocket }).url, "wss://example.test/app/socket");
  globalThis.location = { href: "http://localhost:8000/" };
  assert.equal(new GroupsClient("/ws?x=1#frag", { WebSocket }).url, "ws://localhost:8000/ws?x=1");
  assert.equal(new GroupsClient("wss://other.test/ws", { WebSocket }).url, "wss://other.test/ws");
  delete globalThis.location;
  assert.throws(() => new GroupsClient("/ws", { WebSocket }), TypeError);
  assert.throws(() => new GroupsClient("ftp://example.test/", { WebSocket }), TypeError);
});

test("bad options are refused when the client is made", () => {
  const WebSocket = fakeWebSocket();
  assert.throws(() => new GroupsClient(URL_, { WebSocket, minDelay: -1 }), RangeError);
  assert.throws(() => new GroupsClient(URL_, { WebSocket, maxHandshakeFailures: 0 }), RangeError);
  assert.throws(() => new GroupsClient(URL_, { WebSocket, offline: "drop" }), TypeError);
  assert.throws(() => new GroupsClient(URL_, { WebSocket: undefined }), TypeError);
});

test("events reach addEventListener listeners as CustomEvents, and on() unsubscribes", (t) => {
  const { client, socket } = start(t);
  const seen = [];
  client.addEventListener("message", (event) => seen.push(["event", event.detail.data]));
  const off = client.on("message", (detail) => seen.push(["on", detail.data]));
  socket.accept().receive(welcome({}), "first");
  off();
  socket.receive("second");
  assert.deepEqual(seen, [
    ["event", "first"],
    ["on", "first"],
    ["event", "second"],
  ]);
});
