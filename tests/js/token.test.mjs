// Tokens: in the handshake (subprotocol or query), refreshed on the open socket before they
// lapse, and a close with 4401 answered by one reconnect with a fresh token.

import assert from "node:assert/strict";
import { test } from "node:test";

import { GroupsClient, RefreshError } from "../../asgi_groups/static/asgi-groups.js";
import { fakeWebSocket, settle, start, URL_, welcome } from "./fakes.mjs";

/** A `token` option giving "t1", "t2", ... and counting its calls. */
function tokens() {
  const source = () => `t${++source.calls}`;
  source.calls = 0;
  return source;
}

/** A client with a token, welcomed on its first socket; the welcome says `expires_in`. */
function welcomed(t, expiresIn, options = {}) {
  const token = tokens();
  const harness = start(t, { token, jitter: false, ...options });
  harness.socket.accept().receive({ ...welcome({}), expires_in: expiresIn });
  return { ...harness, token };
}

/** The `ag.refresh` frames a socket got from the client. */
function refreshes(socket) {
  return socket.frames.filter((frame) => frame.type === "ag.refresh");
}

test("by default the token is offered as the subprotocol bearer.<token>", (t) => {
  const { socket, client } = start(t, { token: () => "abc.def" });
  assert.equal(socket.url, URL_);
  assert.deepEqual(socket.protocols, ["bearer.abc.def"]);
  socket.accept().receive(welcome({}));
  assert.equal(client.state, "open");
});

test('tokenIn "query" puts it in access_token, beside the query the URL has', (t) => {
  const { socket } = start(t, { token: () => "abc.def", tokenIn: "query" });
  assert.equal(socket.url, `${URL_}?access_token=abc.def`);
  assert.deepEqual(socket.protocols, []);
  const WebSocket = fakeWebSocket();
  const client = new GroupsClient(`${URL_}?room=1&access_token=old`, {
    WebSocket,
    network: null,
    token: () => "a b",
    tokenIn: "query",
  });
  client.connect();
  assert.equal(WebSocket.sockets[0].url, `${URL_}?room=1&access_token=a+b`);
  client.close();
});

test("without a token nothing is offered and the URL is unchanged", (t) => {
  const { socket } = start(t);
  assert.equal(socket.url, URL_);
  assert.deepEqual(socket.protocols, []);
});

test("a token is asked for before every connect, and may come as a Promise", async (t) => {
  let calls = 0;
  const { sockets, nextSocketAfter } = start(t, {
    token: () => Promise.resolve(`p${++calls}`),
    jitter: false,
  });
  assert.equal(sockets.length, 0, "no socket before the token comes");
  await settle();
  assert.deepEqual(sockets[0].protocols, ["bearer.p1"]);
  sockets[0].accept().receive(welcome({}));
  sockets[0].drop(1006);
  assert.equal(nextSocketAfter(), null, "the reconnect waits for the token");
  await settle();
  assert.equal(sockets.length, 2);
  assert.deepEqual(sockets[1].protocols, ["bearer.p2"]);
});

test("a token that fails is an error event and a failed attempt, retried with backoff", (t) => {
  let fail = true;
  const harness = start(t, {
    token: () => {
      if (fail) throw new Error("login server down");
      return "ok";
    },
    jitter: false,
  });
  assert.equal(harness.sockets.length, 0);
  const [error] = harness.of("error");
  assert.ok(error instanceof RefreshError);
  assert.equal(error.code, "token_failed");
  assert.match(error.detail, /login server down/);
  assert.deepEqual(harness.of("close"), [
    { code: 1006, reason: error.message, willReconnect: true },
  ]);
  fail = false;
  assert.equal(harness.nextSocketAfter(), 500);
  assert.deepEqual(harness.socket.protocols, ["bearer.ok"]);
});

test("a token that comes after close() opens no socket", async (t) => {
  /** @type {(token: string) => void} */
  let give = () => {};
  const { client, sockets } = start(t, {
    token: () => new Promise((resolve) => (give = resolve)),
  });
  client.close();
  give("late");
  await settle();
  assert.equal(sockets.length, 0);
  assert.equal(client.state, "closed");
});

test("the refresh is sent refreshMargin before expires_in runs out", (t) => {
  const { socket, token } = welcomed(t, 120);
  t.mock.timers.tick(90_000 - 1);
  assert.equal(token.calls, 1);
  assert.deepEqual(refreshes(socket), []);
  t.mock.timers.tick(1);
  assert.equal(token.calls, 2);
  assert.deepEqual(refreshes(socket), [{ type: "ag.refresh", id: 1, token: "t2" }]);
});

test("a short-lived token is refreshed when half of its time has passed", (t) => {
  const { socket } = welcomed(t, 10, { refreshMargin: 30_000 });
  t.mock.timers.tick(5000 - 1);
  assert.deepEqual(refreshes(socket), []);
  t.mock.timers.tick(1);
  assert.equal(refreshes(socket).length, 1);
});

test("without expires_in (a cookie session) nothing is refreshed", (t) => {
  const { socket, token } = welcomed(t, undefined);
  t.mock.timers.tick(24 * 3600_000);
  assert.equal(token.calls, 1);
  assert.deepEqual(refreshes(socket), []);
});

test("the answer schedules the next refresh from its own expires_in", (t) => {
  const { socket, of } = welcomed(t, 60);
  t.mock.timers.tick(30_000);
  const [sent] = refreshes(socket);
  const answer = { type: "ag.refreshed", id: sent.id, expires_at: 1e9, expires_in: 300 };
  socket.receive(answer);
  assert.deepEqual(of("refreshed"), [answer]);
  t.mock.timers.tick(270_000 - 1);
  assert.equal(refreshes(socket).length, 1);
  t.mock.timers.tick(1);
  assert.equal(refreshes(socket).length, 2);
  assert.deepEqual(of("error"), []);
  assert.deepEqual(of("message"), [], "protocol frames are not messages");
});

test("refresh() resolves with the server's answer", async (t) => {
  const { client, socket, token } = welcomed(t, 600);
  const answer = client.refresh();
  assert.equal(token.calls, 2);
  const [sent] = refreshes(socket);
  assert.deepEqual(sent, { type: "ag.refresh", id: sent.id, token: "t2" });
  const frame = { type: "ag.refreshed", id: sent.id, expires_at: 1e9, expires_in: 900 };
  socket.receive(frame);
  assert.deepEqual(await answer, frame);
});

test("a refused refresh is an error event; the socket runs on until its old expiry", async (t) => {
  const { client, socket, of } = welcomed(t, 60);
  t.mock.timers.tick(30_000);
  const [sent] = refreshes(socket);
  socket.receive({
    type: "ag.error",
    id: sent.id,
    error: "refresh_refused",
    detail: "the token names another user",
  });
  await settle();
  const [error] = of("error");
  assert.ok(error instanceof RefreshError);
  assert.equal(error.code, "refresh_refused");
  assert.equal(error.detail, "the token names another user");
  assert.equal(client.state, "open");
  assert.equal(socket.closedWith, null);
  t.mock.timers.tick(3600_000);
  assert.equal(refreshes(socket).length, 1, "no second try: the 4401 reconnect is the fallback");
});

test("refresh() rejects on refresh_failed, a timeout and a drop", async (t) => {
  const { client, socket, sockets, of } = welcomed(t, 600, { refreshTimeout: 1000 });
  const failed = client.refresh();
  socket.receive({
    type: "ag.error",
    id: refreshes(socket)[0].id,
    error: "refresh_failed",
    detail: "cannot check the token now",
  });
  await assert.rejects(failed, { name: "RefreshError", code: "refresh_failed" });
  const late = client.refresh();
  t.mock.timers.tick(1000);
  await assert.rejects(late, { name: "RefreshError", code: "timeout" });
  const dropped = client.refresh();
  socket.drop(1006);
  await assert.rejects(dropped, { name: "RefreshError", code: "disconnected" });
  await assert.rejects(client.refresh(), { code: "not_connected" });
  assert.equal(sockets.length, 1);
  assert.deepEqual(of("error"), [], "refresh() reports to its caller only");
});

test("refresh() without a token option, and after close(), rejects", async (t) => {
  const plain = start(t);
  plain.socket.accept().receive(welcome({}));
  await assert.rejects(plain.client.refresh(), { name: "RefreshError", code: "no_token" });
  t.mock.timers.reset();
  const { client } = welcomed(t, 600);
  const pending = client.refresh();
  client.close();
  await assert.rejects(pending, { name: "RefreshError", code: "closed" });
  await assert.rejects(client.refresh(), { code: "closed" });
});

test("a close with 4401 reconnects once with a fresh token", (t) => {
  const { client, sockets, of, nextSocketAfter, token } = welcomed(t, 60);
  sockets[0].drop(4401, "credential expired");
  assert.equal(client.state, "reconnecting");
  assert.deepEqual(of("close"), [{ code: 4401, reason: "credential expired", willReconnect: true }]);
  assert.notEqual(nextSocketAfter(), null);
  assert.equal(token.calls, 2);
  assert.deepEqual(sockets[1].protocols, ["bearer.t2"]);
  sockets[1].accept().receive({ ...welcome({}), expires_in: 60 });
  assert.equal(client.state, "open");
  sockets[1].drop(4401, "credential expired"); // no refresh in between: the token is no good
  assert.equal(client.state, "closed");
  assert.equal(of("close")[1].willReconnect, false);
  assert.equal(nextSocketAfter(10 * 30_000), null);
});

test("a refresh that succeeded allows the next 4401 a reconnect again", (t) => {
  const { client, sockets, nextSocketAfter } = welcomed(t, 60);
  sockets[0].drop(4401);
  nextSocketAfter();
  sockets[1].accept().receive({ ...welcome({}), expires_in: 60 });
  t.mock.timers.tick(30_000);
  const [sent] = refreshes(sockets[1]);
  sockets[1].receive({ type: "ag.refreshed", id: sent.id, expires_at: 1e9, expires_in: 60 });
  sockets[1].drop(4401);
  assert.equal(client.state, "reconnecting");
});

test("without a token option 4401 still stops the client", (t) => {
  const { client, socket } = start(t);
  socket.accept().receive(welcome({}));
  socket.drop(4401);
  assert.equal(client.state, "closed");
});

test("timers are cleared on close() and when the socket drops", (t) => {
  const { client, socket, sockets, token, nextSocketAfter } = welcomed(t, 60);
  socket.drop(1006);
  assert.notEqual(nextSocketAfter(), null);
  assert.equal(token.calls, 2, "the reconnect's token");
  t.mock.timers.tick(3600_000); // the new socket has no welcome yet: no refresh timer
  assert.equal(token.calls, 2);
  sockets[1].accept().receive({ ...welcome({}), expires_in: 60 });
  client.close();
  t.mock.timers.tick(3600_000);
  assert.equal(token.calls, 2);
  assert.deepEqual(refreshes(sockets[1]), []);
});

test("an unknown tokenIn or a token that is not a function is refused", () => {
  const WebSocket = fakeWebSocket();
  const make = (options) => new GroupsClient(URL_, { WebSocket, network: null, ...options });
  assert.throws(() => make({ token: () => "x", tokenIn: "header" }), TypeError);
  assert.throws(() => make({ token: "x" }), TypeError);
  assert.throws(() => make({ token: () => "x", refreshMargin: -1 }), RangeError);
});
